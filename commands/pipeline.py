"""The blue-green pipeline: a persisted state machine, one `steps` row per step.

start_green -> migrate -> health -> smoke -> shift (canary steps) -> bake -> done, then blue is
retired after `keep_blue`. Every step is stored before and after it runs, posts a thread reply with
its duration, and updates the card. A failing step aborts: traffic stays on (or returns to) blue,
green is stopped, the card turns red and the requester is mentioned.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from commands.config import format_duration
from commands.deploys import move
from platforms.base import Platform, PlatformError, RouterStats, Traffic, other_slot
from storage import audit
from storage import deploys as rows

if TYPE_CHECKING:
    from commands.deploys import Deployer

log = logging.getLogger("recess.pipeline")

STEPS = ("start_green", "migrate", "health", "smoke", "shift", "bake")
OUTPUT_LIMIT = 1500


class StepFailed(Exception):
    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


class AutoRollback(Exception):
    """The bake watch saw green fail after traffic moved; traffic went back to blue."""


def crash_point(step: str, when: str) -> None:
    """Fault injection for the crash-recovery tests and benchmark: RECESS_CRASH_AT=shift:after
    SIGKILLs this process right after the router flip. Never set in production."""
    target = os.environ.get("RECESS_CRASH_AT")
    if target and target in (f"{step}:{when}", step if when == "during" else None):
        os.kill(os.getpid(), signal.SIGKILL)


def router_time(platform: Platform, call_seconds: float) -> float:
    """How long traffic took to move: the router's own exchange when the driver measures it
    (HAProxy's runtime API), else the whole shift call."""
    exchange = getattr(platform, "last_router_call_seconds", None)
    return exchange if isinstance(exchange, float) and 0 < exchange <= call_seconds else call_seconds


def tail(text: str, limit: int = OUTPUT_LIMIT) -> str:
    text = (text or "").strip()
    return text if len(text) <= limit else "…" + text[-limit:]


def seconds(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.1f} s"


class Pipeline:
    def __init__(self, deployer: Deployer, deploy_id: int) -> None:
        self.d = deployer
        self.store = deployer.store
        self.id = deploy_id
        row = rows.get(self.store, deploy_id)
        assert row is not None
        self.row = row
        self.svc = deployer.cfg.services[row["service"]]
        self.env = deployer.cfg.environments[row["env"]]
        self._platform: Platform | None = None

    @property
    def platform(self) -> Platform:
        if self._platform is None:
            self._platform = self.d.platform_for(self.row["service"], self.row["env"])
        return self._platform

    def say(self, text: str, *, broadcast: bool = False) -> None:
        self.d.notify.thread(self.id, text, broadcast=broadcast)

    # -- running ------------------------------------------------------------------------------

    def run(self) -> None:
        if self.row["status"] != "running":
            return
        t0 = time.monotonic()
        try:
            traffic = self.platform.status()
        except PlatformError as exc:
            self._fail_before_start(f"could not read the platform's state: {exc}", exc.output)
            return
        blue = traffic.serving
        green = other_slot(blue) if blue else "blue"
        rows.update(self.store, self.id, blue_slot=blue, green_slot=green,
                    blue_version=traffic.slot(blue).version if blue else None)
        self.row = rows.get(self.store, self.id)
        r = self.row
        frm = f"{r['previous_version']} → " if r["previous_version"] else ""
        loud = f" :rotating_light: *--now override:* {r['now_reason']}" if r["now_reason"] else ""
        self.say(f":rocket: Deploy #{self.id} started: *{r['service']}* {frm}*{r['version']}* in {r['env']} "
                 f"(green = slot {green}).{loud}", broadcast=True)
        try:
            self.step("start_green", lambda: self.start_green(green, traffic))
            self.step("migrate", lambda: self.migrate(green))
            self.step("health", lambda: self.wait_healthy(green, t0))
            self.step("smoke", lambda: self.smoke(green))
            self.step("shift", lambda: self.shift(blue, green))
            self.step("bake", lambda: self.bake(blue, green))
        except StepFailed as exc:
            self.abort(blue, green, exc)
            return
        except AutoRollback:
            return
        self.finish(time.monotonic() - t0)

    def step(self, name: str, action: Callable[[], str | None]) -> None:
        if rows.get(self.store, self.id)["status"] != "running":
            # Ended elsewhere (a rollback by hand, recovery): leave the slots as that left them.
            raise AutoRollback(f"the deploy was ended before {name}")
        started = time.monotonic()
        step_id = rows.start_step(self.store, self.id, name)
        self.d.notify.update_card(self.id)
        crash_point(name, "during")
        try:
            detail = action() or ""
            crash_point(name, "after")
        except StepFailed as exc:
            rows.finish_step(self.store, step_id, "failed", tail(f"{exc}\n{exc.output}"))
            self.say(f":x: *{name}* failed after {seconds(time.monotonic() - started)}: {exc}")
            raise
        except AutoRollback as exc:
            rows.finish_step(self.store, step_id, "failed", str(exc))
            raise
        except PlatformError as exc:
            rows.finish_step(self.store, step_id, "failed", tail(f"{exc}\n{exc.output}"))
            self.say(f":x: *{name}* failed after {seconds(time.monotonic() - started)}: {exc}")
            raise StepFailed(str(exc), exc.output) from exc
        except Exception as exc:
            log.exception("deploy %s: step %s crashed", self.id, name)
            rows.finish_step(self.store, step_id, "failed", f"{type(exc).__name__}: {exc}")
            self.say(f":x: *{name}* failed: {type(exc).__name__}: {exc}")
            raise StepFailed(f"{type(exc).__name__}: {exc}") from exc
        status = "skipped" if detail.startswith("skipped") else "succeeded"
        rows.finish_step(self.store, step_id, status, detail)
        icon = ":fast_forward:" if status == "skipped" else ":white_check_mark:"
        self.say(f"{icon} *{name}* {seconds(time.monotonic() - started)}{': ' + detail if detail else ''}")

    # -- the steps ----------------------------------------------------------------------------

    def start_green(self, green: str, traffic: Traffic) -> str:
        held = traffic.slot(green)
        if held.running and held.version:
            # The version kept from an earlier deploy gives way: drain it, then replace it.
            self.platform.drain(green, timeout=10)
        self.platform.start(green, self.row["version"])
        return f"{self.row['version']} started in slot {green}"

    def migrate(self, green: str) -> str:
        from commands import migrations as lint

        has_command = getattr(getattr(self.svc, self.svc.platform), "migrate", None)
        if self.row["kind"] == "rollback":
            return "skipped: a rollback returns to a version whose migrations already ran"
        if not has_command:
            return "skipped: no migrate command"
        run = lint.run_migrations(
            lambda env: self.platform.migrate(green, self.row["version"], env), self.svc.migration, sleep=self.d.sleep
        )
        if not run.ok:
            raise StepFailed(run.summary, run.output)
        pending = (self.row.get("lint") or {}).get("pending") or []
        if pending:
            from storage import applied_migrations

            applied_migrations.mark_applied(self.store, self.row["service"], self.row["env"], pending, self.id)
        return run.summary

    def wait_healthy(self, green: str, started: float) -> str:
        deadline = started + self.svc.health_timeout.total_seconds()
        last = None
        polls = 0
        while True:
            polls += 1
            health = self.platform.health(green)
            if health.ok:
                return f"{self.svc.health_path} answered 200 after {polls} poll(s)"
            last = health
            if health.exited:
                raise StepFailed(f"green exited before it was healthy ({health.detail})")
            if time.monotonic() >= deadline:
                status = f"HTTP {last.status}" if last.status else "no answer"
                raise StepFailed(f"{self.svc.health_path} did not answer 200 within {format_duration(self.svc.health_timeout)} (last: {status} {last.detail})")
            self.d.sleep(0.2)

    def smoke(self, green: str) -> str:
        if not self.svc.smoke:
            return "skipped: no smoke command"
        env = {**os.environ, "RECESS_BASE_URL": self.platform.base_url(green), "RECESS_SERVICE": self.row["service"],
               "RECESS_VERSION": self.row["version"], "RECESS_ENV": self.row["env"], "RECESS_SLOT": green}
        try:
            proc = subprocess.run(self.svc.smoke, shell=True, cwd=self.d.cfg.base_dir, env=env, capture_output=True,
                                  text=True, timeout=self.svc.smoke_timeout.total_seconds())
        except subprocess.TimeoutExpired as exc:
            raise StepFailed(f"smoke test ran longer than {format_duration(self.svc.smoke_timeout)}", str(exc.stdout or "")) from None
        if proc.returncode != 0:
            raise StepFailed(f"smoke test exited {proc.returncode}", proc.stdout + proc.stderr)
        return "smoke test passed"

    def shift(self, blue: str | None, green: str) -> str:
        steps = list(self.row.get("canary") or [])
        notes = []
        for pct in steps:
            if blue is None:
                break
            self.platform.shift({blue: 100 - pct, green: pct})
            self.say(f":large_blue_circle: canary: {pct}% of traffic on {self.row['version']}")
            self.d.sleep(self.env.canary_pause.total_seconds())
            health = self.platform.health(green)
            if not health.ok:
                raise StepFailed(f"green failed its health check at {pct}% ({health.detail or health.status})")
            notes.append(f"{pct}%")
        weights = {green: 100, other_slot(green): 0}
        t = time.perf_counter()
        self.platform.shift(weights)
        call = time.perf_counter() - t
        flip = router_time(self.platform, call)
        rows.update(self.store, self.id, traffic_at=self.d.clock())
        audit.record(self.store, actor="recess", command="pipeline", action="traffic.shift", target=f"deploy:{self.id}",
                     before={"slot": blue}, after={"slot": green, "version": self.row["version"]})
        via = f" via {' → '.join(notes)}" if notes else ""
        return f"100% of traffic on {self.row['version']}{via} (router flip {flip * 1000:.1f} ms, shift call {call * 1000:.1f} ms)"

    def bake(self, blue: str | None, green: str) -> str:
        """Watches green after the switch; a failing health check or too many 5xx roll back on their own."""
        bake = self.env.bake_time.total_seconds()
        if bake <= 0:
            return "skipped: bake_time is 0"
        baseline = self._stats(green) or RouterStats()
        deadline = time.monotonic() + bake
        failures = 0
        while time.monotonic() < deadline:
            self.d.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
            if rows.get(self.store, self.id)["status"] != "running":
                raise AutoRollback("rolled back by hand during the bake")
            health = self.platform.health(green)
            failures = 0 if health.ok else failures + 1
            reason = None
            if failures >= 2 or health.exited:
                reason = f"green's health check failed ({health.status or health.detail})"
            else:
                stats = self._stats(green)
                if stats:
                    req = stats.requests - baseline.requests
                    bad = (stats.responses_5xx - baseline.responses_5xx) + (stats.connection_errors - baseline.connection_errors)
                    if req >= 20 and bad / req > self.env.max_5xx_ratio:
                        reason = f"{bad} of {req} requests to green failed ({bad / req:.0%} > {self.env.max_5xx_ratio:.0%})"
            if reason:
                from commands.rollback import auto_rollback

                auto_rollback(self.d, self.id, reason)
                raise AutoRollback(reason)
        return f"green stayed healthy for {format_duration(self.env.bake_time)}"

    def _stats(self, green: str) -> Any:
        try:
            return self.platform.router_stats().get(green)
        except PlatformError:
            return None

    def resume_bake(self) -> None:
        """After a restart during `bake`: watch green again for the whole bake time, then finish."""
        r = self.row
        try:
            self.step("bake", lambda: self.bake(r["blue_slot"], r["green_slot"]))
        except StepFailed as exc:
            self.abort(r["blue_slot"], r["green_slot"], exc)
            return
        except AutoRollback:
            return
        started = r["started_at"] or self.d.clock()
        self.finish((self.d.clock() - started).total_seconds())

    # -- endings ------------------------------------------------------------------------------

    def finish(self, took: float) -> None:
        now = self.d.clock()
        retire_at = now + self.env.keep_blue
        r = self.row
        if not move(self.store, self.id, "running", "succeeded", finished_at=now, blue_retire_at=retire_at,
                               outcome=f"{r['version']} live in {seconds(took)}"):
            return
        if r["kind"] == "rollback" and r["rollback_of"]:
            move(self.store, r["rollback_of"], "succeeded", "rolled_back", outcome=f"rolled back to {r['version']}")
        # Earlier deploys' kept versions are gone now (this deploy replaced the slot).
        self.store.execute(
            "UPDATE deploys SET blue_retired = 1 WHERE service = ? AND env = ? AND id < ? AND blue_retired = 0",
            (r["service"], r["env"], self.id),
        )
        audit.record(self.store, actor="recess", command="pipeline", action="deploy.succeeded", target=f"deploy:{self.id}",
                     before={"version": r["previous_version"]}, after={"version": r["version"]})
        self.d.arm(f"retire-{self.id}", retire_at, self.d.retire_due)
        self.d.notify.update_card(self.id)
        blue_note = (f" Blue ({r['blue_version']}) is kept for rollback until {retire_at:%H:%M} UTC."
                     if r["blue_slot"] and r["blue_version"] else "")
        self.d.notify.thread(self.id, f":tada: *{r['service']} {r['version']}* is live in {r['env']} after {seconds(took)}.{blue_note}",
                             broadcast=True, offer_rollback=bool(blue_note))

    def restore_blue(self, blue: str | None, green: str) -> str:
        """Traffic back to blue (or to nothing on a first deploy) and green stopped; says what it did."""
        notes = []
        try:
            if blue is not None:
                self.platform.shift({blue: 100, green: 0})
                notes.append(f"traffic on blue ({self.row.get('blue_version')})")
            else:
                self.platform.shift({"blue": 0, "green": 0})
                notes.append("nothing serving (first deploy)")
        except PlatformError as exc:
            notes.append(f"could not route traffic: {exc}")
        try:
            self.platform.drain(green, timeout=5)  # requests already on green finish first
            self.platform.stop(green)
            notes.append("green stopped")
        except PlatformError as exc:
            notes.append(f"could not stop green: {exc}")
        return ", ".join(notes)

    def abort(self, blue: str | None, green: str, exc: StepFailed) -> None:
        restored = self.restore_blue(blue, green)
        now = self.d.clock()
        move(self.store, self.id, "running", "failed", finished_at=now, outcome=f"{exc}"[:500])
        audit.record(self.store, actor="recess", command="pipeline", action="deploy.failed", target=f"deploy:{self.id}",
                     after={"reason": str(exc), "restored": restored})
        self.d.notify.update_card(self.id)
        out = f"\n```{tail(exc.output, 1200)}```" if exc.output.strip() else ""
        self.say(f":red_circle: <@{self.row['requester']}> deploy #{self.id} of {self.row['version']} failed: {exc}. "
                 f"{restored.capitalize()}.{out}", broadcast=True)

    def _fail_before_start(self, message: str, output: str = "") -> None:
        move(self.store, self.id, "running", "failed", finished_at=self.d.clock(), outcome=message[:500])
        self.d.notify.update_card(self.id)
        self.say(f":red_circle: <@{self.row['requester']}> deploy #{self.id} failed before it started: {message}", broadcast=True)
