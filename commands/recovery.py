"""Recovery: a deploy that no one drives any more (the bot was killed, a pipeline thread died) is
brought to one healthy slot, or handed to a person. It never guesses.

For every deploy stored as `running` that no pipeline of this process drives, the platform's
real state decides, read through the TrafficDoor after the router watchdog had its chance to
revive a dead HAProxy, and with several health probes (3 over 5 s) before a slot counts as dead:
- traffic already 100% on green, green healthy, and the switch was reached: the deploy stands
  (marked succeeded, blue kept as usual), or its bake is watched again;
- otherwise, when blue runs its version and is healthy: traffic 100% back on blue, green stopped,
  the deploy failed;
- a rollback that had not flipped yet: nothing changes;
- when blue cannot serve but green, past the switch, is healthy: green keeps the traffic;
- anything else (the router does not answer, no slot proves healthy): the router is left exactly
  as it is and the deploy becomes `needs_attention`, with what recovery saw and what to run, in
  the thread and the channel.
No deploy runs twice: a recovered deploy is never restarted, and queued deploys are re-armed
separately (Deployer.rearm). `resolve_attention` closes a `needs_attention` deploy once one
healthy slot serves everything again.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from commands.pipeline import end_attention, hands_over
from commands.states import ATTENTION, move
from commands.traffic import NeedsAttention, TrafficRefused
from platforms.base import PlatformError, Traffic, format_weights, other_slot
from storage import audit
from storage import deploys as rows

if TYPE_CHECKING:
    from commands.deploys import Deployer

log = logging.getLogger("recess.recovery")

# What recover() returns when it handed the deploy to a pipeline thread, which now drives it.
HANDED_OFF = ("bake resumed", "resumed after Railway's hand-over")


def recover_all(d: Deployer) -> list[tuple[int, str]]:
    """Reconciles every running deploy that no pipeline of this process drives."""
    done = []
    from commands.releases import recover_release

    for row in rows.with_status(d.store, "running"):
        if row["id"] in d.running_here:
            continue
        row = rows.get(d.store, row["id"]) or row
        if row["status"] != "running":
            continue  # ended meanwhile: by the recovery of its release, or by its own pipeline
        if rows.is_member(row) and (rows.get(d.store, row["release_id"]) or {}).get("status") in rows.HOLDING:
            continue  # a release's members are recovered together, through the release
        t = time.monotonic()
        try:
            what = recover_release(d, row) if rows.is_release(row) else recover(d, row)
        except Exception as exc:  # never stop start-up: say it loudly, leave traffic alone
            log.exception("recovery of deploy %s failed", row["id"])
            what = f"recovery failed: {type(exc).__name__}: {exc}"
            try:
                end_attention(d, row, what, who="recovery of ")
            except Exception:
                log.exception("deploy %s: could not even mark it as needing attention", row["id"])
        log.info("recovered deploy %s in %.3f s: %s", row["id"], time.monotonic() - t, what)
        done.append((row["id"], what))
    return done


def _last_step(d: Deployer, deploy_id: int) -> str | None:
    steps = rows.steps(d.store, deploy_id)
    return steps[-1]["name"] if steps else None


def read_settled(d: Deployer, service: str, env: str, tries: int = 3) -> Traffic | None:
    """The platform's state once the router answers (the watchdog revives a dead one first);
    None when it still does not after `tries` reads spread over the door's probe span."""
    try:
        d.revive_router(service, env)
    except PlatformError as exc:
        log.warning("%s/%s: the router could not be revived: %s", service, env, exc)
    for i in range(tries):
        try:
            return d.traffic.read(service, env)
        except PlatformError as exc:
            log.warning("%s/%s: recovery cannot read the platform yet: %s", service, env, exc)
        if i < tries - 1:
            d.sleep(d.traffic.probe_span / max(1, tries - 1))
    return None


def recover(d: Deployer, row: dict[str, Any]) -> str:
    service, env = row["service"], row["env"]
    step = _last_step(d, row["id"]) or "start"
    blue, green = row["blue_slot"], row["green_slot"]
    now = d.clock()
    for s in rows.steps(d.store, row["id"]):
        if s["status"] == "running":
            d.persist(lambda s=s: rows.finish_step(d.store, s["id"], "failed", "interrupted: no one was driving this step"))
    if green is None:  # stopped before the pipeline chose slots: nothing was touched
        move(d.store, row["id"], "running", "failed", finished_at=now,
             outcome="the bot restarted before the deploy began; nothing was changed")
        _tell(d, row, "the bot restarted before the deploy began; nothing was changed. Request it again when ready.")
        return "nothing to undo"
    rolling = row.get("_rolling")  # Railway: a rollback deployment found in flight (below)
    if hands_over(d.platform_for(service, env)) and not row.get("_followed"):
        # Railway (commands/railway.py): a deployment still building or deploying is followed to
        # its end first, on a worker thread (start-up does not wait for it); then decided as below.
        # A rollback killed after `deploymentRollback` has its new deployment found from Railway first.
        from commands.railway import follow_in_progress, in_progress, rollback_in_flight

        rolling = rollback_in_flight(d, row)
        row = {**row, "_rolling": rolling}
        if in_progress(d, row):
            d.running_here.add(row["id"])

            def follow_then_decide() -> None:
                what = "not decided"
                try:
                    follow_in_progress(d, row)
                    what = recover(d, {**row, "_followed": True})
                except Exception as exc:
                    log.exception("deploy %s: recovery after following Railway failed", row["id"])
                    end_attention(d, row, f"recovery failed: {type(exc).__name__}: {exc}", who="recovery of ")
                finally:
                    if what not in HANDED_OFF:
                        d.running_here.discard(row["id"])

            d.run_async(follow_then_decide)
            return "following Railway's deployment"
    traffic = read_settled(d, service, env)
    if traffic is None:
        end_attention(d, row, f"recovery found the router of {service} in {env} not answering during *{step}*",
                      who="recovery of ")
        return "needs attention: router down"
    platform = d.platform_for(service, env)
    w = traffic.weights
    green_state = traffic.slot(green)
    green_is_new = green_state.running and green_state.version == row["version"]
    on_green = w.get(green, 0) == 100 and w.get(other_slot(green), 0) == 0 and green_is_new
    green_healthy = green_is_new and d.traffic.probe(platform, green, probes=d.traffic.probes).ok
    reached_switch = step in ("shift", "bake")
    saw = f"weights {format_weights(w)}; {green} runs {green_state.version or 'nothing'}"

    if rolling:  # Railway (commands/railway.py): Railway was rolling back when the bot died
        from commands.railway import decide_rollback

        return decide_rollback(d, row, rolling, on_green and green_healthy)

    if hands_over(platform) and on_green and green_healthy and row["kind"] == "deploy" and not reached_switch:
        # Railway handed over on its own while no one watched: smoke, shift's check and bake still run.
        from commands.pipeline import Pipeline

        d.persist(lambda: audit.record(d.store, actor="recess", command="recovery", action="deploy.recovered",
                                       target=f"deploy:{row['id']}", after={"result": "resumed after hand-over", "step": step}))
        _tell(d, row, f"the bot restarted during *{step}*. Railway finished the deployment of {row['version']} and moved "
                      f"traffic to it after its healthcheck; running the steps after the hand-over (smoke, bake).")
        d.running_here.add(row["id"])
        d.run_async(lambda: Pipeline(d, row["id"]).resume_after_hand_over())
        return "resumed after Railway's hand-over"

    bake = d.cfg.environments[env].bake_time.total_seconds()
    if on_green and green_healthy and step == "bake" and row["kind"] == "deploy" and bake > 0:
        from commands.pipeline import Pipeline

        d.persist(lambda: audit.record(d.store, actor="recess", command="recovery", action="deploy.recovered",
                                       target=f"deploy:{row['id']}", after={"result": "bake resumed", "step": step}))
        _tell(d, row, f"the bot restarted during *bake*. Traffic is 100% on {row['version']} and green is healthy; "
                      f"watching it again for the bake time before the deploy is called done.")
        d.running_here.add(row["id"])
        d.run_async(lambda: Pipeline(d, row["id"]).resume_bake())
        return "bake resumed"

    if on_green and green_healthy and (reached_switch or row["kind"] == "rollback"):
        _stands(d, row, now, step)
        _tell(d, row, f"the bot restarted during *{step}*. Traffic was already 100% on {row['version']} and green is "
                      f"healthy, so the deploy stands.")
        return "finished: traffic on green"

    if row["kind"] == "rollback" and not on_green and not rows.steps(d.store, row["id"]):
        # Stopped before the flip: nothing moved. Keep serving what serves; the kept version stays up.
        note = ""
        serving = traffic.serving
        if serving and traffic.split:
            try:
                d.traffic.route(service, env, to=serving, version=traffic.slot(serving).version or "", owner=row["id"],
                                probes=d.traffic.probes)
            except PlatformError as exc:
                note = f" (the split {format_weights(w)} stays: {exc})"
        move(d.store, row["id"], "running", "failed", finished_at=now,
             outcome="the bot restarted before the rollback flipped traffic; nothing changed")
        _tell(d, row, f"the bot restarted before the rollback to {row['version']} flipped traffic; nothing changed{note}. "
                      f"Click Roll back again if it is still needed.")
        return "rollback not started"

    # Otherwise blue wins, if it can serve.
    blue_state = traffic.slot(blue) if blue else None
    blue_ok = bool(blue and blue_state and blue_state.running and blue_state.version == row["blue_version"]
                   and d.traffic.probe(platform, blue, probes=d.traffic.probes).ok)
    if blue_ok:
        try:
            restored = d.traffic.back_to(service, env, blue=blue, blue_version=row["blue_version"], green=green,
                                         green_version=row["version"], owner=row["id"])
        except (NeedsAttention, TrafficRefused) as exc:
            end_attention(d, row, f"recovery during *{step}* could not return traffic to blue: {exc}", who="recovery of ")
            return "needs attention: blue refused"
        outcome = f"bot restarted during {step}; rolled back to {row['blue_version']}"
        move(d.store, row["id"], "running", "failed", finished_at=now, outcome=outcome)
        d.persist(lambda: audit.record(d.store, actor="recess", command="recovery", action="deploy.recovered",
                                       target=f"deploy:{row['id']}", after={"result": "rolled back", "step": step}))
        _tell(d, row, f"the bot restarted during *{step}*. {restored.text[:1].upper() + restored.text[1:]}; "
                      f"the deploy of {row['version']} did not happen. Request it again when ready.")
        return "rolled back to blue"
    if green_healthy and reached_switch:
        # Blue cannot serve (or this was the first deploy): the healthy green keeps or takes the traffic.
        try:
            d.traffic.route(service, env, to=green, version=row["version"], owner=row["id"], probes=d.traffic.probes)
        except PlatformError as exc:
            end_attention(d, row, f"recovery during *{step}*: blue cannot serve and green refused the traffic ({exc})",
                          who="recovery of ")
            return "needs attention: green refused"
        move(d.store, row["id"], "running", "succeeded", finished_at=now, traffic_at=row["traffic_at"] or now,
             blue_retire_at=now, outcome=f"{row['version']} live (blue was not healthy after a restart)")
        _tell(d, row, f"the bot restarted during *{step}*. Blue was not healthy, green ({row['version']}) is: "
                      f"traffic is 100% on green.")
        return "finished: only green healthy"
    if w.get(green, 0) == 0 and traffic.serving is None and blue is None:
        # A first deploy stopped before its switch: nothing served before, nothing serves now.
        try:
            d.traffic.stop(service, env, green, row["version"], owner=row["id"], drain_timeout=0)
        except PlatformError as exc:
            log.warning("deploy %s: green not stopped: %s", row["id"], exc)
        move(d.store, row["id"], "running", "failed", finished_at=now,
             outcome=f"bot restarted during {step} of a first deploy; nothing serves, as before")
        _tell(d, row, f"the bot restarted during *{step}* of the first deploy; green was stopped and nothing serves, "
                      f"as before. Request it again when ready.")
        return "first deploy undone"
    end_attention(d, row, f"recovery after a restart during *{step}* found no slot that proves healthy ({saw}; "
                          f"blue {'runs ' + str(blue_state.version) if blue_state and blue_state.running else 'runs nothing'})",
                  who="recovery of ")
    return "needs attention: no healthy slot"


def _stands(d: Deployer, row: dict[str, Any], now: Any, step: str) -> None:
    env = d.cfg.environments[row["env"]]
    retire_at = now + env.keep_blue
    move(d.store, row["id"], "running", "succeeded", finished_at=now, traffic_at=row["traffic_at"] or now,
         blue_retire_at=retire_at, outcome=f"{row['version']} live (finished by recovery after a restart)")
    if row["kind"] == "rollback" and row["rollback_of"]:
        move(d.store, row["rollback_of"], "succeeded", "rolled_back", outcome=f"rolled back to {row['version']}")
    d.persist(lambda: d.store.execute(
        "UPDATE deploys SET blue_retired = 1 WHERE service = ? AND env = ? AND id < ? AND blue_retired = 0",
        (row["service"], row["env"], row["id"])))
    d.arm(f"retire-{row['id']}", retire_at, d.retire_due)
    d.persist(lambda: audit.record(d.store, actor="recess", command="recovery", action="deploy.recovered",
                                   target=f"deploy:{row['id']}", after={"result": "succeeded", "step": step}))


def resolve_attention(d: Deployer, row: dict[str, Any]) -> str | None:
    """Closes a `needs_attention` deploy once the router answers and one healthy slot takes all
    the traffic: succeeded when that slot runs the deploy's version, failed otherwise. Never
    moves traffic itself."""
    try:
        traffic = d.traffic.read(row["service"], row["env"])
    except PlatformError:
        return None
    serving = traffic.serving
    if serving is None or traffic.split:
        return None
    state = traffic.slot(serving)
    platform = d.platform_for(row["service"], row["env"])
    if not state.running:
        return None
    for i in range(d.traffic.probes):  # healthy at every probe, not just once: a person may be mid-fix
        if not platform.health(serving).ok:
            return None
        if i < d.traffic.probes - 1:
            d.sleep(d.traffic.probe_span / max(1, d.traffic.probes - 1))
    now = d.clock()
    if state.version == row["version"]:
        ok = move(d.store, row["id"], ATTENTION, "succeeded", finished_at=now, traffic_at=row["traffic_at"] or now,
                  blue_retire_at=now, blue_retired=1, outcome=f"{row['version']} live (resolved after needing attention)")
        text = f"{row['version']} serves 100% and is healthy: deploy #{row['id']} is closed as live."
    else:
        ok = move(d.store, row["id"], ATTENTION, "failed", finished_at=now,
                  outcome=f"resolved after needing attention: {state.version} serves")
        text = f"{state.version} serves 100% and is healthy: deploy #{row['id']} of {row['version']} is closed as failed."
    if not ok:
        return None
    d.persist(lambda: audit.record(d.store, actor="recess", command="watchdog", action="deploy.resolved",
                                   target=f"deploy:{row['id']}", after={"serving": state.version}))
    d.notify.update_card(row["id"])
    d.notify.thread(row["id"], f":white_check_mark: Resolved: {text} The service is free for deploys again.", broadcast=True)
    return text


def _tell(d: Deployer, row: dict[str, Any], text: str) -> None:
    d.notify.update_card(row["id"])
    d.notify.thread(row["id"], f":recycle: Recovery: {text}", broadcast=True)
