"""/window: the verdict now or at an instant, and freezes (add, list, lift)."""

from __future__ import annotations

from typing import Any

from slack_bolt import App

from bot.acks import answer
from bot.listeners.text import ParseError, parse_id, split_args
from bot.runtime import Runtime, user_timezone
from bot.views.common import ephemeral, usage_reply
from bot.views.window import (
    WINDOW_USAGE,
    freeze_added_reply,
    freeze_announcement,
    freeze_lifted_reply,
    freezes_reply,
    verdict_reply,
)
from commands import freezes
from commands.windows import parse_when


def handle_window(rt: Runtime, user: str, text: str) -> dict[str, Any]:
    try:
        args = split_args(text)
    except ParseError as exc:
        return usage_reply(str(exc), WINDOW_USAGE)
    now = rt.now()
    sub = args[0].lower() if args else ""
    if sub in ("help", "-h", "--help"):
        return ephemeral(f"```{WINDOW_USAGE}```")
    if sub == "":
        tz = user_timezone(rt, user)
        return verdict_reply(freezes.current_calendar(rt.cfg, rt.store).verdict(now), tz, now)
    if sub == "at":
        if len(args) < 2:
            return usage_reply("`/window at` needs a time, e.g. `/window at friday 16:00`", WINDOW_USAGE)
        tz = user_timezone(rt, user)
        try:
            at = freezes.check_instant(parse_when(" ".join(args[1:]), now, tz))
        except ValueError as exc:
            return usage_reply(f"could not read the time: {exc}", WINDOW_USAGE)
        verdict = freezes.current_calendar(rt.cfg, rt.store).verdict(at)
        return verdict_reply(verdict, tz, now, asked_at=" ".join(args[1:]))
    if sub == "freezes":
        if len(args) > 1:
            return usage_reply("`/window freezes` takes no arguments", WINDOW_USAGE)
        return freezes_reply(freezes.list_freezes(rt.cfg, rt.store, now), user_timezone(rt, user))
    if sub == "freeze":
        tz = user_timezone(rt, user)
        try:
            start, end, reason = freezes.read_span(args[1:], now, tz)
            info = freezes.add_freeze(rt.store, rt.policy, actor=user, start=start, end=end, reason=reason, now=now)
        except freezes.FreezeError as exc:
            return usage_reply(str(exc), WINDOW_USAGE)
        rt.outbox.post(rt.cfg.bot.channel, *freeze_announcement(info, user))
        return freeze_added_reply(info, tz)
    if sub == "unfreeze":
        needs = "`/window unfreeze` needs one freeze ID, e.g. `/window unfreeze 3`"
        if len(args) != 2:
            return usage_reply(needs, WINDOW_USAGE)
        try:
            freeze_id = parse_id(args[1], "freeze")
        except ParseError as exc:
            return usage_reply(f"{needs} ({exc})", WINDOW_USAGE)
        try:
            info = freezes.lift_freeze(rt.store, rt.policy, actor=user, freeze_id=freeze_id, now=now)
        except freezes.FreezeError as exc:
            return usage_reply(str(exc), WINDOW_USAGE)
        standing = freezes.list_freezes(rt.cfg, rt.store, now)
        rt.outbox.post(rt.cfg.bot.channel, *freeze_announcement(info, user, lifted=True, standing=standing, now=now))
        return freeze_lifted_reply(info, standing, now, user_timezone(rt, user))
    return usage_reply(f"unknown subcommand `{args[0]}`", WINDOW_USAGE)


def register(app: App, rt: Runtime) -> None:
    @app.command("/window")
    def window_command(ack, command, respond) -> None:  # noqa: ANN001 (Bolt injects by name)
        answer(rt, ack, respond, lambda: handle_window(rt, command["user_id"], command.get("text", "")),
               what="your /window")
