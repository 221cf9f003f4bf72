"""Start-up reconciliation: a bot killed in the middle of a deploy or rollback finishes it safely.

For every deploy stored as `running`, the platform's real state decides:
- traffic already 100% on green, and green healthy, and the switch was reached: the deploy stands
  (marked succeeded, blue kept as usual);
- anything else (green starting, migrating, half-routed during a canary, unhealthy): traffic goes
  100% back to blue if blue is alive and healthy, green is stopped, the deploy is marked failed;
- a rollback that was interrupted: traffic ends on the rollback's target if it is healthy.
The thread always says what recovery found and did. No deploy runs twice: a recovered deploy is
never restarted, and queued deploys are re-armed separately (Deployer.rearm).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from commands.deploys import move
from platforms.base import PlatformError, other_slot
from storage import audit
from storage import deploys as rows

if TYPE_CHECKING:
    from commands.deploys import Deployer

log = logging.getLogger("recess.recovery")


def recover_all(d: Deployer) -> list[tuple[int, str]]:
    """Reconciles every running deploy; returns (deploy id, what was done) for each."""
    done = []
    for row in rows.with_status(d.store, "running"):
        t = time.monotonic()
        try:
            what = recover(d, row)
        except Exception as exc:  # never stop start-up: say it loudly, and free the service
            log.exception("recovery of deploy %s failed", row["id"])
            what = f"recovery failed: {exc}; check the service by hand"
            move(d.store, row["id"], "running", "failed", finished_at=d.clock(), outcome=what[:500])
            d.notify.update_card(row["id"])
            d.notify.thread(row["id"], f":rotating_light: {what}", broadcast=True)
        log.info("recovered deploy %s in %.3f s: %s", row["id"], time.monotonic() - t, what)
        done.append((row["id"], what))
    return done


def _last_step(d: Deployer, deploy_id: int) -> str | None:
    steps = rows.steps(d.store, deploy_id)
    return steps[-1]["name"] if steps else None


def recover(d: Deployer, row: dict[str, Any]) -> str:
    platform = d.platform_for(row["service"], row["env"])
    step = _last_step(d, row["id"]) or "start"
    blue, green = row["blue_slot"], row["green_slot"]
    now = d.clock()
    for s in rows.steps(d.store, row["id"]):
        if s["status"] == "running":
            rows.finish_step(d.store, s["id"], "failed", "interrupted: the bot stopped during this step")
    if green is None:  # killed before the pipeline chose slots: nothing was touched
        move(d.store, row["id"], "running", "failed", finished_at=now, outcome="the bot restarted before the deploy began; nothing was changed")
        _tell(d, row, "the bot restarted before the deploy began; nothing was changed. Request it again when ready.")
        return "nothing to undo"
    try:
        traffic = platform.status()
    except PlatformError as exc:
        move(d.store, row["id"], "running", "failed", finished_at=now, outcome=f"recovery could not read the platform: {exc}")
        _tell(d, row, f"the bot restarted during *{step}* and could not read the platform ({exc}); check the service by hand.")
        return "platform unreadable"
    w = traffic.weights
    green_state = traffic.slot(green)
    on_green = w.get(green, 0) > 0 and w.get(other_slot(green), 0) == 0 and green_state.version == row["version"]
    green_healthy = green_state.running and platform.health(green).ok
    reached_switch = step in ("shift", "bake")

    bake = d.cfg.environments[row["env"]].bake_time.total_seconds()
    if on_green and green_healthy and step == "bake" and row["kind"] == "deploy" and bake > 0:
        from commands.pipeline import Pipeline

        audit.record(d.store, actor="recess", command="recovery", action="deploy.recovered", target=f"deploy:{row['id']}",
                     after={"result": "bake resumed", "step": step})
        _tell(d, row, f"the bot restarted during *bake*. Traffic is 100% on {row['version']} and green is healthy; "
                      f"watching it again for the bake time before the deploy is called done.")
        d.run_async(lambda: Pipeline(d, row["id"]).resume_bake())
        return "bake resumed"

    if on_green and green_healthy and (reached_switch or row["kind"] == "rollback"):
        env = d.cfg.environments[row["env"]]
        retire_at = now + env.keep_blue
        move(d.store, row["id"], "running", "succeeded", finished_at=now, traffic_at=row["traffic_at"] or now,
                        blue_retire_at=retire_at, outcome=f"{row['version']} live (finished by recovery after a restart)")
        if row["kind"] == "rollback" and row["rollback_of"]:
            move(d.store, row["rollback_of"], "succeeded", "rolled_back", outcome=f"rolled back to {row['version']}")
        d.store.execute("UPDATE deploys SET blue_retired = 1 WHERE service = ? AND env = ? AND id < ? AND blue_retired = 0",
                        (row["service"], row["env"], row["id"]))
        d.arm(f"retire-{row['id']}", retire_at, d.retire_due)
        audit.record(d.store, actor="recess", command="recovery", action="deploy.recovered", target=f"deploy:{row['id']}",
                     after={"result": "succeeded", "step": step})
        _tell(d, row, f"the bot restarted during *{step}*. Traffic was already 100% on {row['version']} and green is healthy, "
                      f"so the deploy stands.")
        return "finished: traffic on green"

    if row["kind"] == "rollback" and not on_green and not rows.steps(d.store, row["id"]):
        # Killed before the flip: nothing moved. Keep serving what serves; the kept version stays up.
        serving = blue if blue and traffic.slot(blue).running else traffic.serving
        if serving and traffic.split:
            platform.shift({serving: 100, other_slot(serving): 0})
        move(d.store, row["id"], "running", "failed", finished_at=now,
                        outcome="the bot restarted before the rollback flipped traffic; nothing changed")
        _tell(d, row, f"the bot restarted before the rollback to {row['version']} flipped traffic; nothing changed. "
                      f"Click Roll back again if it is still needed.")
        return "rollback not started"

    # Otherwise blue wins, if it can serve.
    blue_state = traffic.slot(blue) if blue else None
    blue_ok = bool(blue and blue_state and blue_state.running and platform.health(blue).ok)
    if blue_ok:
        platform.shift({blue: 100, green: 0})
        platform.drain(green, timeout=5)
        platform.stop(green)
        outcome = f"bot restarted during {step}; rolled back to {row['blue_version']}"
        move(d.store, row["id"], "running", "failed", finished_at=now, outcome=outcome)
        audit.record(d.store, actor="recess", command="recovery", action="deploy.recovered", target=f"deploy:{row['id']}",
                     after={"result": "rolled back", "step": step})
        _tell(d, row, f"the bot restarted during *{step}*. Traffic is 100% on blue ({row['blue_version']}) and green was stopped; "
                      f"the deploy of {row['version']} did not happen. Request it again when ready.")
        return "rolled back to blue"
    if green_healthy and green_state.version == row["version"] and reached_switch:
        # Blue is gone (or this was the first deploy): the only healthy slot takes the traffic.
        platform.shift({green: 100, other_slot(green): 0})
        move(d.store, row["id"], "running", "succeeded", finished_at=now, traffic_at=now,
                        blue_retire_at=now, outcome=f"{row['version']} live (blue was not healthy after a restart)")
        _tell(d, row, f"the bot restarted during *{step}*. Blue was not healthy, green ({row['version']}) is: traffic is 100% on green.")
        return "finished: only green healthy"
    platform.shift({"blue": 0, "green": 0})
    platform.drain(green, timeout=5)
    platform.stop(green)
    move(d.store, row["id"], "running", "failed", finished_at=now, outcome=f"bot restarted during {step}; no healthy slot")
    _tell(d, row, f"the bot restarted during *{step}* and no slot is healthy: nothing serves. This needs a person now.")
    return "no healthy slot"


def _tell(d: Deployer, row: dict[str, Any], text: str) -> None:
    d.notify.update_card(row["id"])
    d.notify.thread(row["id"], f":recycle: Recovery: {text}", broadcast=True)
