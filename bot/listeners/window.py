"""/window: the verdict now or at an instant, and freezes (add, list, lift)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from slack_bolt import App

from bot.listeners.text import ParseError, split_args
from bot.runtime import Runtime, user_timezone
from bot.views.common import ephemeral, usage_reply
from bot.views.window import (
    WINDOW_USAGE,
    freeze_announcement,
    freeze_line,
    freezes_reply,
    verdict_reply,
)
from commands import freezes
from commands.windows import parse_when


def parse_instant(text: str, tz: str, now: dt.datetime) -> dt.datetime:
    """ISO 8601; without an offset it is local to `tz` (the caller's timezone)."""
    try:
        dt.datetime.fromisoformat(text)
    except ValueError:
        raise ParseError(f"{text!r} is not an ISO 8601 time like 2027-04-12T00:00 or 2027-04-12T00:00-04:00") from None
    try:
        return freezes.check_instant(parse_when(text, now, tz))
    except ValueError as exc:
        raise ParseError(str(exc)) from None


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
        if len(args) < 4:
            return usage_reply("`/window freeze` needs START, END and a REASON", WINDOW_USAGE)
        tz = user_timezone(rt, user)
        try:
            start, end = parse_instant(args[1], tz, now), parse_instant(args[2], tz, now)
            info = freezes.add_freeze(
                rt.store, rt.policy, actor=user, start=start, end=end, reason=" ".join(args[3:]), now=now
            )
        except (ParseError, freezes.FreezeError) as exc:
            return usage_reply(str(exc), WINDOW_USAGE)
        text, blocks = freeze_announcement(info, user)
        rt.outbox.post(rt.cfg.bot.channel, text, blocks)
        return ephemeral(f":snowflake: Freeze #{info.id} added: {freeze_line(info, tz)}")
    if sub == "unfreeze":
        if len(args) != 2 or not args[1].lstrip("#").isdigit():
            return usage_reply("`/window unfreeze` needs one freeze ID, e.g. `/window unfreeze 3`", WINDOW_USAGE)
        try:
            info = freezes.lift_freeze(rt.store, rt.policy, actor=user, freeze_id=int(args[1].lstrip("#")), now=now)
        except freezes.FreezeError as exc:
            return usage_reply(str(exc), WINDOW_USAGE)
        text, blocks = freeze_announcement(info, user, lifted=True)
        rt.outbox.post(rt.cfg.bot.channel, text, blocks)
        return ephemeral(f":sunny: Freeze #{info.id} lifted ({info.reason}).")
    return usage_reply(f"unknown subcommand `{args[0]}`", WINDOW_USAGE)


def register(app: App, rt: Runtime) -> None:
    @app.command("/window")
    def window_command(ack, command) -> None:  # noqa: ANN001 (Bolt injects by name)
        ack(**handle_window(rt, command["user_id"], command.get("text", "")))
