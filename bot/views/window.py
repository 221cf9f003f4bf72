"""What /window says: the verdict, why, and the next safe window in the caller's and the schools' time."""

from __future__ import annotations

import datetime as dt

from bot.views.common import context, ephemeral, render, section
from commands.freezes import FreezeInfo
from commands.windows import Verdict, format_local

WINDOW_USAGE = """/window                          verdict now, and the next safe window
/window at WHEN                  verdict at an instant ("friday 16:00", or ISO 8601)
/window freeze START END REASON  START/END ISO 8601 (with offset, or your local time without)
/window freezes                  current and future freezes with their IDs
/window unfreeze ID              lift a freeze (approvers)"""


def until_phrase(now: dt.datetime, then: dt.datetime) -> str:
    minutes = int((then - now).total_seconds() // 60)
    if minutes < 1:
        return "in under a minute"
    days, rem = divmod(minutes, 24 * 60)
    hours, mins = divmod(rem, 60)
    parts = [f"{days} d"] if days else []
    if hours:
        parts.append(f"{hours} h")
    if mins and not days:
        parts.append(f"{mins} min")
    return "in " + " ".join(parts)


def next_window_line(verdict: Verdict, user_tz: str, now: dt.datetime) -> str:
    nxt = verdict.next_safe_at
    if nxt is None:
        return "No safe window in the next 400 days: check the school hours and freezes in the config."
    zones = [f"{format_local(nxt, user_tz, now)} your time"]
    seen = {user_tz}
    for b in verdict.blocked_by:
        if b.timezone and b.timezone not in seen:
            seen.add(b.timezone)
            zones.append(f"{format_local(nxt, b.timezone, now)} {b.tenant}")
    return f"Next safe window: *{' / '.join(zones)}*, {until_phrase(now, nxt)}"


def verdict_reply(verdict: Verdict, user_tz: str, now: dt.datetime, *, asked_at: str | None = None) -> dict:
    when = f"at {format_local(verdict.at, user_tz, now)}" if asked_at else "now"
    if verdict.safe:
        text = f":large_green_circle: Safe to deploy {when}: no school is in session and no freeze applies."
        return ephemeral(text)
    lines = [f":red_circle: Deploys are blocked {when}."]
    for b in verdict.blocked_by[:20]:
        if b.kind == "freeze":
            ident = f"#{b.id}" if b.id is not None else "(config)"
            lines.append(f"• freeze {ident}: {b.reason}, until {format_local(b.until, user_tz, verdict.at)}")
        else:
            lines.append(f"• school hours: *{b.tenant}* ({b.timezone}) until {format_local(b.until, b.timezone, verdict.at)}")
    if len(verdict.blocked_by) > 20:
        lines.append(f"• … and {len(verdict.blocked_by) - 20} more")
    blocks = [section("\n".join(lines)), section(next_window_line(verdict, user_tz, now))]
    return {"response_type": "ephemeral", "text": lines[0], "blocks": render(blocks)}


def freeze_line(f: FreezeInfo, tz: str) -> str:
    ident = f"#{f.id}" if f.id is not None else "(config)"
    who = f" by <@{f.created_by}>" if f.created_by else ""
    far = f.start - dt.timedelta(days=400)  # any other day: always print the dates
    return f"{ident} {format_local(f.start, tz, far)} → {format_local(f.end, tz, far)}: {f.reason}{who}"


def freezes_reply(freezes: list[FreezeInfo], tz: str) -> dict:
    if not freezes:
        return ephemeral("No current or future freezes. Add one with `/window freeze START END REASON`.")
    lines = [freeze_line(f, tz) for f in freezes[:40]]
    blocks = [section("*Freezes* (times in your timezone)"), section("\n".join(lines))]
    if len(freezes) > 40:
        blocks.append(context(f"… and {len(freezes) - 40} more"))
    return {"response_type": "ephemeral", "text": "Freezes", "blocks": render(blocks)}


def freeze_announcement(f: FreezeInfo, actor: str, *, lifted: bool = False) -> tuple[str, list[dict]]:
    if lifted:
        text = f":sunny: <@{actor}> lifted freeze #{f.id} ({f.reason}); deploys follow school hours again."
    else:
        text = (
            f":snowflake: <@{actor}> froze deploys: *{f.reason}* (freeze #{f.id}), "
            f"{f.start.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC → {f.end.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC."
        )
    return text, render([section(text)])
