"""The deploy request card, history and rollback views, rendered from the stored deploy."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from bot.runtime import Runtime
from bot.views.common import (
    actions,
    button,
    confirm,
    context,
    divider,
    ephemeral,
    header,
    render,
    section,
)
from bot.views.window import until_phrase
from commands.config import format_duration
from commands.freezes import current_calendar
from commands.windows import format_local
from storage import deploys as rows

DEPLOY_USAGE = """/deploy SERVICE VERSION [ENV] [--now REASON] [--canary 10,50] [--contract]
/deploy history [SERVICE]"""
ROLLBACK_USAGE = "/rollback SERVICE [ENV]"

STATUS_ICON = {
    "pending": ":large_yellow_circle:",
    "approved": ":large_yellow_circle:",
    "queued": ":hourglass_flowing_sand:",
    "running": ":arrows_counterclockwise:",
    "succeeded": ":large_green_circle:",
    "failed": ":red_circle:",
    "rolled_back": ":leftwards_arrow_with_hook:",
    "needs_attention": ":rotating_light:",
    "cancelled": ":white_circle:",
    "rejected": ":no_entry_sign:",
}


def thread_link(d: dict[str, Any]) -> str:
    if d.get("channel") and d.get("card_ts"):
        return f"https://slack.com/archives/{d['channel']}/p{d['card_ts'].replace('.', '')}"
    return f"<#{d.get('channel') or ''}>"


def window_line(rt: Runtime, d: dict[str, Any]) -> str:
    now = rt.now()
    env = rt.cfg.environments[d["env"]]
    if d["status"] == "queued" and d["queued_until"]:
        return f":hourglass: Queued until {zones_line(rt, d['queued_until'])}, {until_phrase(now, d['queued_until'])}"
    if d["status"] not in ("pending", "approved"):
        return ""
    if d["now_reason"]:
        return f":rotating_light: *--now override*: {d['now_reason']} (needs one extra approval when school is in session)"
    if not env.respect_windows:
        return f":large_green_circle: Runs when approved ({d['env']} ignores school hours)"
    calendar = current_calendar(rt.cfg, rt.store)
    verdict = calendar.verdict(now)
    if verdict.safe:
        return ":large_green_circle: Window: runs now once approved"
    if verdict.next_safe_at is None:
        return ":red_circle: Window: no safe window in the next 400 days"
    return f":school: Window: queued until {zones_line(rt, verdict.next_safe_at, verdict)}, {until_phrase(now, verdict.next_safe_at)}"


def viewer_time(at: dt.datetime) -> str:
    """Slack renders this token in each viewer's own timezone; the fallback is UTC."""
    return f"<!date^{int(at.timestamp())}^{{date_short_pretty}} {{time}}|{at:%Y-%m-%d %H:%M} UTC>"


def zones_line(rt: Runtime, at: dt.datetime, verdict: Any = None) -> str:
    """An instant in each tenant timezone that matters, e.g. '15:00 EST / 12:00 PST', then the
    viewer's own time."""
    zones: list[str] = []
    blocks = verdict.blocked_by if verdict is not None else ()
    for b in blocks:
        if b.timezone and b.timezone not in zones:
            zones.append(b.timezone)
    if not zones:
        zones = list(dict.fromkeys(t.timezone for t in rt.cfg.tenants))[:3] or ["UTC"]
    return " / ".join(format_local(at, tz) for tz in zones[:4]) + f" ({viewer_time(at)} your time)"


def migration_lines(d: dict[str, Any]) -> list[str]:
    lint = d.get("lint")
    if lint is None:
        return []
    findings = lint.get("findings", [])
    allowed = bool(d.get("contract") and lint.get("contract_allowed"))
    blocking = [f for f in findings if f["severity"] == "block" and not (allowed and f.get("phase") == "contract")]
    warns = [f for f in findings if f not in blocking]
    head = f"*Migrations:* {len(lint.get('pending', []))} pending, {len(blocking)} blocking"
    if warns:
        head += f", {len(warns)} warning{'s' if len(warns) != 1 else ''}"
    lines = [head]
    for f in (blocking + warns)[:8]:
        icon = ":no_entry:" if f in blocking else ":warning:"
        lines.append(f"{icon} `{Path(f['file']).name}:{f['line']}` {f['rule']}: {f['message']}\n      _fix:_ {f['fix']}")
    if len(findings) > 8:
        lines.append(f"… and {len(findings) - 8} more (`recess migrations lint` shows all)")
    if blocking:
        lines.append("*Approval is refused* until the blocking migrations are split into safe steps (docs/MIGRATION_SAFETY.md)"
                     + (", or re-requested with `--contract` after blue is retired" if any(f.get("phase") == "contract" for f in blocking) else "")
                     + ".")
    return lines


def step_lines(rt: Runtime, deploy_id: int) -> list[str]:
    out = []
    icons = {"succeeded": ":white_check_mark:", "failed": ":x:", "running": ":arrows_counterclockwise:", "skipped": ":fast_forward:"}
    for s in rows.steps(rt.store, deploy_id):
        took = ""
        if s["finished_at"]:
            took = f" {format_duration(s['finished_at'] - s['started_at'])}"
        out.append(f"{icons.get(s['status'], '')} {s['name']}{took}")
    return out


def render_card(rt: Runtime, deploy_id: int) -> tuple[str, list[dict[str, Any]]]:
    d = rows.get(rt.store, deploy_id)
    if d is None:
        return f"deploy #{deploy_id}", render([section(f"deploy #{deploy_id} no longer exists")])
    icon = STATUS_ICON.get(d["status"], "")
    frm = d["previous_version"] or "nothing"
    kind = "Rollback" if d["kind"] == "rollback" else "Deploy"
    title = f"{kind} #{d['id']}: {d['service']} {frm} → {d['version']} ({d['env']})"
    blocks: list[Any] = [header(title[:150])]
    status_text = d["status"].replace("_", " ")
    if d["status"] == "succeeded" and d["kind"] == "rollback":
        status_text = "rolled back"
    lines = [f"{icon} *{status_text.capitalize()}*" + (f": {d['outcome']}" if d["outcome"] else "")]
    lines.append(f"Requested by <@{d['requester']}>")
    approvers = rows.approvers(rt.store, deploy_id)
    if d["approvals_needed"] or approvers:
        who = ", ".join(f"<@{u}>" for u in approvers) or "none yet"
        lines.append(f"Approvals: {len(approvers)} of {d['approvals_needed']} ({who})")
    if d["canary"]:
        lines.append(f"Canary: {' → '.join(f'{p}%' for p in d['canary'])} → 100%")
    blocks.append(section("\n".join(lines)))
    wl = window_line(rt, d)
    if wl:
        blocks.append(section(wl))
    if d["now_reason"] and d["status"] in ("pending", "approved", "queued", "running"):
        blocks.append(section(f":rotating_light: *EMERGENCY OVERRIDE (--now):* {d['now_reason']}"))
    mig = migration_lines(d)
    if mig:
        blocks.append(section("\n".join(mig)))
    steps = step_lines(rt, deploy_id)
    if steps:
        blocks.append(context("  ·  ".join(steps)))
    buttons = []
    value = str(d["id"])
    if d["status"] == "pending":
        buttons += [button("Approve", "deploy_approve", value, style="primary"), button("Reject", "deploy_reject", value, style="danger")]
    if d["status"] in ("pending", "approved", "queued"):
        buttons.append(button("Cancel", "deploy_cancel", value))
    baking = d["status"] == "running" and d["kind"] == "deploy" and d["traffic_at"] is not None
    if (d["status"] == "succeeded" or baking) and not d["blue_retired"] and d["blue_version"]:
        label = "Undo rollback" if d["kind"] == "rollback" else "Roll back"
        buttons.append(button(label, "rollback_card", value, style="danger", confirm=confirm(
            "Roll back?", f"Traffic returns to {d['blue_version']} in one router call.", "Roll back", style="danger")))
        until = d["blue_retire_at"]
        if until:
            blocks.append(context(f"{d['blue_version']} is kept for rollback until {viewer_time(until)} (`keep_blue`)."))
    if buttons:
        blocks.append(actions(f"deploy-{d['id']}", *buttons))
    blocks.append(divider())
    return f"{icon} {title}: {status_text}", render(blocks)


def history_reply(deploys: list[dict[str, Any]], service: str | None) -> dict[str, Any]:
    if not deploys:
        return ephemeral(f"No deploys yet{' of ' + service if service else ''}.")
    lines = []
    for d in deploys:
        took = ""
        if d["started_at"] and d["finished_at"]:
            took = f", {format_duration(d['finished_at'] - d['started_at'])}"
        when = d["created_at"].strftime("%Y-%m-%d %H:%M UTC")
        kind = "rollback to " if d["kind"] == "rollback" else ""
        lines.append(f"{STATUS_ICON.get(d['status'], '')} #{d['id']} {d['service']} {kind}*{d['version']}* ({d['env']}) "
                     f"by <@{d['requester']}>, {when}{took}: {d['status'].replace('_', ' ')}")
    return {"response_type": "ephemeral", "text": "Deploy history",
            "blocks": render([section(f"*Last deploys{' of ' + service if service else ''}*"), section("\n".join(lines))])}


def rollback_preview(plan: Any) -> dict[str, Any]:
    live = plan.live
    if plan.blue_alive:
        how = (f"Blue ({plan.target}) is still running in slot {plan.blue_slot} until "
               f"{viewer_time(plan.retire_at) if plan.retire_at else 'it is retired'}: traffic flips back in one router call.")
    else:
        how = f"Blue was retired, so {plan.target} is redeployed blue-green through the pipeline (a few seconds to minutes)."
    text = f"*Roll back {live['service']} in {live['env']}:* {plan.current} → *{plan.target}*\n{how}"
    blocks = [section(text), actions(f"rollback-{live['id']}", button(
        "Roll back", "rollback_start", str(live["id"]), style="danger",
        confirm=confirm("Roll back now?", f"{live['service']} returns to {plan.target}.", "Roll back", style="danger")))]
    return {"response_type": "ephemeral", "text": f"Roll back {live['service']} to {plan.target}?", "blocks": render(blocks)}


def held_reply(message: str, holder: dict[str, Any]) -> dict[str, Any]:
    """Another deploy holds the service: say who, link its thread, offer to cancel it if it waits."""
    blocks: list[Any] = [section(f":warning: {message} <{thread_link(holder)}|Open its thread>.")]
    if holder["status"] in ("pending", "approved", "queued"):
        blocks.append(actions(f"held-{holder['id']}", button(
            f"Cancel deploy #{holder['id']}", "deploy_cancel", str(holder["id"]), style="danger",
            confirm=confirm("Cancel that deploy?", f"Deploy #{holder['id']} of {holder['version']} will not run.", "Cancel it", "Keep it"))))
    return {"response_type": "ephemeral", "text": message, "blocks": render(blocks)}


def thread_rollback_blocks(text: str, deploy_id: int) -> list[dict[str, Any]]:
    """A thread line with the Roll back button under it (the click is checked against the store)."""
    return render([section(text), actions(f"thread-rollback-{deploy_id}", button(
        "Roll back", "rollback_start", str(deploy_id), style="danger",
        confirm=confirm("Roll back?", "Traffic returns to the previous version in one router call.", "Roll back", style="danger")))])
