"""What /window says: the verdict, why, and the next safe window in the caller's and the schools' time."""

from __future__ import annotations

import datetime as dt

from bot.views.common import context, ephemeral, escape_mrkdwn, render, section
from commands.freezes import FreezeInfo
from commands.windows import Verdict, format_local

WINDOW_USAGE = """/window                          verdict now, and the next safe window
/window at WHEN                  verdict at an instant ("friday 16:00", or ISO 8601)
/window freeze START END REASON  freeze deploys (approvers); START and END as for `at`:
                                 /window freeze tomorrow 18:00 to friday 07:00 Report cards
                                 /window freeze "mon 8:00" "fri 15:00" State testing week
                                 /window freeze 2027-04-01T00:00 2027-04-03T00:00-04:00 Exams
                                 (ISO without an offset is your local time)
/window freezes                  current and future freezes with their IDs
/window unfreeze ID              lift a freeze (approvers)"""


def plural(n: int, one: str, many: str | None = None) -> str:
    """'1 freeze', '2 freezes'."""
    return f"{n} {one if n == 1 else (many or one + 's')}"


def slack_date(at: dt.datetime, fallback_tz: str = "UTC") -> str:
    """A Slack date token: each reader sees `at` in their own timezone. Clients that cannot
    render it show the fallback, in `fallback_tz` (the caller's, or UTC for the channel)."""
    fallback = format_local(at, fallback_tz, at - dt.timedelta(days=400))  # always with the date
    return f"<!date^{int(at.timestamp())}^{{date_short_pretty}} {{time}}|{fallback}>"


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
    line = f"Next safe window: *{' / '.join(zones)}*, {until_phrase(now, nxt)}"
    phrase = verdict.until_phrase()
    return line + (f"; {escape_mrkdwn(phrase)}" if phrase else "")


def verdict_reply(verdict: Verdict, user_tz: str, now: dt.datetime, *, asked_at: str | None = None) -> dict:
    when = f"at {format_local(verdict.at, user_tz, now)}" if asked_at else "now"
    if verdict.safe:
        text = f":large_green_circle: Safe to deploy {when}: no school is in session and no freeze applies."
        phrase = verdict.until_phrase()
        if phrase:
            text += f" It stays {escape_mrkdwn(phrase)}."
        return ephemeral(text)
    lines = [f":red_circle: Deploys are blocked {when}."]
    for b in verdict.blocked_by[:20]:
        if b.kind == "freeze":
            ident = f"#{b.id}" if b.id is not None else "(config)"
            lines.append(f"• freeze {ident}: {escape_mrkdwn(b.reason)}, until {format_local(b.until, user_tz, verdict.at)}")
        else:
            lines.append(f"• school hours: *{b.tenant}* ({b.timezone}) until {format_local(b.until, b.timezone, verdict.at)}")
    if len(verdict.blocked_by) > 20:
        lines.append(f"• … and {len(verdict.blocked_by) - 20} more")
    blocks = [section("\n".join(lines)), section(next_window_line(verdict, user_tz, now))]
    return {"response_type": "ephemeral", "text": lines[0], "blocks": render(blocks)}


def freeze_line(f: FreezeInfo, tz: str) -> str:
    """'#3 <date> → <date>: State testing by @dana': dates as Slack tokens, the reason inert."""
    ident = f"#{f.id}" if f.id is not None else "(config)"
    who = f" by <@{f.created_by}>" if f.created_by else ""
    return f"{ident} {freeze_span(f, tz)}: {escape_mrkdwn(f.reason)}{who}"


def freeze_span(f: FreezeInfo, tz: str = "UTC") -> str:
    return f"{slack_date(f.start, tz)} → {slack_date(f.end, tz)}"


def freezes_reply(freezes: list[FreezeInfo], tz: str) -> dict:
    if not freezes:
        return ephemeral("No current or future freezes. Add one with `/window freeze START END REASON`.")
    lines = [freeze_line(f, tz) for f in freezes[:40]]
    blocks = [section(f"*Freezes* ({plural(len(freezes), 'freeze')}, times in your timezone)"), section("\n".join(lines))]
    if len(freezes) > 40:
        blocks.append(context(f"… and {len(freezes) - 40} more"))
    return {"response_type": "ephemeral", "text": f"Freezes ({len(freezes)})", "blocks": render(blocks)}


def freeze_added_reply(f: FreezeInfo, tz: str) -> dict:
    return ephemeral(f":snowflake: Freeze #{f.id} added: {freeze_span(f, tz)}: {escape_mrkdwn(f.reason)}. "
                     f"`/window unfreeze {f.id}` lifts it.")


def still_blocking(standing: list[FreezeInfo], now: dt.datetime, tz: str = "UTC") -> str:
    """What a lift leaves: the freezes in effect now, or that none is and what is ahead."""
    current = [f for f in standing if f.start <= now < f.end]
    ahead = [f for f in standing if f.start > now]
    if current:
        named = "; ".join(
            f"freeze {'#' + str(f.id) if f.id is not None else '(config)'} ({escape_mrkdwn(f.reason)}) "
            f"until {slack_date(f.end, tz)}" for f in current[:5])
        more = f" and {plural(len(current) - 5, 'more freeze')}" if len(current) > 5 else ""
        verb = "still blocks" if len(current) == 1 else "still block"
        return f"{named}{more} {verb} deploys."
    later = f" {plural(len(ahead), 'freeze')} ahead: `/window freezes` lists them." if ahead else ""
    return f"No freeze is in effect now: deploys follow school hours again.{later}"


def freeze_lifted_reply(f: FreezeInfo, standing: list[FreezeInfo], now: dt.datetime, tz: str) -> dict:
    return ephemeral(f":sunny: Freeze #{f.id} lifted ({escape_mrkdwn(f.reason)}). {still_blocking(standing, now, tz)}")


def freeze_announcement(f: FreezeInfo, actor: str, *, lifted: bool = False,
                        standing: list[FreezeInfo] | None = None, now: dt.datetime | None = None) -> tuple[str, list[dict]]:
    """The channel's line; dates are Slack tokens, so each reader sees them in their own time.
    For a lift, `standing` (the freezes still current or ahead at `now`) says what still blocks."""
    reason = escape_mrkdwn(f.reason)
    if lifted:
        after = still_blocking(standing or [], now or f.start)
        text = f":sunny: <@{actor}> lifted freeze #{f.id} ({reason}). {after}"
    else:
        text = f":snowflake: <@{actor}> froze deploys: *{reason}* (freeze #{f.id}), {freeze_span(f)}."
    return text, render([section(text)])
