"""Rollback: one router call back to the kept version while it lives, else a redeploy of it.

A rollback is stored as a deploy row of kind 'rollback' that shares the card and thread of the
deploy it undoes. While blue is alive: health-check it once, flip traffic in one call through the
TrafficDoor (which checks again, under the service's lock, that blue still runs the version and is
healthy), keep the undone version in the other slot until `keep_blue` (so the rollback itself can
be undone the same way). After blue was retired: the previous good version goes through the
normal pipeline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from commands.deploys import DeployError, HeldError, new_click_token
from commands.pipeline import hands_over
from commands.states import crash_point, move, requester_text
from commands.traffic import TrafficRefused
from platforms.base import PlatformError, other_slot
from storage import audit
from storage import deploys as rows

if TYPE_CHECKING:
    from commands.deploys import Deployer


@dataclass(frozen=True)
class RollbackPlan:
    live: dict[str, Any]
    current: str
    target: str
    blue_alive: bool
    blue_slot: str | None
    retire_at: Any


def baking(d: dict[str, Any]) -> bool:
    """A deploy whose traffic already moved to green, while the bake watch still runs (a
    release's member is not: its release bakes, and Stop on the release's card ends it)."""
    return (d["kind"] == "deploy" and d["status"] == "running" and d["traffic_at"] is not None and bool(d["blue_slot"])
            and not rows.is_member(d))


def plan(d: Deployer, service: str, env: str | None, actor: str, *, check_platform: bool = True) -> RollbackPlan:
    """What a rollback would do. Without `check_platform` (the preview, answered before Slack's
    3 s deadline) blue's life comes from the store; the click always asks the platform."""
    service, env = d.target(service, env)
    decision = d.policy.can_rollback(actor, env)
    if not decision:
        raise DeployError(decision.reason)
    held = rows.holder(d.store, service, env)
    if held and rows.is_member(held):
        raise HeldError(f"{service} in {env} is held by release #{held['release_id']} (now at {held['version']}): "
                        f"an approver can press Stop on the release's card, which returns every member to blue.",
                        rows.get(d.store, held["release_id"]) or held)
    if held and baking(held):
        live = held  # traffic already moved and the bake watch runs: a person may undo it right now
    elif held:
        extra = (" An approver can press Stop on its card, which returns traffic to blue." if held["status"] == "running"
                 else " Its thread says what recess saw and what to do.")
        raise HeldError(f"{service} in {env} is held by deploy #{held['id']} ({held['version']}, "
                        f"{held['status'].replace('_', ' ')}) requested by {requester_text(held)}.{extra}", held)
    else:
        live = rows.live(d.store, service, env)
    if live is None or not live["previous_version"]:
        raise DeployError(f"{service} in {env} has no previous good version to roll back to")
    blue_alive = False
    slot = live["blue_slot"]
    if slot and not live["blue_retired"] and not check_platform:
        blue_alive = True
    elif slot and not live["blue_retired"]:
        try:
            state = d.platform_for(service, env).status().slot(slot)
            blue_alive = state.running and state.version == live["previous_version"]
        except PlatformError:
            blue_alive = False
    return RollbackPlan(live, live["version"], live["previous_version"], blue_alive, slot, live["blue_retire_at"])


def rollback(d: Deployer, live_id: int, actor: str, *, clicked_at: float | None = None, card_ts: str | None = None,
             requested_by: str | None = None, reason: str | None = None,
             command: str = "/rollback") -> dict[str, Any]:
    """Acts on a "Roll back" click (or a REST API call) for the deploy `live_id`. Returns the
    rollback row. `requested_by` and `reason` are what a CI job says about it."""
    clicked_at = clicked_at or time.monotonic()
    live = rows.get(d.store, live_id)
    if live is None:
        raise DeployError(f"deploy #{live_id} does not exist")
    if rows.is_release(live):
        from commands import releases

        return releases.rollback(d, live_id, actor, clicked_at=clicked_at, requested_by=requested_by, reason=reason,
                                 command=command)
    p = plan(d, live["service"], live["env"], actor)
    if p.live["id"] != live_id:
        raise DeployError(f"this card is stale: deploy #{p.live['id']} ({p.current}) is live now; use `/rollback {live['service']}`")
    if baking(p.live) and not p.blue_alive:
        raise DeployError(f"{p.target} is no longer running next to {p.current}, so it cannot be flipped back during the bake; "
                          f"the bake watch still rolls back on its own if {p.current} fails")
    with d.store.transaction():
        if rows.others_active(d.store, live["service"], live["env"], live_id, rows.HOLDING):
            raise DeployError("a rollback or deploy of this service already started")
        again = rows.get(d.store, live_id)
        still_live = again["status"] == "running" if baking(live) else (rows.live(d.store, live["service"], live["env"]) or {}).get("id") == live_id
        if not still_live:
            raise DeployError(f"deploy #{live_id} was already rolled back or replaced; nothing was changed")
        # The slots are recorded before anything moves, so recovery after a crash in the middle of
        # the flip knows which slot the rollback was sending traffic to.
        serving = other_slot(p.blue_slot) if p.blue_slot else None
        rb_id = rows.insert(
            d.store, kind="rollback", service=live["service"], env=live["env"], version=p.target,
            previous_version=p.current, requester=actor, status="running", rollback_of=live_id,
            channel=live["channel"], card_ts=live["card_ts"], started_at=d.clock(), approvals_needed=0,
            click_token=live["click_token"] or new_click_token(),
            blue_slot=serving if p.blue_alive else None, green_slot=p.blue_slot if p.blue_alive else None,
            blue_version=p.current if p.blue_alive else None, requested_by=requested_by,
            release_id=live.get("release_id"),  # a member rolled back on its own: said on the release's card
        )
        d.running_here.add(rb_id)  # this click (or the pipeline it starts) drives it: the watchdog leaves it alone
        audit.record(d.store, actor=actor, command=command, action="rollback.start", target=f"deploy:{live_id}",
                     before={"version": p.current}, after={"version": p.target, "fast": p.blue_alive,
                                                           **({"reason": reason} if reason else {})})
    if p.blue_alive:
        try:
            fast_flip(d, rb_id, live, p, clicked_at)
        except Exception as exc:  # the platform failed us: free the service and say so
            move(d.store, rb_id, "running", "failed", finished_at=d.clock(), outcome=f"platform: {exc}"[:500])
            d.notify.thread(live_id, f":red_circle: Rollback failed: {exc}. Check the traffic by hand.", broadcast=True)
            raise DeployError(f"the rollback failed: {exc}") from exc
        finally:
            if rows.get(d.store, rb_id)["status"] != "running":  # else handed to the pipeline, which holds it
                d.running_here.discard(rb_id)
    else:
        d.notify.thread(live_id, f":leftwards_arrow_with_hook: {requester_text({'requester': actor, 'requested_by': requested_by})} is rolling back to {p.target}; blue was retired, "
                                 f"so {p.target} is redeployed through the pipeline.", broadcast=True)
        d.run_async(lambda: d.run_pipeline(rb_id))
    return rows.get(d.store, rb_id)


def fast_flip(d: Deployer, rb_id: int, live: dict[str, Any], p: RollbackPlan, clicked_at: float) -> None:
    blue = p.blue_slot
    green = other_slot(blue)
    try:
        # One health probe of blue, inside the door's lock, right before the flip.
        flip = d.traffic.route(live["service"], live["env"], to=blue, version=p.target, owner=rb_id).router_seconds
        crash_point("rollback", "after")
    except TrafficRefused as exc:
        if exc.kind == "unhealthy" and baking(live):
            move(d.store, rb_id, "running", "failed", finished_at=d.clock(), outcome="blue failed its health check")
            d.notify.thread(live["id"], f":warning: Blue ({p.target}) failed its health check ({exc}); "
                                        f"traffic stays on {p.current} while the bake watch runs.", broadcast=True)
            return
        if exc.kind == "unhealthy":
            d.notify.thread(live["id"], f":warning: Blue ({p.target}) failed its health check ({exc}); "
                                        f"redeploying {p.target} through the pipeline instead.", broadcast=True)
            d.running_here.add(rb_id)
            d.run_async(lambda: d.run_pipeline(rb_id))
            return
        move(d.store, rb_id, "running", "failed", finished_at=d.clock(), outcome=f"refused: {exc}"[:500])
        d.notify.thread(live["id"], f":red_circle: Rollback refused: {exc}. Traffic is unchanged.", broadcast=True)
        return
    except PlatformError as exc:
        move(d.store, rb_id, "running", "failed", finished_at=d.clock(), outcome=f"router: {exc}"[:500])
        d.notify.thread(live["id"], f":red_circle: Rollback failed: the router refused the flip ({exc}). Traffic is unchanged.", broadcast=True)
        return
    since_click = time.monotonic() - clicked_at
    now = d.clock()
    env = d.cfg.environments[live["env"]]
    outcome = f"traffic back on {p.target} in {flip * 1000:.1f} ms, {since_click:.2f} s after the click"
    if hands_over(d.platform_for(live["service"], live["env"])):  # Railway: a redeploy of the retained image
        outcome = (f"{p.target} answers on {d.cfg.services[live['service']].railway.public_url} again "
                   f"{since_click:.0f} s after the click (Railway redeployed its retained deployment)")
    with d.store.transaction():
        move(d.store, live["id"], ("succeeded", "running"), "rolled_back", outcome=f"rolled back to {p.target} by {requester_text(rows.get(d.store, rb_id))}",
                        finished_at=live["finished_at"] or now)
        move(d.store, rb_id, "running", "succeeded", finished_at=now, traffic_at=now, outcome=outcome,
                        blue_slot=green, green_slot=blue, blue_version=p.current, blue_retire_at=now + env.keep_blue)
        d.store.execute("UPDATE deploys SET blue_retired = 1 WHERE id = ?", (live["id"],))
        audit.record(d.store, actor="recess", command="/rollback", action="rollback.done", target=f"deploy:{live['id']}",
                     before={"version": p.current}, after={"version": p.target, "flip_ms": round(flip * 1000, 2),
                                                           "click_to_traffic_s": round(since_click, 3)})
    d.arm(f"retire-{rb_id}", now + env.keep_blue, d.retire_due)
    d.notify.update_card(rb_id)
    d.notify.thread(rb_id, f":leftwards_arrow_with_hook: Rolled back: {outcome}. {p.current} stays in slot {green} "
                           f"until {now + env.keep_blue:%H:%M} UTC, so this can be undone the same way.", broadcast=True)
