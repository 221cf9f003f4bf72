"""/deploy, /rollback and the buttons on request cards: parse, call commands/, answer."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from slack_bolt import App

from bot.acks import answer, later
from bot.deploying import deployer_of
from bot.listeners.text import ParseError, parse_id, split_args
from bot.runtime import Runtime
from bot.views.common import ephemeral, usage_reply
from bot.views.deploy import (
    DEPLOY_USAGE,
    ROLLBACK_USAGE,
    held_reply,
    history_reply,
    release_rollback_preview,
    rollback_preview,
    thread_link,
)
from commands import releases
from commands import rollback as rollbacks
from commands.deploys import DeployError, HeldError


@dataclass
class DeployArgs:
    service: str
    version: str
    env: str | None = None
    now_reason: str | None = None
    canary: list[int] | None = None
    contract: bool = False
    words: list[str] | None = None  # a release's words after its name (commands.releases.parse_words)


def parse_deploy(args: list[str], releases: frozenset[str] = frozenset()) -> DeployArgs:
    positional: list[str] = []
    now_reason = None
    canary = None
    contract = False
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--now":
            words = []
            i += 1
            while i < len(args) and not args[i].startswith("--"):
                words.append(args[i])
                i += 1
            if not words:
                raise ParseError("`--now` needs a reason, like `--now \"fixes the gradebook outage\"`")
            now_reason = " ".join(words)
            continue
        if a.startswith("--canary"):
            value = a.split("=", 1)[1] if "=" in a else (args[i + 1] if i + 1 < len(args) else "")
            i += 1 if "=" in a else 2
            try:
                canary = [int(p) for p in value.split(",") if p.strip()]
            except ValueError:
                raise ParseError(f"`--canary` takes percentages like `10,50`, got `{value}`") from None
            if not canary:
                raise ParseError("`--canary` takes percentages like `10,50`")
            continue
        if a == "--contract":
            contract = True
            i += 1
            continue
        if a.startswith("--"):
            raise ParseError(f"unknown option `{a}`")
        positional.append(a)
        i += 1
    if positional and positional[0] in releases:
        return DeployArgs(positional[0], "", None, now_reason, canary, contract, words=positional[1:])
    if len(positional) < 2:
        raise ParseError("`/deploy` needs a SERVICE and a VERSION, like `/deploy web v2.4.1`")
    if len(positional) > 3:
        raise ParseError(f"too many words: `{' '.join(positional[3:])}`")
    return DeployArgs(positional[0], positional[1], positional[2] if len(positional) == 3 else None, now_reason, canary, contract)


def handle_deploy(rt: Runtime, user: str, text: str) -> dict[str, Any]:
    deployer = deployer_of(rt)
    try:
        args = split_args(text)
        if not args or args[0] in ("help", "-h", "--help"):
            return ephemeral(f"```{DEPLOY_USAGE}```")
        if args == ["dashboard"]:  # (a service named "dashboard" still deploys: it has a VERSION)
            return dashboard_link_reply(rt, user)
        if args[0] == "history":
            if len(args) > 2:
                raise ParseError("`/deploy history` takes at most one SERVICE")
            service = args[1] if len(args) == 2 else None
            return history_reply(deployer.history(service), service)
        parsed = parse_deploy(args, frozenset(rt.cfg.releases))
        if parsed.words is not None:
            versions, env = releases.parse_words(deployer, parsed.service, parsed.words)
            d = releases.request(deployer, actor=user, name=parsed.service, versions=versions, env=env,
                                 now_reason=parsed.now_reason, canary=parsed.canary, contract=parsed.contract)
            reply = ephemeral(f":memo: Release #{d['id']} of {d['service']} ({d['version']}) to {d['env']} requested: "
                              f"its card is in <#{d['channel']}>, where approvers approve it and the thread follows every step.")
            return {**reply, "deploy_id": d["id"]}
        d = deployer.request(actor=user, service=parsed.service, version=parsed.version, env=parsed.env,
                             now_reason=parsed.now_reason, canary=parsed.canary, contract=parsed.contract)
    except (ParseError, DeployError) as exc:
        return usage_reply(str(exc), DEPLOY_USAGE)
    reply = ephemeral(f":memo: Deploy #{d['id']} of {d['service']} {d['version']} to {d['env']} requested: "
                      f"its card is in <#{d['channel']}>, where approvers approve it and the thread follows every step.")
    return {**reply, "deploy_id": d["id"]}


def dashboard_link_reply(rt: Runtime, user: str) -> dict[str, Any]:
    """A one-time sign-in link for the web dashboard, for `user` only (ephemeral)."""
    from bot.dashboard import signin_url
    from commands.dashboard import issue_link

    token = issue_link(rt.cfg, rt.store, user, now=rt.now())
    minutes = int(rt.cfg.dashboard.link_ttl.total_seconds() // 60) or 1
    return ephemeral(f":key: <{signin_url(rt, token)}|Open the deploy dashboard>: this link signs you in once, "
                     f"within {minutes} min. Do not share it; type `/deploy dashboard` again for a new one.")


def handle_rollback(rt: Runtime, user: str, text: str) -> dict[str, Any]:
    deployer = deployer_of(rt)
    try:
        args = split_args(text)
        if not args or args[0] in ("help", "-h", "--help"):
            return ephemeral(f"```{ROLLBACK_USAGE}```")
        if len(args) > 2:
            raise ParseError("`/rollback` takes a SERVICE and an optional ENV")
        if args[0] in rt.cfg.releases:
            return release_rollback_preview(releases.plan_rollback(deployer, args[0], args[1] if len(args) == 2 else None,
                                                                   user, check_platform=False))
        service = args[0]
        railway = getattr(rt.cfg.services.get(service), "railway", None)
        # On Railway the preview asks Railway (one GraphQL call) whether it still retains the
        # previous deployment: only Railway knows when its image retention has passed.
        plan = rollbacks.plan(deployer, service, args[1] if len(args) == 2 else None, user,
                              check_platform=railway is not None)
    except HeldError as exc:
        return held_reply(str(exc), exc.holder)
    except (ParseError, DeployError) as exc:
        return usage_reply(str(exc), ROLLBACK_USAGE)
    return rollback_preview(plan, railway=railway)


def link_card(rt: Runtime, deploy_id: int, respond: Any, timeout: float = 30.0) -> None:
    """Once Slack has the card (the outbox may be retrying), tell the requester where it is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d = deployer_of(rt).get(deploy_id)
        if d and d["card_ts"]:
            respond(text=f":link: <{thread_link(d)}|Deploy #{deploy_id}'s card and thread>", response_type="ephemeral",
                    replace_original=False)
            return
        time.sleep(0.1)


def parse_button_value(value: Any) -> tuple[int | None, str | None]:
    """A button's value is "ID:TOKEN" (ID alone on cards from before tokens); an ID that is not
    ASCII digits in SQLite's integer range (parse_id) carries no deploy."""
    if not isinstance(value, str):
        return None, None
    ident, _, token = value.partition(":")
    try:
        return parse_id(ident, "deploy"), token or None
    except ParseError:
        return None, None


def _click(body: dict[str, Any]) -> tuple[str, int | None, str | None, str | None]:
    user = body["user"]["id"]
    action = body["actions"][0]
    deploy_id, token = parse_button_value(action.get("value"))
    container = body.get("container") or {}
    card_ts = None if container.get("is_ephemeral") else container.get("message_ts")
    return user, deploy_id, card_ts, token


def register(app: App, rt: Runtime) -> None:
    @app.command("/deploy")
    def deploy_command(ack, command, respond) -> None:  # noqa: ANN001
        def linked(reply: dict[str, Any]) -> None:
            if reply.get("deploy_id"):
                link_card(rt, reply["deploy_id"], respond)

        answer(rt, ack, respond, lambda: handle_deploy(rt, command["user_id"], command.get("text", "")),
               what="your /deploy", after=linked)

    @app.command("/rollback")
    def rollback_command(ack, command, respond) -> None:  # noqa: ANN001
        answer(rt, ack, respond, lambda: handle_rollback(rt, command["user_id"], command.get("text", "")),
               what="your /rollback")

    def on_click(verb: str):  # noqa: ANN202
        def listener(ack, body, respond) -> None:  # noqa: ANN001
            clicked_at = time.monotonic()
            ack()
            user, deploy_id, card_ts, token = _click(body)

            def work() -> str | None:
                deployer = deployer_of(rt)
                try:
                    if deploy_id is None:
                        raise DeployError("this button carries no deploy; use the newest card")
                    deployer.check_button(deploy_id, token)  # a button from another card is refused
                    if verb == "approve":
                        note = deployer.approve(deploy_id, user, card_ts=card_ts)
                        if note != "approved":
                            return f":ballot_box_with_check: {note}."
                    elif verb == "reject":
                        deployer.reject(deploy_id, user, card_ts=card_ts)
                    elif verb == "cancel":
                        deployer.cancel(deploy_id, user, card_ts=card_ts)
                    elif verb == "stop":
                        deployer.stop(deploy_id, user)
                    elif verb == "rollback":
                        rollbacks.rollback(deployer, deploy_id, user, clicked_at=clicked_at,
                                           card_ts=card_ts if body["actions"][0]["action_id"] == "rollback_card" else None)
                except DeployError as exc:
                    d = deployer.get(deploy_id) if deploy_id else None
                    where = f" (<{thread_link(d)}|thread>)" if d else ""
                    return f":warning: {exc}{where}"
                return None

            # Rollback clicks have an executor of their own: never behind pipelines or other answers.
            later(rt, respond, work, on=rt.rollbacks if verb == "rollback" else None,
                  what="your rollback click" if verb == "rollback" else f"your {verb} click")

        listener.__name__ = f"{verb}_clicked"
        return listener

    app.action("deploy_approve")(on_click("approve"))
    app.action("deploy_reject")(on_click("reject"))
    app.action("deploy_cancel")(on_click("cancel"))
    app.action("deploy_stop")(on_click("stop"))
    app.action("rollback_start")(on_click("rollback"))
    app.action("rollback_card")(on_click("rollback"))
