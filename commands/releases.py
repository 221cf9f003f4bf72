"""Releases: several services deployed, switched and rolled back as one (`[releases.NAME]`).

A release deploy is one parent row in `deploys` (kind 'release', service = the release's name,
`release_id` = its own id) that carries the request: its card, thread, approvals, window and
queue place, and `members`, the plan (each member's version, the version it ran and its
migration report). When the release starts, one ordinary deploy row per member is written
(`release_id` = the parent), status `running`: each member is held for the release's duration,
and afterwards its history, live version, blue retirement and `/rollback SERVICE` work through
the per-service code as for any deploy.

The run, in the members' configured order: build every member; run `migrate_first`'s
migrations; start every green; run the other members' migrations; wait for every health check;
run every smoke test; then switch every member with nothing in between (TrafficDoor.route_together:
all locks, reads, probes and router connections first, then the flips back to back), and one
bake watching every member. A failure before the switch stops every green and leaves every blue
serving; a failure during the bake switches every member back. The rollback of a release is a
parent row of kind 'rollback' with one rollback row per member, flipped together in reverse
order. Recovery after a restart ends with all members on the same side (all new, or all old).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from commands.config import format_duration
from commands.freezes import current_calendar
from commands.pipeline import AutoRollback, BakeWatch, Pipeline, StepFailed, end_attention, seconds
from commands.states import ATTENTION, crash_point, move, requester_text
from commands.traffic import Move, NeedsAttention, Together, TrafficRefused
from platforms.base import PlatformError, other_slot
from storage import audit
from storage import deploys as rows

if TYPE_CHECKING:
    from commands.deploys import Deployer

log = logging.getLogger("recess.releases")


def _error(message: str) -> Exception:
    from commands.deploys import DeployError

    return DeployError(message)


def _bad(field: str, message: str) -> Exception:
    """Bad input (HTTP 400 from the REST API): `field` is the request's part it names
    (`release`, `env`, `version`, `versions` or `versions.SERVICE`)."""
    from commands.deploys import UnknownTarget

    exc = UnknownTarget(message)
    exc.field = field  # type: ignore[attr-defined]
    return exc


def _conflict(message: str) -> Exception:
    from commands.deploys import ConflictError

    return ConflictError(message)


def check_release(d: Deployer, name: str) -> None:
    if name not in d.cfg.releases:
        known = ", ".join(sorted(d.cfg.releases)) or "none: add [releases.NAME]"
        raise _bad("release", f"unknown release `{name}` (known: {known})")


def check_member(d: Deployer, name: str, service: str) -> None:
    release = d.cfg.releases[name]
    if service not in release.services:
        raise _bad(f"versions.{service}", f"`{service}` is not a member of release {name} (members: {', '.join(release.services)})")


def check_versions(d: Deployer, name: str, versions: str | dict[str, str]) -> dict[str, str]:
    """Every member's wanted version, from one VERSION or SERVICE=VERSION pairs; each one checked."""
    from commands.deploys import VERSION

    release = d.cfg.releases[name]
    if isinstance(versions, str):
        wanted, fields = {s: versions for s in release.services}, dict.fromkeys(release.services, "version")
    else:
        if not versions:
            raise _bad("versions", f"name at least one member of release {name} (members: {', '.join(release.services)})")
        for service in versions:
            check_member(d, name, service)
        wanted, fields = dict(versions), {s: f"versions.{s}" for s in versions}
    for service, version in wanted.items():
        if not version:
            raise _bad(fields[service], f"`{service}=` names no version, like `{service}=v2.4.1`")
        if not VERSION.fullmatch(version):
            raise _bad(fields[service], f"`{version}` is not a version: use letters, digits, '.', '_', '+' or '-', like v2.4.1")
    return wanted


# -- requests -----------------------------------------------------------------------------------


def parse_words(d: Deployer, name: str, words: list[str]) -> tuple[str | dict[str, str], str | None]:
    """The words after a release's name: `VERSION [ENV]`, or `SERVICE=VERSION... [ENV]`."""
    release = d.cfg.releases[name]
    if not words:
        raise _error(f"`/deploy {name}` needs a VERSION for every member, or SERVICE=VERSION for some "
                     f"(members: {', '.join(release.services)})")
    pairs = [w for w in words if "=" in w]
    if not pairs:
        if len(words) > 2:
            raise _error(f"too many words: `{' '.join(words[2:])}`; a release takes one VERSION and an optional ENV")
        return words[0], words[1] if len(words) == 2 else None
    plain = [w for w in words if "=" not in w]
    env = None
    if plain:
        if len(plain) > 1 or words[-1] != plain[0] or plain[0] not in d.cfg.environments:
            raise _error(f"`{plain[0]}` mixes the VERSION and SERVICE=VERSION forms: use `/deploy {name} VERSION [ENV]` "
                         f"or `/deploy {name} {release.services[0]}=VERSION ... [ENV]`")
        env = plain[0]
    versions: dict[str, str] = {}
    for pair in pairs:
        service, _, version = pair.partition("=")
        check_member(d, name, service)
        if service in versions:
            raise _error(f"`{service}` is named twice; give each member one version")
        if not version:
            raise _error(f"`{pair}` names no version, like `{service}=v2.4.1`")
        versions[service] = version
    return versions, env


def target(d: Deployer, name: str, env: str | None) -> str:
    """The environment a release deploys to: ENV, else the first one every member deploys to."""
    release = d.cfg.releases[name]
    if env is not None:
        if env not in d.cfg.environments:
            raise _bad("env", f"unknown environment `{env}` (known: {', '.join(d.cfg.environments)})")
        for service in release.services:
            envs = d.cfg.service_environments(service)
            if env not in envs:
                raise _bad("env", f"release {name} cannot deploy to `{env}`: its member `{service}` is not deployed there "
                             f"(it deploys to {', '.join(envs)})")
        return env
    shared = [e for e in d.cfg.environments if all(e in d.cfg.service_environments(s) for s in release.services)]
    if not shared:
        raise _error(f"the members of release {name} share no environment; check [services.NAME] environments")
    return d.cfg.default_environment if d.cfg.default_environment in shared else shared[0]


def summary(plan: list[dict[str, Any]], key: str = "version") -> str:
    """'v2' when every member moves to v2, else 'core=v2 web=v3' (stored as the row's version)."""
    values = [m[key] or "nothing" for m in plan]
    if key == "version" and len(set(values)) == 1:
        return values[0]
    return " ".join(f"{m['service']}={v}" for m, v in zip(plan, values, strict=True))


def request(d: Deployer, *, actor: str, name: str, versions: str | dict[str, str], env: str | None = None,
            now_reason: str | None = None, canary: list[int] | None = None, contract: bool = False,
            command: str = "/deploy", sha: str | None = None, committed_at: dt.datetime | None = None,
            requested_by: str | None = None, on_record: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Stores one request for the release (one card, one approval policy); nothing is stored on
    bad input. Members that already run their requested version are left out. `sha`,
    `committed_at`, `requested_by` and `on_record` are a CI job's, as for Deployer.request."""
    from commands.deploys import new_click_token

    check_release(d, name)
    release = d.cfg.releases[name]
    wanted = check_versions(d, name, versions)
    env = target(d, name, env)
    d.check_request_options(actor, canary, now_reason)
    lints = {s: d.migration_report(s, env) for s in wanted}
    env_cfg = d.cfg.environments[env]
    now = d.clock()
    blocked_now = env_cfg.respect_windows and not current_calendar(d.cfg, d.store).is_safe(now)

    def record() -> tuple[int, int]:
        with d.store.transaction():
            plan, kept = [], []
            for service in release.services:
                if service not in wanted:
                    continue
                live = rows.live(d.store, service, env)
                current = live["version"] if live else None
                if current == wanted[service]:
                    kept.append(f"{service} already runs {current}")
                    continue
                lint = lints[service]
                if lint is not None:
                    lint["contract_allowed"] = bool(contract and (live is None or live["blue_retired"]))
                plan.append({"service": service, "version": wanted[service], "previous_version": current, "lint": lint})
            if not plan:
                raise _conflict(f"nothing to deploy: {'; '.join(kept)} in {env}")
            for open_ in rows.open_requests(d.store, name, env):
                if [(m["service"], m["version"]) for m in open_["members"] or []] == [(m["service"], m["version"]) for m in plan]:
                    raise _conflict(f"release {name} {summary(plan)} in {env} is already requested as deploy #{open_['id']} "
                                 f"({open_['status']}); see its card")
            lint = combined_lint(plan)
            needed = env_cfg.approvals
            if now_reason and blocked_now:
                needed += 1
            if lint and lint["contract_allowed"] and lint["contract"]:
                needed += 1
            release_id = rows.insert(
                d.store, kind="release", service=name, env=env, version=summary(plan),
                previous_version=summary(plan, "previous_version"), requester=actor, status="pending",
                now_reason=now_reason.strip() if now_reason else None, canary=canary, contract=int(contract),
                approvals_needed=needed, lint=lint, channel=d.cfg.bot.channel, created_at=now,
                click_token=new_click_token(), members=plan,
                outcome="; ".join(f"{k} (left out)" for k in kept) or None,
                sha=sha, committed_at=committed_at.astimezone(dt.UTC).isoformat() if committed_at else None,
                requested_by=requested_by,
            )
            rows.update(d.store, release_id, release_id=release_id)
            audit.record(d.store, actor=actor, command=command, action="release.request", target=f"deploy:{release_id}",
                         after={"release": name, "env": env, "members": [{k: m[k] for k in ("service", "version", "previous_version")}
                                                                         for m in plan],
                                "now_reason": now_reason, "canary": canary, "approvals_needed": needed,
                                **({"sha": sha, "requested_by": requested_by} if sha or requested_by else {})}, at=now)
            if on_record is not None:
                on_record(release_id)
            return release_id, needed

    with d._lock:
        release_id, needed = d.store.retrying(record)
    d.notify.post_card(release_id)
    if needed == 0 and not d.blocking_findings(release_id):
        d._approved(release_id, None)
    return rows.get(d.store, release_id)


def combined_lint(plan: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The members' migration reports as one, each finding and file naming its member."""
    reports = [(m["service"], m["lint"]) for m in plan if m["lint"]]
    if not reports:
        return None
    return {
        "pending": [f"{s}/{p}" for s, lint in reports for p in lint["pending"]],
        "findings": [{**f, "service": s} for s, lint in reports for f in lint["findings"]],
        "contract": any(lint["contract"] for _, lint in reports),
        "contract_allowed": all(lint.get("contract_allowed") for _, lint in reports if lint["contract"]),
    }


# -- starting -------------------------------------------------------------------------------------


def held_by(d: Deployer, name: str, env: str) -> dict[str, Any] | None:
    """What keeps the release from starting: a running release of the same name, or any member held."""
    members = d.cfg.releases[name].services if name in d.cfg.releases else []
    return rows.holder(d.store, name, env) or rows.holding_member(d.store, members, env)


def begin(d: Deployer, parent: dict[str, Any], now: Any) -> bool:
    """Moves an approved (or queued) release to running and writes its member rows, in one
    transaction (the caller holds the deployer's lock and checked that no member is held)."""
    with d.store.transaction():
        written = 0
        for m in parent["members"] or []:
            live = rows.live(d.store, m["service"], parent["env"])
            current = live["version"] if live else None
            if current == m["version"]:
                continue  # it got there meanwhile (a deploy of its own): it keeps what it runs
            rows.insert(d.store, kind="deploy", service=m["service"], env=parent["env"], version=m["version"],
                        previous_version=current, requester=parent["requester"], status="running", started_at=now,
                        channel=parent["channel"], card_ts=parent["card_ts"], click_token=parent["click_token"],
                        lint=m["lint"], canary=parent["canary"], contract=parent["contract"], approvals_needed=0,
                        release_id=parent["id"], now_reason=parent["now_reason"])
            written += 1
        if not written:
            return move(d.store, parent["id"], ("approved", "queued"), "failed", finished_at=now,
                        outcome="nothing to deploy: every member already runs its version")
        return move(d.store, parent["id"], ("approved", "queued"), "running", started_at=now)


def run(d: Deployer, release_id: int) -> None:
    try:
        ReleaseRun(d, release_id).run()
    finally:
        d.stop_requests.pop(release_id, None)
        free_members(d, release_id)


def free_members(d: Deployer, release_id: int) -> None:
    """After a release (or its rollback) ended: the next waiting deploy of every member, and of
    every release that shares one, may start."""
    parent = rows.get(d.store, release_id)
    if parent is None:
        return
    names = {parent["service"], *(m["service"] for m in rows.members(d.store, parent))}
    for name in sorted(names):
        try:
            d.start_next(name, parent["env"])
        except Exception:
            log.exception("%s/%s: could not start the next waiting deploy", name, parent["env"])


# -- the run --------------------------------------------------------------------------------------


class ReleaseRun:
    """Drives a running release across its members; each member's steps are its own Pipeline's."""

    def __init__(self, d: Deployer, release_id: int) -> None:
        self.d = d
        self.store = d.store
        self.id = release_id
        row = rows.get(self.store, release_id)
        assert row is not None
        self.row = row
        self.members = [Pipeline(d, m["id"]) for m in rows.members(self.store, row)]
        self.release = d.cfg.releases.get(row["service"])
        self.env = d.cfg.environments[row["env"]]
        self.spread: float | None = None

    @property
    def ids(self) -> set[int]:
        return {self.id, *(p.id for p in self.members)}

    def say(self, text: str, *, broadcast: bool = False, offer_rollback: bool = False) -> None:
        self.d.notify.thread(self.id, text, broadcast=broadcast, offer_rollback=offer_rollback)

    def status(self) -> str:
        return self.d.persist(lambda: rows.get(self.store, self.id))["status"]

    def run(self) -> None:
        if self.row["status"] != "running":
            return
        self.d.running_here.update(self.ids)
        try:
            self._run()
        except Exception as exc:
            log.exception("release %s: the run failed outside a step", self.id)
            self.abort(StepFailed(f"the release failed: {type(exc).__name__}: {exc}"))
        finally:
            self.d.running_here.difference_update(self.ids)

    def _run(self) -> None:
        t0 = self.d.monotonic()
        before = {}
        for p in self.members:
            try:
                traffic = p.door.read(*p.where)
            except PlatformError as exc:
                self.end_before_start(f"{p.row['service']}: could not read the platform's state: {exc}")
                return
            unclear = p.unclear(traffic)
            if unclear:
                self.end_before_start(f"{p.row['service']}: {unclear}")
                return
            before[p.id] = traffic
        for p in self.members:  # built before slots are chosen: a failed build has touched nothing
            try:
                p.step("build", p.build)
            except StepFailed as exc:
                self.end_before_start(f"{p.row['service']}: build failed: {exc}")
                return
            except AutoRollback:
                return
        for p in self.members:
            traffic = before[p.id]
            blue = traffic.serving
            green = other_slot(blue) if blue else "blue"
            self.d.persist(lambda p=p, blue=blue, green=green, traffic=traffic: rows.update(
                self.store, p.id, blue_slot=blue, green_slot=green,
                blue_version=traffic.slot(blue).version if blue else None))
            p.row = self.d.persist(lambda p=p: rows.get(self.store, p.id))
        reason = (self.row["now_reason"] or "").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        loud = f" :rotating_light: *--now override:* {reason}" if self.row["now_reason"] else ""
        listing = ", ".join(f"*{p.row['service']}* {p.row['previous_version'] or 'nothing'} → *{p.row['version']}*"
                            for p in self.members)
        what = "Rollback" if self.row["kind"] == "rollback" else "Release"
        self.say(f":rocket: {what} #{self.id} of *{self.row['service']}* started in {self.row['env']}: {listing}.{loud}",
                 broadcast=True)
        first = next((p for p in self.members if self.release and p.row["service"] == self.release.migrate_first), None)
        try:
            if first is not None:
                first.step("migrate", lambda: first.migrate(first.row["green_slot"]))  # before any green starts
            for p in self.members:
                p.step("start_green", lambda p=p: p.start_green(p.row["green_slot"]))
            for p in self.members:
                if p is not first:
                    p.step("migrate", lambda p=p: p.migrate(p.row["green_slot"]))
            for p in self.members:
                p.step("health", lambda p=p: p.wait_healthy(p.row["green_slot"]))
            for p in self.members:
                p.step("smoke", lambda p=p: p.smoke(p.row["green_slot"]))
            self.parent_step("shift", self.switch)
            self.parent_step("bake", self.bake)
        except StepFailed as exc:
            self.abort(exc)
            return
        except AutoRollback:
            return
        self.finish(self.d.monotonic() - t0)

    def parent_step(self, name: str, action: Any) -> None:
        """A step of the release as a whole (the switch, the bake), recorded on the parent row."""
        if self.status() != "running" or any(p.status() != "running" for p in self.members):
            raise AutoRollback(f"the release was ended before {name}")
        self.check_deadline()
        started = self.d.monotonic()
        step_id = self.d.persist(lambda: rows.start_step(self.store, self.id, name))
        self.d.notify.update_card(self.id)
        crash_point(name, "during")
        try:
            detail = action() or ""
            crash_point(name, "after")
        except StepFailed as exc:
            self._fail_step(step_id, str(exc))
            self.say(f":x: *{name}* failed after {seconds(self.d.monotonic() - started)}: {exc}")
            raise
        except AutoRollback as exc:
            self._fail_step(step_id, str(exc))
            raise
        except PlatformError as exc:
            self._fail_step(step_id, str(exc))
            self.say(f":x: *{name}* failed after {seconds(self.d.monotonic() - started)}: {exc}")
            raise StepFailed(str(exc), exc.output) from exc
        status = "skipped" if detail.startswith("skipped") else "succeeded"
        self.d.persist(lambda: rows.finish_step(self.store, step_id, status, detail))
        icon = ":fast_forward:" if status == "skipped" else ":white_check_mark:"
        self.say(f"{icon} *{name}* {seconds(self.d.monotonic() - started)}{': ' + detail if detail else ''}")

    def _fail_step(self, step_id: int, detail: str) -> None:
        self.d.persist(lambda: rows.finish_step(self.store, step_id, "failed", detail[:1500]))

    def check_deadline(self) -> None:
        for p in self.members[:1]:
            p.check_deadline()  # Stop on the release's card, or past deploy_timeout

    def moves(self, *, back: bool = False, pct: int = 100) -> list[Move]:
        if back:
            return [Move(p.row["service"], p.row["env"], p.row["blue_slot"], p.row["blue_version"] or "", owner=p.id)
                    for p in reversed(self.members) if p.row["blue_slot"]]
        return [Move(p.row["service"], p.row["env"], p.row["green_slot"], p.row["version"], pct, p.id) for p in self.members]

    def switch(self) -> str:
        door = self.d.traffic
        notes = []
        for pct in list(self.row.get("canary") or []):
            movable = [m for m, p in zip(self.moves(pct=pct), self.members, strict=True) if p.row["blue_slot"]]
            if not movable:
                break
            try:
                door.route_together(movable)
            except TrafficRefused as exc:
                raise StepFailed(f"the {pct}% canary was refused: {exc}") from None
            self.say(f":large_blue_circle: canary: {pct}% of every member's traffic on the new versions")
            self.d.sleep(self.env.canary_pause.total_seconds())
            for p in self.members:
                health = p.platform.health(p.row["green_slot"])
                if not health.ok:
                    raise StepFailed(f"{p.row['service']}: green failed its health check at {pct}% "
                                     f"({health.detail or health.status})")
            notes.append(f"{pct}%")
        try:
            together = door.route_together(self.moves(), between=lambda i: crash_point("shift", "between") if i == 0 else None)
        except TrafficRefused as exc:
            raise StepFailed(f"the switch was refused before any flip: {exc}") from None
        self.spread = together.spread_seconds
        now = self.d.clock()
        for p, flip in zip(self.members, together.flips, strict=True):
            text = f"100% of traffic on {p.row['version']} (router flip {flip.router_seconds * 1000:.1f} ms)"

            def record(p: Pipeline = p, text: str = text) -> None:
                with self.store.transaction():
                    rows.update(self.store, p.id, traffic_at=now)
                    step_id = rows.start_step(self.store, p.id, "shift")
                    rows.finish_step(self.store, step_id, "succeeded", text)
                    audit.record(self.store, actor="recess", command="release", action="traffic.shift", target=f"deploy:{p.id}",
                                 before={"slot": p.row["blue_slot"]}, after={"slot": p.row["green_slot"], "version": p.row["version"]})
            self.d.persist(record)
            p.row = self.d.persist(lambda p=p: rows.get(self.store, p.id))
        self.d.persist(lambda: rows.update(self.store, self.id, traffic_at=now))
        via = f" via {' → '.join(notes)}" if notes else ""
        return f"{flip_report(together)}{via}"

    def bake(self) -> str:
        bake = self.env.bake_time.total_seconds()
        if bake <= 0:
            return "skipped: bake_time is 0"
        watches = [BakeWatch(p, p.row["green_slot"]) for p in self.members]
        deadline = self.d.monotonic() + bake
        while self.d.monotonic() < deadline:
            self.d.sleep(min(1.0, max(0.05, deadline - self.d.monotonic())))
            if self.status() != "running":
                raise AutoRollback("ended by hand during the bake")
            self.check_deadline()
            for p, watch in zip(self.members, watches, strict=True):
                reason = watch.check()
                if reason:
                    self.roll_back_on_its_own(f"{p.row['service']}: {reason}")
                    raise AutoRollback(reason)
        return f"every member and its public address stayed healthy for {format_duration(self.env.bake_time)}"

    def resume_bake(self) -> None:
        """After a restart during the bake: every member is on its new version; watch again, then finish."""
        self.d.running_here.update(self.ids)
        try:
            try:
                self.parent_step("bake", self.bake)
            except StepFailed as exc:
                self.abort(exc)
                return
            except AutoRollback:
                return
            started = self.row["started_at"] or self.d.clock()
            self.finish((self.d.clock() - started).total_seconds())
        except Exception as exc:
            log.exception("release %s: the resumed bake failed outside a step", self.id)
            self.abort(StepFailed(f"the release failed: {type(exc).__name__}: {exc}"))
        finally:
            self.d.running_here.difference_update(self.ids)
            free_members(self.d, self.id)

    # -- endings ----------------------------------------------------------------------------------

    def put_back(self) -> tuple[list[str], list[str]]:
        """Every member back on blue with green stopped, flipped together first where the members
        were switched; returns what was done per member and what could not be."""
        door = self.d.traffic
        done, stuck = [], []
        for p in self.members:
            p.row = self.d.persist(lambda p=p: rows.get(self.store, p.id))
        switched = []
        for p in reversed(self.members):
            if not p.row["green_slot"] or not p.row["blue_slot"]:
                continue
            try:
                if door.read(*p.where).slot(p.row["green_slot"]).weight > 0:
                    switched.append(p)
            except PlatformError:
                pass
        together = None
        if switched:
            try:
                together = door.route_together([Move(p.row["service"], p.row["env"], p.row["blue_slot"],
                                                     p.row["blue_version"] or "", owner=p.id) for p in switched])
            except PlatformError as exc:
                log.warning("release %s: the flip back together was refused (%s); one member at a time", self.id, exc)
        for p in reversed(self.members):
            if not p.row["green_slot"]:
                done.append(f"{p.row['service']}: nothing was started")
                continue
            try:
                restored = door.back_to(*p.where, blue=p.row["blue_slot"], blue_version=p.row["blue_version"],
                                        green=p.row["green_slot"], green_version=p.row["version"], owner=p.id, probes=3)
                done.append(f"{p.row['service']}: {restored.text}")
            except (NeedsAttention, TrafficRefused, PlatformError) as exc:
                stuck.append(f"{p.row['service']}: {exc}")
        if together is not None:
            done.append(f"flipped back together ({flip_report(together)})")
        return done, stuck

    def abort(self, exc: StepFailed) -> None:
        """Any failure: every member back on blue, every green stopped, the release failed."""
        if self.status() != "running":
            return
        done, stuck = self.put_back()
        self.end("failed", f"{exc}", done, stuck)

    def roll_back_on_its_own(self, reason: str) -> None:
        for p in self.members:
            try:
                self.d.revive_router(*p.where)
            except PlatformError as exc:
                log.warning("release %s: could not revive %s's router: %s", self.id, p.row["service"], exc)
        done, stuck = self.put_back()
        self.end("rolled_back", f"automatically rolled back: {reason}", done, stuck)

    def end_before_start(self, message: str) -> None:
        self.end("failed", message, ["nothing was started and the traffic was not touched"], [])

    def end(self, status: str, outcome: str, done: list[str], stuck: list[str]) -> None:
        """Ends every member and the parent; a member that could not be put back needs attention."""
        now = self.d.clock()
        for p in self.members:
            mine = [s for s in stuck if s.startswith(f"{p.row['service']}:")]
            if mine:
                move(self.store, p.id, "running", ATTENTION, finished_at=now, outcome=f"needs attention: {mine[0]}"[:500])
            else:
                move(self.store, p.id, "running", status, finished_at=now, outcome=f"release #{self.id}: {outcome}"[:500])
        if stuck:
            end_attention(self.d, self.row, f"{outcome}; and " + "; ".join(stuck))
            return
        if not move(self.store, self.id, "running", status, finished_at=now, outcome=outcome[:500]):
            return
        self.d.persist(lambda: audit.record(self.store, actor="recess", command="release", action=f"release.{status}",
                                            target=f"deploy:{self.id}", after={"reason": outcome, "restored": done}))
        self.d.notify.update_card(self.id)
        icon = ":rotating_light:" if status == "rolled_back" else ":red_circle:"
        what = "automatic rollback of" if status == "rolled_back" else "failed:"
        self.say(f"{icon} {requester_text(self.row)} release #{self.id} of {self.row['service']}: {what} {outcome}. "
                 f"{'; '.join(done)}.", broadcast=True)

    def finish(self, took: float) -> None:
        for p in self.members:
            public = p.door.probe_public(*p.where, probes=3)
            if public is not None and not public.ok:
                self.roll_back_on_its_own(f"{p.row['service']}: {p._public_reason(public)}")
                return
        now = self.d.clock()
        retire_at = now + self.env.keep_blue
        for p in self.members:
            r = p.row
            if not move(self.store, p.id, "running", "succeeded", finished_at=now, blue_retire_at=retire_at,
                        outcome=f"{r['version']} live with release #{self.id}"):
                continue
            self.d.persist(lambda r=r: self.store.execute(
                "UPDATE deploys SET blue_retired = 1 WHERE service = ? AND env = ? AND id < ? AND blue_retired = 0",
                (r["service"], r["env"], r["id"])))
            self.d.arm(f"retire-{p.id}", retire_at, self.d.retire_due)
        if self.row["kind"] == "rollback":
            for p in self.members:
                if p.row["rollback_of"]:
                    move(self.store, p.row["rollback_of"], "succeeded", "rolled_back",
                         outcome=f"rolled back to {p.row['version']} with release rollback #{self.id}")
            if self.row["rollback_of"]:
                move(self.store, self.row["rollback_of"], "succeeded", "rolled_back",
                     outcome=f"rolled back by {requester_text(self.row)} through the pipeline")
        spread = f", flips {seconds(self.spread)} apart" if self.spread is not None else ""
        if not move(self.store, self.id, "running", "succeeded", finished_at=now, traffic_at=self.row["traffic_at"] or now,
                    outcome=f"{self.row['version']} live in {seconds(took)}{spread}"):
            return
        self.d.persist(lambda: audit.record(self.store, actor="recess", command="release", action="release.succeeded",
                                            target=f"deploy:{self.id}", after={"members": [
                                                {"service": p.row["service"], "version": p.row["version"]} for p in self.members]}))
        self.d.notify.update_card(self.id)
        kept = [p for p in self.members if p.row["blue_version"]]
        note = f" The previous versions are kept for rollback until {retire_at:%H:%M} UTC." if kept else ""
        listing = ", ".join(f"*{p.row['service']}* {p.row['version']}" for p in self.members)
        self.say(f":tada: Release *{self.row['service']}* is live in {self.row['env']} after {seconds(took)}: {listing}.{note}",
                 broadcast=True, offer_rollback=bool(note))


def flip_report(together: Together) -> str:
    flips = ", ".join(f"{f.service} {f.router_seconds * 1000:.1f} ms" for f in together.flips)
    return (f"{len(together.flips)} flips back to back ({flips}); first to last flip {together.spread_seconds * 1000:.1f} ms "
            f"(every command sent within {together.sent_seconds * 1000:.2f} ms)")


# -- rollback -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseRollbackPlan:
    live: dict[str, Any]  # the release (or release rollback) that is live now
    back: list[dict[str, Any]]  # member rows to flip back, in reverse order
    skipped: list[str]  # members rolled back on their own meanwhile
    name: str
    env: str
    fast: bool = True  # every previous version still runs: one flip together; else through the pipeline
    retired: tuple[str, ...] = ()  # members whose previous version is no longer kept
    live_undone: bool = False  # `live` undid a release rollback: rolling it back is a plain rollback again


def plan_rollback(d: Deployer, name: str, env: str | None, actor: str, *, check_platform: bool = True) -> ReleaseRollbackPlan:
    env = target(d, name, env)
    decision = d.policy.can_rollback(actor, env)
    if not decision:
        raise _error(decision.reason)
    held = held_by(d, name, env)
    if held is not None:
        from commands.deploys import HeldError

        what = f"release #{held['id']}" if rows.is_release(held) or rows.is_member(held) else f"deploy #{held['id']}"
        raise HeldError(f"release {name} in {env} cannot be rolled back while {what} ({held['service']} {held['version']}, "
                        f"{held['status'].replace('_', ' ')}) holds it. An approver can press Stop on its card.", held)
    live = rows.live(d.store, name, env)
    if live is None or not rows.is_release(live):
        raise _error(f"release {name} in {env} has not been deployed yet: nothing to roll back")
    back, skipped = [], []
    for m in reversed(rows.members(d.store, live)):
        now_live = rows.live(d.store, m["service"], env)
        if now_live is not None and now_live["id"] == m["id"]:
            if not m["previous_version"]:
                raise _error(f"{m['service']} had no version before release #{live['id']}, so the release cannot be rolled back")
            back.append(m)
        elif m["status"] == "rolled_back":
            skipped.append(f"{m['service']} was rolled back on its own")
        else:
            newer = f"deploy #{now_live['id']} ({now_live['version']})" if now_live else "nothing"
            since = "release rollback" if live["kind"] == "rollback" else "release"
            raise _error(f"{m['service']} changed since {since} #{live['id']}: {newer} is live. Roll back its members "
                         f"one by one with `/rollback SERVICE`; nothing was changed")
    if not back:
        raise _error(f"every member of release #{live['id']} was rolled back on its own already: nothing to roll back")
    retired = []
    for m in back:
        alive = bool(m["blue_slot"]) and not m["blue_retired"]
        if alive and check_platform:
            try:
                state = d.platform_for(m["service"], env).status().slot(m["blue_slot"])
                alive = state.running and state.version == m["previous_version"]
            except PlatformError:
                alive = False
        if not alive:
            retired.append(m["service"])
    return ReleaseRollbackPlan(live, back, skipped, name, env, fast=not retired, retired=tuple(retired),
                               live_undone=rows.undoes_rollback(d.store, live))


def rollback(d: Deployer, live_id: int, actor: str, *, clicked_at: float | None = None, requested_by: str | None = None,
             reason: str | None = None, command: str = "/rollback") -> dict[str, Any]:
    """Acts on a "Roll back" click of a release: every member back to the version it ran before,
    flipped together in reverse order. Returns the rollback's parent row."""
    from commands.deploys import new_click_token

    clicked_at = clicked_at or time.monotonic()
    live = rows.get(d.store, live_id)
    if live is None:
        raise _error(f"deploy #{live_id} does not exist")
    p = plan_rollback(d, live["service"], live["env"], actor)
    if p.live["id"] != live_id:
        if live["kind"] == "rollback" and live["status"] == "rolled_back":
            raise _error(f"rollback #{live_id} of release {p.name} was already undone: #{p.live['id']} is live now; "
                         f"nothing was changed")
        raise _error(f"this card is stale: #{p.live['id']} of release {p.name} is live now; use `/rollback {p.name}`; "
                     f"nothing was changed")
    now = d.clock()
    plan = [{"service": m["service"], "version": m["previous_version"], "previous_version": m["version"], "lint": None}
            for m in p.back]
    with d.store.transaction():
        if any(rows.holder(d.store, m["service"], p.env) for m in p.back) or rows.holder(d.store, p.name, p.env):
            raise _error("a rollback or deploy of a member already started")
        # Fast: the slots are recorded before anything moves, so recovery knows where each flip
        # was going. Through the pipeline: the run chooses the slots, as a deploy's does.
        rb_id = rows.insert(d.store, kind="rollback", service=p.name, env=p.env, version=summary(plan),
                            previous_version=summary(plan, "previous_version"), requester=actor, status="running",
                            rollback_of=live_id, channel=live["channel"], card_ts=live["card_ts"], started_at=now,
                            approvals_needed=0, click_token=live["click_token"] or new_click_token(), members=plan,
                            requested_by=requested_by)
        rows.update(d.store, rb_id, release_id=rb_id)
        for m in p.back:  # reverse order: the rollback's own switch order
            slots = ({"blue_slot": other_slot(m["blue_slot"]), "green_slot": m["blue_slot"], "blue_version": m["version"]}
                     if p.fast else {})
            rows.insert(d.store, kind="rollback", service=m["service"], env=p.env, version=m["previous_version"],
                        previous_version=m["version"], requester=actor, status="running", rollback_of=m["id"],
                        channel=live["channel"], card_ts=live["card_ts"], started_at=now, approvals_needed=0,
                        click_token=live["click_token"], release_id=rb_id, **slots)
        audit.record(d.store, actor=actor, command=command, action="release.rollback.start", target=f"deploy:{live_id}",
                     before={"versions": live["version"]},
                     after={"versions": summary(plan), **({"reason": reason} if reason else {})})
    rb = rows.get(d.store, rb_id)
    members = rows.members(d.store, rb)
    d.running_here.update({rb_id, *(m["id"] for m in members)})
    if not p.fast:
        d.notify.thread(rb_id, f":leftwards_arrow_with_hook: <@{actor}> is rolling back release {p.name}: the previous "
                               f"version of {', '.join(p.retired)} was retired, so every member's previous version is "
                               f"redeployed through the release pipeline, in reverse order.", broadcast=True)
        d.run_async(lambda: run(d, rb_id))
        return rb
    try:
        try:
            crash_point("rollback", "before")
            together = d.traffic.route_together([Move(m["service"], p.env, m["green_slot"], m["version"], owner=m["id"])
                                                 for m in members])
            crash_point("rollback", "after")
        except PlatformError as exc:  # refused before any flip, or a router that failed mid-way
            ended = rollback_failed(d, rb, members, f"{exc}")
            raise _error(f"the rollback did not happen: {exc}. {ended}") from None
        since_click = time.monotonic() - clicked_at
        rollback_stands(d, rb, members, f"every member back in {flip_report(together)}, {since_click:.2f} s after the click")
    finally:
        d.running_here.difference_update({rb_id, *(m["id"] for m in members)})
        free_members(d, rb_id)
    return rows.get(d.store, rb_id)


def rollback_stands(d: Deployer, rb: dict[str, Any], members: list[dict[str, Any]], outcome: str) -> None:
    """Every member's rollback flipped: records it on every member, the release and the card."""
    now = d.clock()
    env = d.cfg.environments[rb["env"]]
    retire_at = now + env.keep_blue
    with d.store.transaction():
        for m in members:
            move(d.store, m["rollback_of"], ("succeeded", "running"), "rolled_back",
                 outcome=f"rolled back to {m['version']} with release rollback #{rb['id']}")
            # blue_slot (the slot rolled away from) keeps the version rolled back from until keep_blue.
            move(d.store, m["id"], "running", "succeeded", finished_at=now, traffic_at=now, blue_retire_at=retire_at,
                 outcome=f"{m['version']} back with release rollback #{rb['id']}")
            d.store.execute("UPDATE deploys SET blue_retired = 1 WHERE id = ?", (m["rollback_of"],))
        move(d.store, rb["rollback_of"], ("succeeded", "running"), "rolled_back", outcome=f"rolled back by {requester_text(rb)}")
        move(d.store, rb["id"], "running", "succeeded", finished_at=now, traffic_at=now, outcome=outcome[:500])
        audit.record(d.store, actor="recess", command="/rollback", action="release.rollback.done", target=f"deploy:{rb['rollback_of']}",
                     after={"versions": rb["version"], "outcome": outcome})
    for m in members:
        d.arm(f"retire-{m['id']}", retire_at, d.retire_due)
    d.notify.update_card(rb["id"])
    listing = ", ".join(f"*{m['service']}* {m['previous_version']} → {m['version']}" for m in members)
    if rows.undoes_rollback(d.store, rb):
        d.notify.thread(rb["id"], f":arrow_right_hook: Rollback of release {rb['service']} undone: {listing}; {outcome}. "
                                  f"The versions rolled away from stay until {retire_at:%H:%M} UTC, so the release can be "
                                  f"rolled back again with Roll back on its card.", broadcast=True)
        return
    d.notify.thread(rb["id"], f":leftwards_arrow_with_hook: Release {rb['service']} rolled back: {listing}; {outcome}. "
                              f"The versions rolled away from stay until {retire_at:%H:%M} UTC, so this can be undone "
                              f"with Undo rollback on the release's card (or `/rollback {rb['service']}`).", broadcast=True)


def rollback_failed(d: Deployer, rb: dict[str, Any], members: list[dict[str, Any]], why: str) -> str:
    """A release rollback that could not flip every member: the ones it flipped go back, so all
    members stay on the same side."""
    undone, stuck = [], []
    for m in members:
        try:
            traffic = d.traffic.read(m["service"], rb["env"])
            if traffic.slot(m["green_slot"]).weight > 0:
                d.traffic.route(m["service"], rb["env"], to=m["blue_slot"], version=m["blue_version"], owner=m["id"], probes=3)
                undone.append(m["service"])
        except PlatformError as exc:
            stuck.append(f"{m['service']}: {exc}")
    now = d.clock()
    for m in members:
        move(d.store, m["id"], "running", "failed", finished_at=now, outcome=f"release rollback failed: {why}"[:500])
    text = (f"the members it had flipped went back ({', '.join(undone)})" if undone else "traffic is unchanged")
    if stuck:
        end_attention(d, rb, f"the release rollback failed ({why}) and " + "; ".join(stuck))
        return "Some members need attention: see the thread."
    move(d.store, rb["id"], "running", "failed", finished_at=now, outcome=f"rollback failed: {why}"[:500])
    d.notify.update_card(rb["id"])
    d.notify.thread(rb["id"], f":red_circle: Rollback of release {rb['service']} failed: {why}; {text}.", broadcast=True)
    return text[:1].upper() + text[1:] + "."


# -- recovery -------------------------------------------------------------------------------------


def recover_release(d: Deployer, row: dict[str, Any]) -> str:
    """A release (or release rollback) no one drives after a restart ends with every member on
    one healthy slot, all on the same side: all new when every member was switched and is
    healthy, else all old where every old version can serve, else all new where every new one
    can; otherwise a person is asked."""
    from commands.recovery import read_settled

    members = rows.members(d.store, row)
    now = d.clock()
    for m in members:
        for s in rows.steps(d.store, m["id"]):
            if s["status"] == "running":
                d.persist(lambda s=s: rows.finish_step(d.store, s["id"], "failed", "interrupted: no one was driving this step"))
    parent_steps = rows.steps(d.store, row["id"])
    for s in parent_steps:
        if s["status"] == "running":
            d.persist(lambda s=s: rows.finish_step(d.store, s["id"], "failed", "interrupted: no one was driving this step"))
    member_steps = sorted((s for m in members for s in rows.steps(d.store, m["id"])), key=lambda s: s["id"])
    last = (parent_steps[-1]["name"] if parent_steps else None) or (member_steps[-1]["name"] if member_steps else "start")
    # A rollback's fast flip has no steps; one through the pipeline runs every step, like a release.
    rollback_kind = row["kind"] == "rollback" and not member_steps
    reached_switch = rollback_kind or last in ("shift", "bake")
    started = [m for m in members if m["green_slot"]]
    if not started:
        for m in members:
            move(d.store, m["id"], "running", "failed", finished_at=now, outcome="the bot restarted before the release began")
        move(d.store, row["id"], "running", "failed", finished_at=now,
             outcome="the bot restarted before the release began; nothing was changed")
        _tell(d, row, "the bot restarted before the release began; nothing was changed. Request it again when ready.")
        return "nothing to undo"
    seen = {}
    for m in started:
        traffic = read_settled(d, m["service"], m["env"])
        if traffic is None:
            _attention(d, row, members, f"recovery found the router of {m['service']} not answering during *{last}*")
            return "needs attention: router down"
        platform = d.platform_for(m["service"], m["env"])
        green = traffic.slot(m["green_slot"])
        green_new = green.running and green.version == m["version"]
        on_green = green_new and traffic.weights.get(m["green_slot"], 0) == 100
        green_ok = green_new and d.traffic.probe(platform, m["green_slot"], probes=d.traffic.probes).ok
        blue = traffic.slot(m["blue_slot"]) if m["blue_slot"] else None
        blue_ok = bool(blue and blue.running and blue.version == m["blue_version"]
                       and d.traffic.probe(platform, m["blue_slot"], probes=d.traffic.probes).ok)
        nothing_before = m["blue_slot"] is None and traffic.slot(m["green_slot"]).weight == 0
        seen[m["id"]] = (on_green, green_ok, blue_ok or nothing_before)
    all_new = len(started) == len(members) and all(seen[m["id"]][0] and seen[m["id"]][1] for m in started)
    bake = d.cfg.environments[row["env"]].bake_time.total_seconds()
    if all_new and reached_switch and row["kind"] == "release" and last == "bake" and bake > 0:
        d.persist(lambda: audit.record(d.store, actor="recess", command="recovery", action="release.recovered",
                                       target=f"deploy:{row['id']}", after={"result": "bake resumed"}))
        _tell(d, row, "the bot restarted during *bake*. Every member is 100% on its new version and healthy: "
                      "watching them again for the bake time before the release is called done.")
        run = ReleaseRun(d, row["id"])
        d.running_here.update(run.ids)
        d.run_async(run.resume_bake)
        return "bake resumed"
    if all_new and reached_switch:
        _stand(d, row, members, last)
        return "finished: all new"
    if rollback_kind and all(seen[m["id"]][2] for m in started):
        # A rollback that had not flipped every member: the ones it flipped go back, and every
        # kept version stays up, so the rollback can simply be clicked again.
        stuck, done = [], []
        for m in started:
            try:
                if d.traffic.read(m["service"], m["env"]).slot(m["green_slot"]).weight > 0:
                    d.traffic.route(m["service"], m["env"], to=m["blue_slot"], version=m["blue_version"], owner=m["id"],
                                    probes=d.traffic.probes)
                    done.append(m["service"])
            except PlatformError as exc:
                stuck.append(f"{m['service']}: {exc}")
        if stuck:
            _attention(d, row, members, f"recovery of the release rollback could not put every member back: {'; '.join(stuck)}")
            return "needs attention: a member refused"
        for m in members:
            move(d.store, m["id"], "running", "failed", finished_at=now,
                 outcome="the bot restarted before the rollback flipped every member; nothing changed")
        move(d.store, row["id"], "running", "failed", finished_at=now,
             outcome="the bot restarted before the rollback flipped every member; nothing changed")
        back = f" ({', '.join(done)} flipped back)" if done else ""
        _tell(d, row, f"the bot restarted before the rollback of release {row['service']} flipped every member: every "
                      f"member still serves the release's version{back}, and the previous versions are still kept. "
                      f"Click Roll back again if it is still needed.")
        return "rollback not done"
    if all(seen[m["id"]][2] for m in started):
        stuck, done = [], []
        for m in reversed(started):
            try:
                restored = d.traffic.back_to(m["service"], m["env"], blue=m["blue_slot"], blue_version=m["blue_version"],
                                             green=m["green_slot"], green_version=m["version"], owner=m["id"])
                done.append(f"{m['service']}: {restored.text}")
            except (NeedsAttention, TrafficRefused) as exc:
                stuck.append(f"{m['service']}: {exc}")
        if stuck:
            _attention(d, row, members, f"recovery during *{last}* could not put every member back: {'; '.join(stuck)}")
            return "needs attention: a member refused"
        what = "rollback" if rollback_kind else "release"
        for m in members:
            move(d.store, m["id"], "running", "failed", finished_at=now, outcome=f"bot restarted during {last}; {what} undone")
        move(d.store, row["id"], "running", "failed", finished_at=now,
             outcome=f"bot restarted during {last}; every member back on the version it ran before")
        d.persist(lambda: audit.record(d.store, actor="recess", command="recovery", action="release.recovered",
                                       target=f"deploy:{row['id']}", after={"result": "all old", "step": last}))
        old = "the versions the rollback started from" if rollback_kind else "the versions they ran before"
        _tell(d, row, f"the bot restarted during *{last}*, before every member was switched and checked. All members are "
                      f"back on {old}: {'; '.join(done)}. Request it again when ready.")
        return "all old"
    if reached_switch and len(started) == len(members) and all(seen[m["id"]][1] for m in started):
        try:
            d.traffic.route_together([Move(m["service"], m["env"], m["green_slot"], m["version"], owner=m["id"])
                                      for m in started], probes=d.traffic.probes)
        except PlatformError as exc:
            _attention(d, row, members, f"recovery during *{last}*: an old version cannot serve and the new ones "
                                        f"refused the traffic ({exc})")
            return "needs attention: green refused"
        _stand(d, row, members, last, why="an old version was not healthy, every new one is")
        return "finished: all new (old unhealthy)"
    _attention(d, row, members, f"recovery after a restart during *{last}* found no side on which every member is healthy")
    return "needs attention: no healthy side"


def _stand(d: Deployer, row: dict[str, Any], members: list[dict[str, Any]], last: str, why: str = "") -> None:
    now = d.clock()
    if row["kind"] == "rollback":
        rollback_stands(d, row, members, "finished by recovery after a restart")
        _tell(d, row, "the bot restarted during the rollback's flip. Every member was already on its previous "
                      "version and healthy, so the rollback stands.")
        return
    retire_at = now + d.cfg.environments[row["env"]].keep_blue
    for m in members:
        move(d.store, m["id"], "running", "succeeded", finished_at=now, traffic_at=m["traffic_at"] or now,
             blue_retire_at=retire_at, outcome=f"{m['version']} live (release finished by recovery after a restart)")
        d.persist(lambda m=m: d.store.execute(
            "UPDATE deploys SET blue_retired = 1 WHERE service = ? AND env = ? AND id < ? AND blue_retired = 0",
            (m["service"], m["env"], m["id"])))
        d.arm(f"retire-{m['id']}", retire_at, d.retire_due)
    move(d.store, row["id"], "running", "succeeded", finished_at=now, traffic_at=row["traffic_at"] or now,
         outcome=f"{row['version']} live (finished by recovery after a restart)")
    d.persist(lambda: audit.record(d.store, actor="recess", command="recovery", action="release.recovered",
                                   target=f"deploy:{row['id']}", after={"result": "all new", "step": last}))
    because = why or "every member was already switched and is healthy"
    _tell(d, row, f"the bot restarted during *{last}*. All members are on their new versions ({because}), "
                  f"so the release stands.")


def _attention(d: Deployer, row: dict[str, Any], members: list[dict[str, Any]], saw: str) -> None:
    for m in members:
        move(d.store, m["id"], "running", ATTENTION, finished_at=d.clock(), outcome=f"needs attention: {saw}"[:500])
    end_attention(d, row, saw, who="recovery of ")


def _tell(d: Deployer, row: dict[str, Any], text: str) -> None:
    d.notify.update_card(row["id"])
    d.notify.thread(row["id"], f":recycle: Recovery: {text}", broadcast=True)


def resolve_attention(d: Deployer, row: dict[str, Any]) -> str | None:
    """Closes a release that needed attention once none of its members does any more."""
    members = rows.members(d.store, row)
    if any(m["status"] in ("running", ATTENTION) for m in members):
        return None
    ok = all(m["status"] == "succeeded" for m in members)
    if not move(d.store, row["id"], ATTENTION, "succeeded" if ok else "failed", finished_at=d.clock(),
                outcome="resolved after needing attention: " + ", ".join(f"{m['service']} {m['status']}" for m in members)):
        return None
    d.notify.update_card(row["id"])
    d.notify.thread(row["id"], ":white_check_mark: Resolved: no member needs attention any more; the release's services are "
                               "free for deploys again.", broadcast=True)
    return "resolved"
