"""The blue-green pipeline: a persisted state machine, one `steps` row per step.

build -> start_green -> migrate -> health -> smoke -> shift (canary steps) -> bake -> done, then blue is
retired after `keep_blue`. Every step is stored before and after it runs, posts a thread reply with
its duration, and updates the card. A failing step aborts: traffic stays on (or returns to) blue,
green is stopped, the card turns red and the requester is mentioned.

Every change of routing and slots goes through the deployer's TrafficDoor (commands/traffic.py).
Whatever escapes a step, a final guard brings traffic to a known state and ends the deploy with
the reason: no deploy stays `running` with no one driving it. A deploy that runs past its
environment's `deploy_timeout` is aborted the same way. "Live" is said only after the public
address answers through the router.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from commands.config import format_duration
from commands.states import ATTENTION, crash_point, log_event, move, requester_text
from commands.traffic import NeedsAttention, TrafficRefused
from platforms.base import (
    Health,
    Platform,
    PlatformError,
    RouterStats,
    Traffic,
    format_weights,
    other_slot,
)
from platforms.environment import child_env, redact, secrets_of
from platforms.hooks import GROUP_KILLED, run_hook
from storage import audit
from storage import deploys as rows

if TYPE_CHECKING:
    from commands.deploys import Deployer

log = logging.getLogger("recess.pipeline")

STEPS = ("build", "start_green", "migrate", "health", "smoke", "shift", "bake")
OUTPUT_LIMIT = 1500

__all__ = ["STEPS", "AutoRollback", "DeployTimeout", "Pipeline", "StepFailed", "crash_point", "end_attention"]


def hands_over(platform: Platform) -> bool:
    """A platform that moves traffic itself once the new version is healthy, with no router
    recess flips (Railway: platforms/railway.py). The pipeline, rollback and recovery consult this
    at a few marked points; everything else is the same protocol."""
    return bool(getattr(platform, "hands_over", False))


def poll_interval(platform: Platform, default: float) -> float:
    """How often a step asks the platform again: never faster than the platform allows."""
    every = getattr(platform, "poll_interval", None)
    return max(default, every) if isinstance(every, int | float) else default


class StepFailed(Exception):
    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


class AutoRollback(Exception):
    """The deploy was ended by someone else (the bake watch's rollback, a person, recovery)."""


class DeployTimeout(StepFailed):
    """The deploy ran past its environment's deploy_timeout."""


def tail(text: str, limit: int = OUTPUT_LIMIT) -> str:
    text = (text or "").strip()
    return text if len(text) <= limit else "…" + text[-limit:]


def seconds(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.1f} s"


def what_to_do(row: dict[str, Any]) -> str:
    """The sentence a person reads when recess stopped guessing."""
    return (f"A person needs to look now: check the router and both slots of {row['service']} in {row['env']} "
            f"(`recess config check`, HAProxy's `show servers state`, the slot logs in the state directory). "
            f"Once one healthy slot takes 100% of the traffic, recess notices within a minute and closes deploy "
            f"#{row['id']}; until then the service stays held.")


def end_attention(d: Deployer, row: dict[str, Any], saw: str, *, who: str = "") -> None:
    """Ends a running deploy as `needs_attention`: the router is left as it is, the thread and the
    channel say what recess saw and what to do."""
    if not move(d.store, row["id"], "running", ATTENTION, finished_at=d.clock(), outcome=f"needs attention: {saw}"[:500]):
        return
    d.persist(lambda: audit.record(d.store, actor="recess", command="pipeline", action="deploy.needs_attention",
                                   target=f"deploy:{row['id']}", after={"saw": saw}))
    d.notify.update_card(row["id"])
    mention = f"{requester_text(row)} " if row.get("requester") else ""
    d.notify.thread(row["id"], f":rotating_light: {mention}{who}deploy #{row['id']} of {row['service']} {row['version']} "
                               f"*needs attention*: {saw}. recess left the traffic as it is. {advice_for(d, row)}",
                    broadcast=True)


def advice_for(d: Deployer, row: dict[str, Any]) -> str:
    """what_to_do, or on Railway (commands/railway.py) the same in Railway's terms."""
    try:
        platform = d.platform_for(row["service"], row["env"])
    except Exception:  # the platform cannot even be made: the generic advice still helps
        return what_to_do(row)
    if hands_over(platform):  # Railway: its deployments, its dashboard, no router or slots of recess's
        from commands.railway import attention_advice

        return attention_advice(platform, row)
    return what_to_do(row)


class BakeWatch:
    """One look after another at a switched service: green's health, the router's revivals, the
    public address and green's 5xx ratio. `check()` returns why the bake fails, or None."""

    def __init__(self, p: Pipeline, green: str) -> None:
        self.p = p
        self.green = green
        self.baseline = p._stats(green) or RouterStats()
        self.revivals = p.d.router_revivals.get(p.where, 0)
        self.failures = self.public_failures = 0

    def check(self) -> str | None:
        p, green = self.p, self.green
        health = p.platform.health(green)
        self.failures = 0 if health.ok else self.failures + 1
        public = p.door.probe_public(*p.where)
        self.public_failures = 0 if public is None or public.ok else self.public_failures + 1
        if self.failures >= 2 or health.exited:
            return f"green's health check failed ({health.status or health.detail})"
        if p.d.router_revivals.get(p.where, 0) != self.revivals:
            return "the router died during the bake (the router watchdog restarted it)"
        if self.public_failures >= 2:
            return p._public_reason(public)
        stats = p._stats(green)
        if stats:
            req = stats.requests - self.baseline.requests
            bad = (stats.responses_5xx - self.baseline.responses_5xx) + (stats.connection_errors - self.baseline.connection_errors)
            if req >= 20 and bad / req > p.env.max_5xx_ratio:
                return f"{bad} of {req} requests to green failed ({bad / req:.0%} > {p.env.max_5xx_ratio:.0%})"
        return None


class Pipeline:
    def __init__(self, deployer: Deployer, deploy_id: int) -> None:
        self.d = deployer
        self.store = deployer.store
        self.door = deployer.traffic
        self.id = deploy_id
        row = rows.get(self.store, deploy_id)
        assert row is not None
        self.row = row
        self.svc = deployer.cfg.services[row["service"]]
        self.env = deployer.cfg.environments[row["env"]]
        self._platform: Platform | None = None
        self.green_started: float | None = None  # monotonic instant green's start returned
        started_at = row["started_at"] or deployer.clock()
        self.deadline_at = started_at + self.env.deploy_timeout

    @property
    def platform(self) -> Platform:
        if self._platform is None:
            self._platform = self.d.platform_for(self.row["service"], self.row["env"])
        return self._platform

    @property
    def where(self) -> tuple[str, str]:
        return self.row["service"], self.row["env"]

    def say(self, text: str, *, broadcast: bool = False) -> None:
        self.d.notify.thread(self.id, text, broadcast=broadcast)

    def status(self) -> str:
        return self.d.persist(lambda: rows.get(self.store, self.id))["status"]

    def check_deadline(self) -> None:
        """Raises when an approver pressed Stop, or the deploy ran past its deploy_timeout."""
        stopper = self.d.stop_requests.get(self.id) or self.d.stop_requests.get(self.row.get("release_id") or 0)
        if stopper:
            raise StepFailed(f"stopped by <@{stopper}>")
        if self.d.clock() >= self.deadline_at:
            raise DeployTimeout(f"the deploy ran past its deploy_timeout of {format_duration(self.env.deploy_timeout)}")

    # -- running ------------------------------------------------------------------------------

    def run(self) -> None:
        """Runs the deploy to its end. Nothing escapes: the final guard ends the deploy."""
        if self.row["status"] != "running":
            return
        self.d.running_here.add(self.id)
        try:
            from commands.railway import waits_told

            with waits_told(self.d, *self.where, self.say):  # Railway: rate-limit waits in the thread
                self._run()
        except Exception as exc:  # a store error, a bug: bring traffic to a known state and say so
            log.exception("deploy %s: the pipeline failed outside a step", self.id)
            self.guard(f"{type(exc).__name__}: {exc}")
        finally:
            self.d.running_here.discard(self.id)

    def _run(self) -> None:
        t0 = self.d.monotonic()
        try:
            traffic = self.door.read(*self.where)
        except PlatformError as exc:
            self._fail_before_start(f"could not read the platform's state: {exc}", exc.output)
            return
        unclear = self.unclear(traffic)
        if unclear:
            self._fail_before_start(unclear)
            return
        # Built before slots are chosen: a failed (or interrupted) build has touched nothing.
        try:
            self.step("build", self.build)
        except StepFailed as exc:
            self._build_failed(exc)
            return
        except AutoRollback:
            return
        blue = traffic.serving
        green = other_slot(blue) if blue else "blue"
        self.d.persist(lambda: rows.update(self.store, self.id, blue_slot=blue, green_slot=green,
                                           blue_version=traffic.slot(blue).version if blue else None))
        self.row = self.d.persist(lambda: rows.get(self.store, self.id))
        r = self.row
        frm = f"{r['previous_version']} → " if r["previous_version"] else ""
        reason = (r["now_reason"] or "").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")  # typed text stays inert
        loud = f" :rotating_light: *--now override:* {reason}" if r["now_reason"] else ""
        self.say(f":rocket: Deploy #{self.id} started: *{r['service']}* {frm}*{r['version']}* in {r['env']} "
                 f"(green = slot {green}).{loud}", broadcast=True)
        try:
            self.step("start_green", lambda: self.start_green(green))
            self.step("migrate", lambda: self.migrate(green))
            self.step("health", lambda: self.wait_healthy(green))
            self.step("smoke", lambda: self.smoke(green))
            self.step("shift", lambda: self.shift(blue, green))
            self.step("bake", lambda: self.bake(blue, green))
        except StepFailed as exc:
            self.abort(blue, green, exc)
            return
        except AutoRollback:
            return
        self.finish(self.d.monotonic() - t0)
        self.prune_images()

    def unclear(self, traffic: Traffic) -> str | None:
        """Why the router's state cannot be read as "blue serves, or nothing yet" (None when it can)."""
        if traffic.split:
            return (f"traffic is split {format_weights(traffic.weights)} outside a canary of this deploy; "
                    f"recess does not guess which slot serves. Set one slot to 100 first")
        if traffic.serving is None:
            live = rows.live(self.store, *self.where)
            if live is not None:
                return (f"the router sends traffic to no slot although deploy #{live['id']} ({live['version']}) "
                        f"is live; this is not a first deploy, so recess will not start in either slot")
        return None

    def step(self, name: str, action: Callable[[], str | None]) -> None:
        if self.status() != "running":
            # Ended elsewhere (a rollback by hand, recovery): leave the slots as that left them.
            raise AutoRollback(f"the deploy was ended before {name}")
        self.check_deadline()
        started = self.d.monotonic()
        step_id = self.d.persist(lambda: rows.start_step(self.store, self.id, name))
        self.d.notify.update_card(self.id)
        crash_point(name, "during")
        try:
            detail = action() or ""
            crash_point(name, "after")
        except StepFailed as exc:
            self._finish_step(step_id, "failed", tail(f"{exc}\n{exc.output}"))
            self.say(redact(f":x: *{name}* failed after {seconds(self.d.monotonic() - started)}: {exc}", secrets_of(self.svc)))
            raise
        except AutoRollback as exc:
            self._finish_step(step_id, "failed", str(exc))
            raise
        except PlatformError as exc:
            self._finish_step(step_id, "failed", tail(f"{exc}\n{exc.output}"))
            self.say(redact(f":x: *{name}* failed after {seconds(self.d.monotonic() - started)}: {exc}", secrets_of(self.svc)))
            raise StepFailed(str(exc), exc.output) from exc
        except Exception as exc:
            log.exception("deploy %s: step %s crashed", self.id, name)
            self._finish_step(step_id, "failed", f"{type(exc).__name__}: {exc}")
            self.say(redact(f":x: *{name}* failed: {type(exc).__name__}: {exc}", secrets_of(self.svc)))
            raise StepFailed(f"{type(exc).__name__}: {exc}") from exc
        status = "skipped" if detail.startswith("skipped") else "succeeded"
        self._finish_step(step_id, status, detail)
        log_event("step", self.row, step=name, status=status, seconds=f"{self.d.monotonic() - started:.3f}")
        icon = ":fast_forward:" if status == "skipped" else ":white_check_mark:"
        self.say(redact(f"{icon} *{name}* {seconds(self.d.monotonic() - started)}{': ' + detail if detail else ''}",
                        secrets_of(self.svc)))

    def _finish_step(self, step_id: int, status: str, detail: str) -> None:
        self.d.persist(lambda: rows.finish_step(self.store, step_id, status, detail))

    # -- the steps ----------------------------------------------------------------------------

    def build(self) -> str:
        """Builds (or pulls) the version, its progress in one thread line edited at most every 5 s;
        skipped when the image exists already or nothing is configured (platforms/build.py)."""
        from platforms.build import Throttled, build_version

        line = getattr(self.d.notify, "thread_line", None)  # a notifier that can edit a posted line
        started = self.d.monotonic()

        def show(text: str) -> None:
            self.check_deadline()  # Stop pressed, or past deploy_timeout: raising here ends the build
            if line is not None:
                line(self.id, "build", redact(f":hammer_and_wrench: build: {text}", secrets_of(self.svc)))

        progress = Throttled(show, monotonic=self.d.monotonic)
        built = build_version(self.d.cfg, self.platform, *self.where, self.row["version"], progress=progress,
                              rollback=self.row["kind"] == "rollback")
        if built is None:
            return "skipped: no build configured"
        if progress.last_at is not None and line is not None:
            line(self.id, "build", f":hammer_and_wrench: build: finished after {seconds(self.d.monotonic() - started)}")
        return built.detail

    def _build_failed(self, exc: StepFailed) -> None:
        from platforms.build import FAIL_LINES

        lines = "\n".join(exc.output.strip().splitlines()[-FAIL_LINES:])[-2800:]
        if lines:
            self.say(redact(f"The build's last {FAIL_LINES} lines of output:\n```{lines}```", secrets_of(self.svc)))
        self._end_failed(StepFailed(str(exc)), "nothing was started and the traffic was not touched")

    def prune_images(self) -> None:
        """After a successful deploy: the service's images beyond keep_images are removed (never
        one a slot runs). A failure here is logged; the deploy stays a success."""
        prune = getattr(self.platform, "prune_images", None)
        if prune is None:
            return
        try:
            if self.status() != "succeeded":
                return
            removed = prune()
        except Exception:
            log.exception("deploy %s: could not remove old images", self.id)
            return
        if removed:
            self.say(f":broom: removed {len(removed)} older image(s) of {self.row['service']}: {', '.join(removed)}")

    def start_green(self, green: str) -> str:
        # The version kept from an earlier deploy gives way: the door drains it, then replaces it.
        self.door.start(*self.where, green, self.row["version"], owner=self.id)
        self.green_started = self.d.monotonic()
        if hands_over(self.platform):  # Railway: the thread names the deployments (commands/railway.py)
            from commands.railway import started_note

            return started_note(self.platform, self.row, green)
        return f"{self.row['version']} started in slot {green}"

    def migrate(self, green: str) -> str:
        from commands import migrations as lint

        has_command = getattr(getattr(self.svc, self.svc.platform), "migrate", None)
        if self.row["kind"] == "rollback":
            return "skipped: a rollback returns to a version whose migrations already ran"
        if hands_over(self.platform):  # Railway runs them as the deployment's pre-deploy command
            return self.platform.migration_note(self.row["version"])  # type: ignore[attr-defined]
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

            self.d.persist(lambda: applied_migrations.mark_applied(self.store, self.row["service"], self.row["env"],
                                                                   pending, self.id))
        return run.summary

    def wait_healthy(self, green: str) -> str:
        """Polls green until it answers 200; `health_timeout` counts from green's start."""
        started = self.green_started if self.green_started is not None else self.d.monotonic()
        deadline = started + self.svc.health_timeout.total_seconds()
        polls = 0
        while True:
            polls += 1
            health = self.platform.health(green)
            if health.ok:
                return f"{self.svc.health_path} answered 200 after {polls} {'poll' if polls == 1 else 'polls'}"
            if health.exited and hands_over(self.platform):
                raise StepFailed(f"{health.detail}; Railway keeps the previous deployment serving")
            if health.exited:
                raise StepFailed(f"green exited before it was healthy ({health.detail})")
            if self.d.monotonic() >= deadline:
                status = f"HTTP {health.status}" if health.status else "no answer"
                raise StepFailed(f"{self.svc.health_path} did not answer 200 within {format_duration(self.svc.health_timeout)} "
                                 f"of green's start (last: {status} {health.detail})")
            self.check_deadline()
            self.d.sleep(poll_interval(self.platform, 0.2))

    def smoke(self, green: str) -> str:
        if not self.svc.smoke:
            return "skipped: no smoke command"
        env = child_env(self.svc, {"RECESS_BASE_URL": self.platform.base_url(green), "RECESS_SERVICE": self.row["service"],
                                   "RECESS_VERSION": self.row["version"], "RECESS_ENV": self.row["env"], "RECESS_SLOT": green})
        limit = self.svc.smoke_timeout
        try:
            ran = run_hook(self.svc.smoke, cwd=self.d.cfg.base_dir, env=env, timeout=limit.total_seconds())
        except OSError as exc:
            raise StepFailed(f"cannot run the smoke test: {exc}") from None
        if ran.timed_out:
            raise StepFailed(f"smoke test ran longer than {format_duration(limit)}; {GROUP_KILLED}", ran.output)
        if ran.code != 0:
            raise StepFailed(f"smoke test exited {ran.code}", ran.output)
        return "smoke test passed"

    def shift(self, blue: str | None, green: str) -> str:
        version = self.row["version"]
        notes = []
        for pct in list(self.row.get("canary") or []):
            if blue is None:
                break
            self.door.route(*self.where, to=green, version=version, pct=pct, owner=self.id)
            self.say(f":large_blue_circle: canary: {pct}% of traffic on {version}")
            self.d.sleep(self.env.canary_pause.total_seconds())
            health = self.platform.health(green)
            if not health.ok:
                raise StepFailed(f"green failed its health check at {pct}% ({health.detail or health.status})")
            notes.append(f"{pct}%")
        flip = self.door.route(*self.where, to=green, version=version, owner=self.id)
        now = self.d.clock()
        self.d.persist(lambda: rows.update(self.store, self.id, traffic_at=now))
        self.d.persist(lambda: audit.record(self.store, actor="recess", command="pipeline", action="traffic.shift",
                                            target=f"deploy:{self.id}", before={"slot": blue},
                                            after={"slot": green, "version": version}))
        if hands_over(self.platform):
            return (f"Railway moved 100% of traffic to {version} after its healthcheck passed; recess checked that "
                    f"its deployment serves")
        via = f" via {' → '.join(notes)}" if notes else ""
        return (f"100% of traffic on {version}{via} (router flip {flip.router_seconds * 1000:.1f} ms, "
                f"shift call {flip.call_seconds * 1000:.1f} ms)")

    def bake(self, blue: str | None, green: str) -> str:
        """Watches green, and the public address through the router, after the switch. A failing
        health check, too many 5xx, or a public address that stops answering roll back on their own."""
        bake = self.env.bake_time.total_seconds()
        if bake <= 0:
            return "skipped: bake_time is 0"
        watch = BakeWatch(self, green)
        deadline = self.d.monotonic() + bake
        every = poll_interval(self.platform, 1.0)
        while self.d.monotonic() < deadline:
            self.d.sleep(min(every, max(0.05, deadline - self.d.monotonic())))
            if self.status() != "running":
                raise AutoRollback("rolled back by hand during the bake")
            self.check_deadline()
            reason = watch.check()
            if reason:
                self.roll_back_on_its_own(reason)
                raise AutoRollback(reason)
        return f"green and the public address stayed healthy for {format_duration(self.env.bake_time)}"

    def _public_reason(self, public: Health | None) -> str:
        try:
            router_up = self.platform.status().router_up
        except PlatformError:
            router_up = False
        detail = public.detail if public else "no answer"
        if hands_over(self.platform):  # no router of recess's in front: Railway's edge answers for it
            return f"the public address does not answer ({detail})"
        if not router_up:
            return f"the router died: the public address does not answer ({detail})"
        return f"the public address does not answer through the router ({detail})"

    def _stats(self, green: str) -> Any:
        try:
            return self.platform.router_stats().get(green)
        except PlatformError:
            return None

    def resume_after_hand_over(self) -> None:
        """After a restart, once a platform that hands over itself (Railway) finished the
        deployment recess had started: the steps after the hand-over run, then the deploy ends."""
        self._resume(("smoke", "shift", "bake"), "the resumed deploy")

    def resume_bake(self) -> None:
        """After a restart during `bake`: watch green again for the whole bake time, then finish."""
        self._resume(("bake",), "the resumed bake")

    def _resume(self, steps: tuple[str, ...], what: str) -> None:
        """Runs the last steps of a deploy a restart interrupted, then ends it as the pipeline does."""
        r = self.row
        blue, green = r["blue_slot"], r["green_slot"]
        run = {"smoke": lambda: self.smoke(green), "shift": lambda: self.shift(blue, green),
               "bake": lambda: self.bake(blue, green)}
        self.d.running_here.add(self.id)
        try:
            try:
                for name in steps:
                    self.step(name, run[name])
            except StepFailed as exc:
                self.abort(blue, green, exc)
                return
            except AutoRollback:
                return
            started = r["started_at"] or self.d.clock()
            self.finish((self.d.clock() - started).total_seconds())
        except Exception as exc:
            log.exception("deploy %s: %s failed outside a step", self.id, what)
            self.guard(f"{type(exc).__name__}: {exc}")
        finally:
            self.d.running_here.discard(self.id)

    # -- endings ------------------------------------------------------------------------------

    def finish(self, took: float) -> None:
        r = self.row
        public = self.door.probe_public(*self.where, probes=3)
        if public is not None and not public.ok:
            # Never "live" while the public address refuses connections.
            reason = self._public_reason(public)
            self.roll_back_on_its_own(reason)
            return
        now = self.d.clock()
        retire_at = now + self.env.keep_blue
        if not move(self.store, self.id, "running", "succeeded", finished_at=now, blue_retire_at=retire_at,
                    outcome=f"{r['version']} live in {seconds(took)}"):
            return
        if r["kind"] == "rollback" and r["rollback_of"]:
            move(self.store, r["rollback_of"], "succeeded", "rolled_back", outcome=f"rolled back to {r['version']}")
        # Earlier deploys' kept versions are gone now (this deploy replaced the slot): their cards
        # lose the Roll back button and say so.
        replaced = [x["id"] for x in self.store.rows(
            "SELECT id FROM deploys WHERE service = ? AND env = ? AND id < ? AND blue_retired = 0 AND card_ts IS NOT NULL",
            (r["service"], r["env"], self.id))]
        self.d.persist(lambda: self.store.execute(
            "UPDATE deploys SET blue_retired = 1 WHERE service = ? AND env = ? AND id < ? AND blue_retired = 0",
            (r["service"], r["env"], self.id),
        ))
        self.d.persist(lambda: audit.record(self.store, actor="recess", command="pipeline", action="deploy.succeeded",
                                            target=f"deploy:{self.id}", before={"version": r["previous_version"]},
                                            after={"version": r["version"]}))
        self.d.arm(f"retire-{self.id}", retire_at, self.d.retire_due)
        self.d.notify.update_card(self.id)
        for older in replaced:
            if older != r.get("rollback_of"):
                self.d.notify.update_card(older)
        blue_note = (f" Blue ({r['blue_version']}) is kept for rollback until {retire_at:%H:%M} UTC."
                     if r["blue_slot"] and r["blue_version"] else "")
        checked = " The public address answers." if public is not None else ""
        self.d.notify.thread(self.id, f":tada: *{r['service']} {r['version']}* is live in {r['env']} after {seconds(took)}."
                                      f"{checked}{blue_note}", broadcast=True, offer_rollback=bool(blue_note))

    def roll_back_on_its_own(self, reason: str) -> None:
        """After the switch, green (or the router) failed: traffic back to blue where blue can
        serve, else the deploy needs attention. The router is revived first if it died."""
        r = self.row
        try:
            self.d.revive_router(*self.where)
        except PlatformError as exc:
            log.warning("deploy %s: could not revive the router: %s", self.id, exc)
        try:
            restored = self.door.back_to(*self.where, blue=r["blue_slot"], blue_version=r["blue_version"],
                                         green=r["green_slot"], green_version=r["version"], owner=self.id, probes=3)
        except PlatformError as exc:  # NeedsAttention, or the router still down
            end_attention(self.d, r, f"{reason}; and {exc}")
            return
        if not move(self.store, self.id, "running", "rolled_back", finished_at=self.d.clock(),
                    outcome=f"automatically rolled back: {reason}"[:500]):
            return
        self.d.persist(lambda: audit.record(self.store, actor="recess", command="bake", action="rollback.auto",
                                            target=f"deploy:{self.id}", before={"version": r["version"]},
                                            after={"version": r["blue_version"], "reason": reason}))
        self.d.notify.update_card(self.id)
        self.say(f":rotating_light: {requester_text(r)} *automatic rollback* of {r['service']} {r['version']}: "
                 f"{reason}. {restored.text.capitalize()}.", broadcast=True)

    def abort(self, blue: str | None, green: str, exc: StepFailed) -> None:
        """A step failed: blue keeps (or gets back) the traffic and green is stopped, through the door."""
        try:
            restored = self.door.back_to(*self.where, blue=blue, blue_version=self.row.get("blue_version"), green=green,
                                         green_version=self.row["version"], owner=self.id, probes=3)
        except (NeedsAttention, TrafficRefused, PlatformError) as problem:
            end_attention(self.d, self.row, f"{exc}; and {problem}")
            return
        self._end_failed(exc, restored.text)

    def guard(self, reason: str) -> None:
        """The final guard: whatever escaped, traffic ends in a known state and the deploy ends."""
        try:
            row = self.d.persist(lambda: rows.get(self.store, self.id))
            if row is None or row["status"] != "running":
                return
            self.row = row
            if row["green_slot"] is None:
                self._fail_before_start(f"the pipeline failed: {reason}")
                return
            self.abort(row["blue_slot"], row["green_slot"], StepFailed(f"the pipeline failed: {reason}"))
        except Exception:
            # Even the guard could not finish (the store is away for longer than the retries):
            # the deploy watchdog recovers the deploy once this thread has let go of it.
            log.exception("deploy %s: the final guard could not end the deploy; the watchdog will recover it", self.id)

    def _end_failed(self, exc: StepFailed, restored: str) -> None:
        now = self.d.clock()
        if not move(self.store, self.id, "running", "failed", finished_at=now, outcome=f"{exc}"[:500]):
            return
        self.d.persist(lambda: audit.record(self.store, actor="recess", command="pipeline", action="deploy.failed",
                                            target=f"deploy:{self.id}", after={"reason": str(exc), "restored": restored}))
        self.d.notify.update_card(self.id)
        out = f"\n```{redact(tail(exc.output, 1200), secrets_of(self.svc))}```" if exc.output.strip() else ""
        self.say(f":red_circle: {requester_text(self.row)} deploy #{self.id} of {self.row['version']} failed: {exc}. "
                 f"{restored[:1].upper() + restored[1:]}.{out}", broadcast=True)

    def _fail_before_start(self, message: str, output: str = "") -> None:
        if not move(self.store, self.id, "running", "failed", finished_at=self.d.clock(), outcome=message[:500]):
            return
        self.d.notify.update_card(self.id)
        self.say(f":red_circle: {requester_text(self.row)} deploy #{self.id} failed before it started: {message}", broadcast=True)
