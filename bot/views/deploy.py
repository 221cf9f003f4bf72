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
    escape_mrkdwn,
    header,
    render,
    section,
)
from bot.views.window import until_phrase
from commands.config import format_duration
from commands.freezes import current_calendar
from commands.states import requester_text
from commands.windows import format_local
from storage import deploys as rows

DEPLOY_USAGE = """/deploy SERVICE VERSION [ENV] [--now REASON] [--canary 10,50] [--contract]
/deploy RELEASE VERSION [ENV] ...          every member of [releases.RELEASE] at VERSION
/deploy RELEASE SERVICE=VERSION... [ENV]   named members only, one version each
/deploy history [SERVICE|RELEASE]
/deploy dashboard                          a one-time link that signs you in to the web dashboard"""
ROLLBACK_USAGE = "/rollback SERVICE|RELEASE [ENV]"

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


def button_value(d: dict[str, Any]) -> str:
    """What every button of a deploy's card carries: its id and the random token stored with it."""
    return f"{d['id']}:{d['click_token']}" if d.get("click_token") else str(d["id"])


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
    deployer = rt.extras.get("deployer")
    # A release waits for its members too (Deployer.held).
    holder = deployer.held(d["service"], d["env"]) if deployer is not None else rows.holder(rt.store, d["service"], d["env"])
    if d["status"] == "approved" and holder and holder["id"] != d["id"]:
        return (f":hourglass: Waits for <{thread_link(holder)}|deploy #{holder['id']}> ({holder['version']}, "
                f"{holder['status'].replace('_', ' ')}); starts when the service is free, in the order approvals completed")
    if d["now_reason"]:
        calendar = current_calendar(rt.cfg, rt.store)
        freezes = [b for b in calendar.verdict(now).blocked_by if b.kind == "freeze"]
        overrides = "".join(f" *Overrides freeze #{b.id}* ({escape_mrkdwn(b.reason)})." for b in freezes)
        return (f":rotating_light: *--now override*: {escape_mrkdwn(d['now_reason'])} (needs one extra approval "
                f"whenever it would run during school hours or a freeze).{overrides}")
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


def migration_lines(d: dict[str, Any], applies: bool = True) -> list[str]:
    """The card's migration report: the pending files by name, each finding, and, when the
    service has no `migrate` command, that approving will not apply them."""
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
    pending = lint.get("pending", [])
    if pending:
        shown = ", ".join(f"`{escape_mrkdwn(name)}`" for name in pending[:10])
        more = f" and {len(pending) - 10} more" if len(pending) > 10 else ""
        lines.append(f"Pending: {shown}{more}")
        if not applies:
            lines.append(":warning: *recess will not apply these migrations*: this service has no `migrate` command, "
                         "so approving deploys the code without them.")
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
    if rows.is_member(d):
        return render_card(rt, d["release_id"])  # a member's news shows on its release's card
    if rows.is_release(d):
        return render_release_card(rt, d)
    icon = STATUS_ICON.get(d["status"], "")
    frm = d["previous_version"] or "nothing"
    kind = "Rollback" if d["kind"] == "rollback" else "Deploy"
    title = f"{kind} #{d['id']}: {d['service']} {frm} → {d['version']} ({d['env']})"
    blocks: list[Any] = [header(title[:150])]
    status_text = d["status"].replace("_", " ")
    if d["status"] == "succeeded" and d["kind"] == "rollback":
        status_text = "rolled back"
    lines = [f"{icon} *{status_text.capitalize()}*" + (f": {d['outcome']}" if d["outcome"] else "")]
    lines.append(f"Requested by {requester_text(d)}" + (f", commit `{d['sha'][:12]}`" if d.get("sha") else ""))
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
        blocks.append(section(f":rotating_light: *EMERGENCY OVERRIDE (--now):* {escape_mrkdwn(d['now_reason'])}"))
    svc = rt.cfg.services.get(d["service"])
    applies = bool(svc and getattr(getattr(svc, svc.platform, None), "migrate", None))
    mig = migration_lines(d, applies)
    if mig:
        blocks.append(section("\n".join(mig)))
    steps = step_lines(rt, deploy_id)
    if steps:
        blocks.append(context("  ·  ".join(steps)))
    buttons = []
    value = button_value(d)
    if d["status"] == "pending":
        buttons += [button("Approve", "deploy_approve", value, style="primary"), button("Reject", "deploy_reject", value, style="danger")]
    if d["status"] in ("pending", "approved", "queued"):
        buttons.append(button("Cancel", "deploy_cancel", value))
    if d["status"] == "running" and d["kind"] == "deploy":
        buttons.append(button("Stop", "deploy_stop", value, style="danger", confirm=confirm(
            "Stop this deploy?", f"Traffic goes back to {d['blue_version'] or 'blue'} and {d['version']} is stopped.",
            "Stop it", "Keep going")))
    baking = d["status"] == "running" and d["kind"] == "deploy" and d["traffic_at"] is not None
    if (d["status"] == "succeeded" or baking) and not d["blue_retired"] and d["blue_version"]:
        label = "Undo rollback" if d["kind"] == "rollback" else "Roll back"
        buttons.append(button(label, "rollback_card", value, style="danger", confirm=confirm(
            "Roll back?", f"Traffic returns to {d['blue_version']} in one router call.", "Roll back", style="danger")))
        until = d["blue_retire_at"]
        if until:
            blocks.append(context(f"{d['blue_version']} is kept for rollback until {viewer_time(until)} (`keep_blue`)."))
    elif d["status"] == "succeeded" and d["blue_retired"] and d["blue_version"]:
        newer = rt.store.row(
            "SELECT id FROM deploys WHERE service = ? AND env = ? AND id > ? AND traffic_at IS NOT NULL ORDER BY id LIMIT 1",
            (d["service"], d["env"], d["id"]))
        why = f"replaced by #{newer['id']}" if newer else "its rollback window passed"
        blocks.append(context(f"{d['blue_version']} is no longer kept ({why}); `/rollback {d['service']}` redeploys it."))
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
        if rows.is_release(d):
            kind = "release rollback: " if d["kind"] == "rollback" else "release: "
            shown = ", ".join(f"{m['service']} {m['previous_version'] or 'nothing'} → *{m['version']}*" for m in d["members"] or [])
            lines.append(f"{STATUS_ICON.get(d['status'], '')} #{d['id']} {d['service']} {kind}{shown} ({d['env']}) "
                         f"by {requester_text(d)}, {when}{took}: {d['status'].replace('_', ' ')}")
            continue
        member = f" (release #{d['release_id']})" if rows.is_member(d) else ""
        lines.append(f"{STATUS_ICON.get(d['status'], '')} #{d['id']} {d['service']} {kind}*{d['version']}* ({d['env']}) "
                     f"by {requester_text(d)}, {when}{took}: {d['status'].replace('_', ' ')}{member}")
    return {"response_type": "ephemeral", "text": "Deploy history",
            "blocks": render([section(f"*Last deploys{' of ' + service if service else ''}*"), section("\n".join(lines))])}


def rollback_preview(plan: Any, *, railway: Any = None) -> dict[str, Any]:
    live = plan.live
    if railway is not None and plan.blue_alive:
        how = (f"Railway still retains {plan.target}'s deployment: recess asks Railway to roll back to it "
               f"(deploymentRollback), follows the new deployment to SUCCESS and reports the time, in seconds, "
               f"from your click until {railway.public_url} answers again (usually tens of seconds: Railway "
               f"starts it and checks its healthcheck; it is not one router call).")
    elif railway is not None:
        again = (f"recess redeploys {railway.image}:{plan.target} through the pipeline instead (minutes)"
                 if railway.image else f"recess redeploys commit {plan.target} through the pipeline instead (minutes)")
        how = (f"Rolling back to {plan.target}'s deployment is not possible on Railway any more (its image "
               f"retention passed, or recess retired it); {again}.")
    elif plan.blue_alive:
        how = (f"Blue ({plan.target}) is still running in slot {plan.blue_slot} until "
               f"{viewer_time(plan.retire_at) if plan.retire_at else 'it is retired'}: traffic flips back in one router call.")
    else:
        how = f"Blue was retired, so {plan.target} is redeployed blue-green through the pipeline (a few seconds to minutes)."
    if live["kind"] == "rollback":
        # Typing /rollback twice undoes the rollback: say so in words, never as a plain "v2 -> v3".
        when = viewer_time(live["traffic_at"]) if live.get("traffic_at") else "earlier"
        title = (f":warning: *Undo rollback #{live['id']}* of {live['service']} in {live['env']}: puts *{plan.target}* back, "
                 f"the version rolled back at {when}. {plan.current} stops serving.")
        label, question = "Undo rollback", f"Put {plan.target} back?"
        body = f"This undoes rollback #{live['id']}: {plan.target}, the version rolled back, serves again."
    else:
        title = f"*Roll back {live['service']} in {live['env']}:* {plan.current} → *{plan.target}*"
        label, question = "Roll back", "Roll back now?"
        body = f"{live['service']} returns to {plan.target}."
    blocks = [section(f"{title}\n{how}"), actions(f"rollback-{live['id']}", button(
        label, "rollback_start", button_value(live), style="danger",
        confirm=confirm(question, body, label, style="danger")))]
    return {"response_type": "ephemeral", "text": f"{label}: {live['service']} to {plan.target}?", "blocks": render(blocks)}


def held_reply(message: str, holder: dict[str, Any]) -> dict[str, Any]:
    """Another deploy holds the service: say who, link its thread, offer to cancel it if it waits."""
    blocks: list[Any] = [section(f":warning: {message} <{thread_link(holder)}|Open its thread>.")]
    if holder["status"] in ("pending", "approved", "queued"):
        blocks.append(actions(f"held-{holder['id']}", button(
            f"Cancel deploy #{holder['id']}", "deploy_cancel", button_value(holder), style="danger",
            confirm=confirm("Cancel that deploy?", f"Deploy #{holder['id']} of {holder['version']} will not run.", "Cancel it", "Keep it"))))
    return {"response_type": "ephemeral", "text": message, "blocks": render(blocks)}


def thread_rollback_blocks(text: str, d: dict[str, Any]) -> list[dict[str, Any]]:
    """A thread line with the Roll back button under it (the click is checked against the store)."""
    return render([section(text), actions(f"thread-rollback-{d['id']}", button(
        "Roll back", "rollback_start", button_value(d), style="danger",
        confirm=confirm("Roll back?", "Traffic returns to the previous version in one router call.", "Roll back", style="danger")))])


# -- releases ---------------------------------------------------------------------------------------


def release_lines(rt: Runtime, d: dict[str, Any]) -> list[str]:
    """One line per member: from -> to, its state and its steps (or the plan, before it starts)."""
    members = rows.members(rt.store, d)
    solo = {r["rollback_of"]: r for r in rows.solo_rollbacks(rt.store, d)}
    lines = []
    if not members:
        for m in d["members"] or []:
            lines.append(f"• *{m['service']}* {m['previous_version'] or 'nothing'} → *{m['version']}*")
        return lines
    for m in members:
        icon = STATUS_ICON.get(m["status"], "")
        steps = " · ".join(step_lines(rt, m["id"]))
        line = (f"• *{m['service']}* {m['previous_version'] or 'nothing'} → *{m['version']}*: {icon} "
                f"{m['status'].replace('_', ' ')}" + (f"  ({steps})" if steps else ""))
        own = solo.get(m["id"])
        if own is not None:
            line += (f"\n      :leftwards_arrow_with_hook: {m['service']} was rolled back on its own to {own['version']} "
                     f"by {requester_text(own)} (#{own['id']}, {own['status'].replace('_', ' ')})")
        lines.append(line)
    return lines


def release_blue_kept(rt: Runtime, d: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The members whose previous version is still kept, when every member that is live with this
    release still has one (so the release can flip back in one click); else None."""
    members = [m for m in rows.members(rt.store, d) if m["status"] == "succeeded"]
    if not members or any(m["blue_retired"] or not m["blue_version"] for m in members):
        return None
    return members


def render_release_card(rt: Runtime, d: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    icon = STATUS_ICON.get(d["status"], "")
    undo = rows.undoes_rollback(rt.store, d)  # a rollback of the rollback: the release's versions again
    kind = "Undo of release rollback" if undo else "Rollback of release" if d["kind"] == "rollback" else "Release"
    title = f"{kind} #{d['id']}: {d['service']} ({d['env']})"
    blocks: list[Any] = [header(title[:150])]
    done = "rollback undone" if undo else "rolled back"
    status_text = done if d["status"] == "succeeded" and d["kind"] == "rollback" else d["status"].replace("_", " ")
    lines = [f"{icon} *{status_text.capitalize()}*" + (f": {d['outcome']}" if d["outcome"] else "")]
    lines.append(f"Requested by {requester_text(d)}")
    approvers = rows.approvers(rt.store, d["id"])
    if d["approvals_needed"] or approvers:
        who = ", ".join(f"<@{u}>" for u in approvers) or "none yet"
        lines.append(f"Approvals: {len(approvers)} of {d['approvals_needed']} ({who})")
    if d["canary"]:
        lines.append(f"Canary (every member): {' → '.join(f'{p}%' for p in d['canary'])} → 100%")
    blocks.append(section("\n".join(lines)))
    blocks.append(section("*Members* (start and switch order):\n" + "\n".join(release_lines(rt, d))))
    wl = window_line(rt, d)
    if wl:
        blocks.append(section(wl))
    if d["now_reason"] and d["status"] in ("pending", "approved", "queued", "running"):
        blocks.append(section(f":rotating_light: *EMERGENCY OVERRIDE (--now):* {escape_mrkdwn(d['now_reason'])}"))
    for m in d["members"] or []:
        svc = rt.cfg.services.get(m["service"])
        applies = bool(svc and getattr(getattr(svc, svc.platform, None), "migrate", None))
        mig = migration_lines({"lint": m["lint"], "contract": d["contract"]}, applies)
        if mig:
            blocks.append(section(f"*{m['service']}* " + mig[0][0].lower() + mig[0][1:] + "\n" + "\n".join(mig[1:])))
    steps = step_lines(rt, d["id"])
    if steps:
        blocks.append(context("Release:  " + "  ·  ".join(steps)))
    buttons = []
    value = button_value(d)
    if d["status"] == "pending":
        buttons += [button("Approve", "deploy_approve", value, style="primary"), button("Reject", "deploy_reject", value, style="danger")]
    if d["status"] in ("pending", "approved", "queued"):
        buttons.append(button("Cancel", "deploy_cancel", value))
    if d["status"] == "running" and d["kind"] == "release":
        buttons.append(button("Stop", "deploy_stop", value, style="danger", confirm=confirm(
            "Stop this release?", "Every member goes back to the version it ran and every green is stopped.",
            "Stop it", "Keep going")))
    kept = release_blue_kept(rt, d) if d["status"] == "succeeded" else None
    if kept and d["kind"] == "rollback" and not undo:
        # An undo is a rollback of the rollback: every member back to what the release put there.
        back = ", ".join(f"{m['service']} {m['blue_version']}" for m in reversed(kept))
        buttons.append(button("Undo rollback", "rollback_card", value, style="danger", confirm=confirm(
            "Undo this rollback?", f"Every member returns to the version it ran before the rollback ({back}), "
            "in the release's order, flipped together.", "Undo rollback", style="danger")))
    elif kept:
        buttons.append(button("Roll back", "rollback_card", value, style="danger", confirm=confirm(
            "Roll back every member?", "Every member returns to the version it ran before, in reverse order, "
            "flipped together.", "Roll back", style="danger")))
        until = min(m["blue_retire_at"] for m in kept if m["blue_retire_at"]) if any(m["blue_retire_at"] for m in kept) else None
        if until:
            blocks.append(context(f"The previous versions are kept for rollback until {viewer_time(until)} (`keep_blue`)."))
    if buttons:
        blocks.append(actions(f"deploy-{d['id']}", *buttons))
    blocks.append(divider())
    return f"{icon} {title}: {status_text}", render(blocks)


def release_rollback_preview(plan: Any) -> dict[str, Any]:
    live = plan.live
    moves = "\n".join(f"• *{m['service']}* {m['version']} → *{m['previous_version']}*" for m in plan.back)
    skipped = "".join(f"\n• {s}: left as it is" for s in plan.skipped)
    undo = live["kind"] == "rollback" and not plan.live_undone
    title = (f":warning: *Undo rollback #{live['id']}* of release {plan.name} in {plan.env}, in the release's order:" if undo
             else f"*Roll back release {plan.name} in {plan.env}* (#{live['id']}), in reverse order:")
    label = "Undo rollback" if undo else "Roll back"
    how = ("Every previous version is still running: the members flip back together, in one click." if plan.fast else
           f"The previous version of {', '.join(plan.retired)} was retired (`keep_blue`), so every member's previous "
           f"version is redeployed blue-green through the release pipeline (a few seconds to minutes), in reverse order.")
    blocks = [section(f"{title}\n{moves}{skipped}\n{how}"),
              actions(f"rollback-{live['id']}", button(label, "rollback_start", button_value(live), style="danger",
                                                      confirm=confirm(f"{label} release {plan.name}?",
                                                                      "Every member listed returns to its previous version.",
                                                                      label, style="danger")))]
    return {"response_type": "ephemeral", "text": f"{label}: release {plan.name}?", "blocks": render(blocks)}
