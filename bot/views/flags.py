"""What /flag says: the flag list, one flag in full, its history, and before -> after for changes."""

from __future__ import annotations

import datetime as dt
from typing import Any

from bot.views.common import context, ephemeral, escape_mrkdwn, render, section
from bot.views.window import plural
from commands.flags import Applied, Flag, Scheduled, ScheduledOutcome, describe_state
from commands.windows import format_local
from storage.db import parse_iso

FLAG_USAGE = """/flag list                        every flag: default, rollout, overrides, last change
/flag show KEY                    one flag in full, with its last changes
/flag history KEY                 who changed it, when, before -> after, why
/flag create KEY "DESCRIPTION"    a new flag; it starts off
/flag on KEY [SCOPE]              on for everyone, or only for SCOPE
/flag off KEY [SCOPE]             off for everyone, or only for SCOPE
/flag rollout KEY PCT [SCOPE] [by=user|tenant]
                                  on for PCT% of users (by=tenant: of schools)
/flag clear KEY SCOPE             remove an override; SCOPE inherits again
/flag kill KEY | unkill KEY       kill switch: off everywhere, beats everything
/flag cancel ID                   cancel a scheduled change
SCOPE: tenant=ID and/or role=NAME
Changes take --note WHY (the words up to the next option, quotes optional:
/flag kill grades_v2 --note grades page 500s) and --at-window (apply at the next safe window)."""

SECTION_BUDGET = 2800  # characters per section block, under Slack's 3000


def _utc(at: dt.datetime | str | None) -> str:
    if isinstance(at, str):
        at = parse_iso(at)
    if at is None:
        return "never"
    return f"{at.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"


def _sections(lines: list[str]) -> list:
    """Lines packed into as few section blocks as fit Slack's per-section limit."""
    blocks, chunk, size = [], [], 0
    for line in lines:
        if chunk and size + len(line) + 1 > SECTION_BUDGET:
            blocks.append(section("\n".join(chunk)))
            chunk, size = [], 0
        chunk.append(line)
        size += len(line) + 1
    if chunk:
        blocks.append(section("\n".join(chunk)))
    return blocks


def _who(actor: str) -> str:
    return f"<@{actor}>" if actor[:1] in ("U", "W") else actor


def flag_state(flag: Flag) -> str:
    """'on', 'off', '25% of users', or 'KILLED (was: on)'."""
    if flag.rollout is not None:
        unit = "schools" if flag.rollout_by == "tenant" else "users"
        base = f"{flag.rollout}% of {unit}"
    else:
        base = "on" if flag.default else "off"
    return f"KILLED (otherwise {base})" if flag.killed else base


def override_line(flag: Flag, tenant: str, role: str, value: bool, rollout: int | None) -> str:
    scope = " ".join(p for p in (f"tenant={tenant}" * bool(tenant), f"role={role}" * bool(role)) if p)
    if rollout is not None:
        unit = "schools" if flag.rollout_by == "tenant" else "users"
        return f"• {scope}: {rollout}% of {unit}"
    return f"• {scope}: {'on' if value else 'off'}"


def list_reply(flags: list[Flag], last: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if not flags:
        return ephemeral('No flags yet. Add one with `/flag create KEY "description"`.')
    lines = []
    for f in flags:
        change = last.get(f.key)
        when = f"{_utc(change['at'])} by {_who(change['actor'])}" if change else "never"
        overrides = plural(len(f.overrides), "override")
        lines.append(f"• `{f.key}` *{flag_state(f)}* · {overrides} · last change {when}")
    blocks = [section(f"*Flags* ({plural(len(flags), 'flag')})"), *_sections(lines), context("`/flag show KEY` for one flag in full.")]
    return {"response_type": "ephemeral", "text": f"Flags ({len(flags)})", "blocks": render(blocks)}


def show_reply(flag: Flag, history: list[dict[str, Any]], scheduled: list[Scheduled]) -> dict[str, Any]:
    head = [
        f"*`{flag.key}`*: {escape_mrkdwn(flag.description) or '(no description)'}",
        f"State: *{flag_state(flag)}*" + (" (kill switch on)" if flag.killed else ""),
        f"Default: {'on' if flag.default else 'off'} · rollout: "
        + (f"{flag.rollout}% by {flag.rollout_by}" if flag.rollout is not None else "none")
        + f" · percentages bucket by {flag.rollout_by}",
        f"Owner: {_who(flag.owner)} · created {_utc(flag.created_at)}",
    ]
    blocks = [section("\n".join(head))]
    if flag.overrides:
        lines = [override_line(flag, o.tenant, o.role, o.value, o.rollout) for o in flag.overrides[:40]]
        if len(flag.overrides) > 40:
            lines.append(f"• … and {len(flag.overrides) - 40} more")
        blocks.append(section("*Overrides* (tenant+role beats tenant beats role)\n" + "\n".join(lines)))
    else:
        blocks.append(section("*Overrides*: none"))
    if scheduled:
        lines = [f"• #{s.id} {s.change.summary()} at {_utc(s.run_at)} (by {_who(s.requested_by)})" for s in scheduled[:10]]
        blocks.append(section("*Scheduled for the next safe window*\n" + "\n".join(lines)))
    if history:
        blocks.append(section("*Last changes*\n" + "\n".join(history_line(e) for e in history[:5])))
    return {"response_type": "ephemeral", "text": f"Flag {flag.key}: {flag_state(flag)}", "blocks": render(blocks)}


def history_line(entry: dict[str, Any]) -> str:
    action = entry["action"].removeprefix("flag.")
    before, after = entry["before"], entry["after"]
    who = _who(entry["actor"])
    if action == "schedule":
        what = f"scheduled #{after['change_id']}: {after['change']} at {_utc(after['run_at'])}"
    elif action == "cancel":
        what = f"cancelled scheduled #{before['change_id']}: {before['change']}"
    elif action == "schedule_failed":
        what = f"scheduled #{after['change_id']} failed: {after['reason']}"
    elif action in ("create", "seed"):
        origin = "from the config" if action == "seed" else ""
        what = f"created {origin}(default {describe_state(after)})".replace("  ", " ")
    else:
        scope = (after or before or {}).get("scope")
        where = f" for {scope}" if scope else ""
        what = f"{action}{where}: {describe_state(before)} → {describe_state(after)}"
    note = f" — _{escape_mrkdwn(entry['note'])}_" if entry.get("note") else ""
    return f"• {_utc(entry['at'])} {who} {what}{note}"


def history_reply(key: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    if not entries:
        return ephemeral(f"`{key}` has no recorded changes.")
    blocks = [section(f"*History of `{key}`* (newest first)"), *_sections([history_line(e) for e in entries])]
    return {"response_type": "ephemeral", "text": f"History of {key}", "blocks": render(blocks)}


def change_line(applied: Applied) -> str:
    """'`portfolio_enabled` for tenant=lincoln-high: not set → on'."""
    change = applied.change
    if change.action == "create":
        return f"`{change.key}` created (off): {escape_mrkdwn(change.description)}"
    if change.action in ("kill", "unkill"):
        tail = " — off everywhere, whatever the overrides say" if change.action == "kill" else ""
        return f"`{change.key}`: {describe_state(applied.before)} → {describe_state(applied.after)}{tail}"
    return f"`{change.key}` for {change.scope}: {describe_state(applied.before)} → {describe_state(applied.after)}"


def _icon(applied: Applied) -> str:
    return {"kill": ":rotating_light:", "create": ":seedling:"}.get(applied.change.action, ":triangular_flag_on_post:")


def change_reply(applied: Applied, channel: str) -> dict[str, Any]:
    return ephemeral(f":white_check_mark: {change_line(applied)}. Announced in <#{channel}>.")


def change_announcement(applied: Applied) -> tuple[str, list[dict[str, Any]]]:
    origin = f" (scheduled change #{applied.scheduled_id}, applied at the safe window)" if applied.scheduled_id else ""
    text = f"{_icon(applied)} {_who(applied.actor)} changed a flag{origin}: {change_line(applied)}"
    blocks = [section(text)]
    if applied.note:
        blocks.append(context(f"Note: {escape_mrkdwn(applied.note)}"))
    return text, render(blocks)


def scheduled_reply(s: Scheduled, tz: str, now: dt.datetime) -> dict[str, Any]:
    if s.run_at <= now:
        return ephemeral(f":alarm_clock: Change #{s.id}: {s.change.summary()}. The window is open now, so it applies "
                         f"right away; the channel shows the result.")
    when = f"at the next safe window, {format_local(s.run_at, tz, reference=now)} your time ({_utc(s.run_at)})"
    return ephemeral(f":alarm_clock: Scheduled change #{s.id}: {s.change.summary()}, {when}. `/flag cancel {s.id}` cancels it.")


def scheduled_announcement(s: Scheduled) -> tuple[str, list[dict[str, Any]]]:
    text = f":alarm_clock: {_who(s.requested_by)} scheduled flag change #{s.id}: {s.change.summary()}, at the next safe window ({_utc(s.run_at)})."
    blocks = [section(text)]
    if s.note:
        blocks.append(context(f"Note: {escape_mrkdwn(s.note)}"))
    return text, render(blocks)


def outcome_announcement(outcome: ScheduledOutcome) -> tuple[str, list[dict[str, Any]]] | None:
    """The channel message for a scheduled change that ran; None when there is nothing to say."""
    s = outcome.scheduled
    if outcome.kind == "applied" and outcome.applied is not None:
        return change_announcement(outcome.applied)
    if s is None:
        return None
    if outcome.kind == "rescheduled":
        text = f":alarm_clock: Flag change #{s.id} ({s.change.summary()}) found the window blocked again; it now waits for {_utc(outcome.run_at)}."
    elif outcome.kind == "unchanged":
        text = f":information_source: Flag change #{s.id} ({s.change.summary()}) had nothing left to do: {outcome.reason}."
    elif outcome.kind == "failed":
        text = f":warning: Flag change #{s.id} ({s.change.summary()}) could not be applied: {outcome.reason}. <@{s.requested_by}>"
    else:
        return None
    return text, render([section(text)])


def cancelled_reply(s: Scheduled) -> dict[str, Any]:
    return ephemeral(f":wastebasket: Cancelled scheduled change #{s.id}: {s.change.summary()}.")


def cancelled_announcement(s: Scheduled, actor: str) -> tuple[str, list[dict[str, Any]]]:
    text = f":wastebasket: {_who(actor)} cancelled scheduled flag change #{s.id}: {s.change.summary()}."
    return text, render([section(text)])
