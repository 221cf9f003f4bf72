"""Deploy requests, approvals and the window queue: everything between `/deploy` and the pipeline.

A deploy moves `pending -> approved -> queued -> running -> succeeded | failed | rolled_back`,
or ends `rejected` / `cancelled`; a running deploy whose traffic recess could not bring to a known
good state becomes `needs_attention` (it keeps the service held until a person, or the deploy
watchdog, sees one healthy slot serving). Each move is one conditional update (storage.deploys.transition),
so double clicks and Slack retries act once. Cards, thread lines and history are derived from the
stored rows. No Slack imports: what should be said goes through a Notifier.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from commands.config import Config, format_duration
from commands.freezes import current_calendar
from commands.policy import Policy
from commands.states import ATTENTION, TERMINAL, TRANSITIONS, log_event, move, requester_text
from commands.traffic import TrafficDoor
from platforms.base import Platform, format_weights
from storage import audit
from storage import deploys as rows
from storage.db import Store

log = logging.getLogger("recess.deploys")

# Platforms whose router (HAProxy, platforms/haproxy.py) recess runs itself, so its watchdog
# watches it.
ROUTED_PLATFORMS = ("local", "docker")

__all__ = ["ATTENTION", "TERMINAL", "TRANSITIONS", "ConflictError", "DeployError", "Deployer", "HeldError", "Notifier",
           "UnknownTarget", "move", "requester_text"]

VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
class DeployError(ValueError):
    """A refused request or click; the message is shown to the user (ephemeral) and nothing changed."""


class UnknownTarget(DeployError):
    """The request names a service, environment or version recess does not know (HTTP 400)."""


class ConflictError(DeployError):
    """The request is well formed but clashes with what is stored: the version is live or already
    requested (HTTP 409)."""


class HeldError(DeployError):
    """Another deploy holds the service; `holder` is its row (so a queued one can be cancelled)."""

    def __init__(self, message: str, holder: dict[str, Any]) -> None:
        super().__init__(message)
        self.holder = holder


class Notifier(Protocol):
    """What the deploy domain says; the bot delivers it to Slack through its outbox."""

    def post_card(self, deploy_id: int) -> None: ...
    def update_card(self, deploy_id: int) -> None: ...
    def thread(self, deploy_id: int, text: str, *, broadcast: bool = False, offer_rollback: bool = False) -> None:
        """A reply in the deploy's thread; `offer_rollback` adds the Roll back button under it."""
    def channel(self, text: str) -> None: ...


@dataclass
class Deployer:
    """The deploy domain with its collaborators. One per running bot."""

    cfg: Config
    store: Store
    policy: Policy
    notify: Notifier
    platform_for: Callable[[str, str], Platform]
    clock: Callable[[], dt.datetime]
    run_async: Callable[[Callable[[], None]], None]
    arm: Callable[[str, dt.datetime, Callable[[], None]], None] = lambda job_id, at, fn: None
    sleep: Callable[[float], None] = field(default=lambda s: threading.Event().wait(s))
    monotonic: Callable[[], float] = time.monotonic
    _lock: threading.RLock = field(default_factory=threading.RLock)
    # Deploys whose pipeline (or rollback) runs in this process now; the deploy watchdog recovers
    # every other `running` deploy, since no one is driving it.
    running_here: set[int] = field(default_factory=set)
    # Stop requests for running deploys, by deploy id: the approver who pressed Stop. The pipeline
    # checks it at every step and inside its waiting loops.
    stop_requests: dict[int, str] = field(default_factory=dict)
    # How many times the router watchdog revived each (service, env)'s router: the bake watch
    # fails a bake during which its router died, even when the watchdog was quicker than it.
    router_revivals: dict[tuple[str, str], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Late-bound sleep and clock: tests replace them on the Deployer after construction.
        self.traffic = TrafficDoor(
            self.platform_for,
            in_use=lambda service, env, owner: [
                r for r in rows.others_active(self.store, service, env, owner or 0) if r["status"] in ("running", ATTENTION)
            ],
            sleep=lambda s: self.sleep(s),
            monotonic=lambda: self.monotonic(),
        )

    def persist(self, fn: Callable[[], Any]) -> Any:
        """A write the pipeline, rollback or recovery must not lose: retried while another process
        holds the database's write lock (storage.db.Store.retrying)."""
        return self.store.retrying(fn, sleep=self.sleep, clock=self.monotonic)

    # -- requests ---------------------------------------------------------------------------

    def target(self, service: str, env: str | None) -> tuple[str, str]:
        """The service and environment a command names (ENV defaults to the first one it deploys to)."""
        if service not in self.cfg.services:
            known = ", ".join(sorted(self.cfg.services)) or "none configured"
            releases = f"; releases: {', '.join(sorted(self.cfg.releases))}" if self.cfg.releases else ""
            raise UnknownTarget(f"unknown service `{service}` (known: {known}{releases})")
        envs = self.cfg.service_environments(service)
        env = env or (self.cfg.default_environment if self.cfg.default_environment in envs else envs[0])
        if env not in self.cfg.environments:
            raise UnknownTarget(f"`{service}` is not deployed to `{env}`: unknown environment `{env}` "
                              f"(known: {', '.join(self.cfg.environments)})")
        if env not in envs:
            raise UnknownTarget(f"`{service}` is not deployed to `{env}` (it deploys to {', '.join(envs)})")
        return service, env

    def parse_request(self, service: str, version: str, env: str | None) -> tuple[str, str, str]:
        service, env = self.target(service, env)
        if not VERSION.fullmatch(version):
            raise UnknownTarget(f"`{version}` is not a version: use letters, digits, '.', '_', '+' or '-', like v2.4.1")
        return service, version, env

    def request(
        self,
        *,
        actor: str,
        service: str,
        version: str,
        env: str | None = None,
        now_reason: str | None = None,
        canary: list[int] | None = None,
        contract: bool = False,
        command: str = "/deploy",
        sha: str | None = None,
        committed_at: dt.datetime | None = None,
        requested_by: str | None = None,
        on_record: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Stores a deploy request and posts its card. `sha`, `committed_at` and `requested_by`
        say where the change came from (a CI job names them); `on_record(deploy_id)` runs inside
        the request's transaction (the REST API stores its idempotency key there)."""
        service, version, env = self.parse_request(service, version, env)
        self.check_request_options(actor, canary, now_reason)
        from commands.railway import request_problem

        problem = request_problem(self.cfg, service, env, canary=canary)  # Railway: no canary, a token
        if problem:
            raise DeployError(problem)
        lint = self.migration_report(service, env)
        env_cfg = self.cfg.environments[env]
        now = self.clock()
        blocked_now = env_cfg.respect_windows and not current_calendar(self.cfg, self.store).is_safe(now)
        def record() -> tuple[int, int]:
            with self.store.transaction():
                for open_ in rows.open_requests(self.store, service, env):
                    if open_["status"] == "pending" and now - open_["created_at"] > env_cfg.request_expiry:
                        move(self.store, open_["id"], "pending", "cancelled", finished_at=now, outcome="expired: not approved in time")
                        audit.record(self.store, actor="recess", command=command, action="deploy.expire",
                                     target=f"deploy:{open_['id']}", before={"status": "pending"}, after={"status": "cancelled"})
                        self.notify.update_card(open_["id"])
                    elif open_["version"] == version:
                        raise ConflictError(f"{version} of {service} in {env} is already requested as deploy #{open_['id']} "
                                          f"({open_['status']}); see its card")
                live = rows.live(self.store, service, env)
                current = live["version"] if live else None
                if current == version:
                    raise ConflictError(f"{version} is already live on {service} in {env}")
                if lint is not None:
                    lint["contract_allowed"] = bool(contract and (live is None or live["blue_retired"]))
                needed = env_cfg.approvals
                if now_reason and blocked_now:
                    needed += 1  # overriding the school calendar costs one more approval
                if lint and lint["contract_allowed"] and lint["contract"]:
                    needed += 1
                deploy_id = rows.insert(
                    self.store,
                    kind="deploy",
                    service=service,
                    env=env,
                    version=version,
                    previous_version=current,
                    requester=actor,
                    status="pending",
                    now_reason=now_reason.strip() if now_reason else None,
                    canary=canary,
                    contract=int(contract),
                    approvals_needed=needed,
                    lint=lint,
                    channel=self.cfg.bot.channel,
                    created_at=now,
                    click_token=new_click_token(),
                    sha=sha,
                    committed_at=committed_at.astimezone(dt.UTC).isoformat() if committed_at else None,
                    requested_by=requested_by,
                )
                audit.record(
                    self.store, actor=actor, command=command, action="deploy.request", target=f"deploy:{deploy_id}",
                    after={"service": service, "env": env, "version": version, "previous": current,
                           "now_reason": now_reason, "canary": canary, "approvals_needed": needed,
                           **({"sha": sha, "requested_by": requested_by} if sha or requested_by else {})},
                    at=now,
                )
                if on_record is not None:
                    on_record(deploy_id)
            return deploy_id, needed

        with self._lock:
            # Waits out another process holding the write lock: the request is answered once stored.
            deploy_id, needed = self.store.retrying(record)
        log_event("requested", rows.get(self.store, deploy_id), actor=actor, approvals_needed=needed)
        self.notify.post_card(deploy_id)
        if needed == 0 and not self.blocking_findings(deploy_id):
            self._approved(deploy_id, None)
        return rows.get(self.store, deploy_id)

    def check_request_options(self, actor: str, canary: list[int] | None, now_reason: str | None) -> None:
        """Who may request, and the options every request shares (a deploy's or a release's)."""
        decision = self.policy.can_deploy(actor)
        if not decision:
            raise DeployError(decision.reason)
        if canary is not None:
            if not canary or any(not 0 < p < 100 for p in canary) or canary != sorted(set(canary)):
                raise DeployError("`--canary` takes rising percentages between 1 and 99, like `--canary 10,50`")
        if now_reason is not None and not now_reason.strip():
            raise DeployError("`--now` needs a reason, like `--now \"fixes the login outage\"`")

    def migration_report(self, service: str, env: str) -> dict[str, Any] | None:
        """The lint of the service's pending migrations, stored on the request and shown on the card."""
        svc = self.cfg.services[service]
        if not svc.migrations:
            return None
        from commands import migrations
        from storage import applied_migrations

        try:
            pending = migrations.pending_migrations(self.cfg.path(svc.migrations), applied_migrations.applied(self.store, service, env))
            report = migrations.lint_paths(pending, svc.pg_version) if pending else None
        except migrations.LintUsageError as exc:
            raise DeployError(f"cannot lint {service}'s migrations: {exc}") from None
        findings = [{**f.to_json(), "phase": f.phase} for f in (report.findings if report else ())]
        return {
            "pending": [p.name for p in pending],
            "findings": findings,
            "contract": any(f["phase"] == "contract" for f in findings),
        }

    # -- decisions on the card ------------------------------------------------------------------

    def _load_for_click(self, deploy_id: int, card_ts: str | None) -> dict[str, Any]:
        d = rows.get(self.store, deploy_id)
        if d is None:
            raise DeployError(f"deploy #{deploy_id} does not exist")
        if card_ts and d["card_ts"] and card_ts != d["card_ts"]:
            raise DeployError(f"this card is not deploy #{deploy_id}'s card; use the newest card in <#{d['channel']}>")
        return d

    def check_button(self, deploy_id: int, token: str | None) -> dict[str, Any]:
        """A click must carry the token stored with its deploy: a button from another card (or a
        forged value) is refused, whatever message or container it came from."""
        d = rows.get(self.store, deploy_id)
        if d is None:
            raise DeployError(f"deploy #{deploy_id} does not exist")
        expected = d.get("click_token")
        if expected and not (token and hmac.compare_digest(expected, token)):
            raise DeployError(f"this button does not belong to deploy #{deploy_id}'s card; "
                              f"use the buttons on its card in <#{d['channel']}>")
        return d

    def blocking_findings(self, deploy_id: int) -> list[dict[str, Any]]:
        d = rows.get(self.store, deploy_id)
        lint = (d or {}).get("lint") or {}
        allowed = bool(d and d["contract"] and lint.get("contract_allowed"))
        return [f for f in lint.get("findings", []) if f["severity"] == "block" and not (allowed and f.get("phase") == "contract")]

    def approve(self, deploy_id: int, actor: str, *, card_ts: str | None = None) -> str:
        d = self._load_for_click(deploy_id, card_ts)
        if d["status"] != "pending":
            raise DeployError(f"deploy #{deploy_id} is already {d['status']}; nothing to approve")
        expiry = self.cfg.environments[d["env"]].request_expiry
        if self.clock() - d["created_at"] > expiry:
            if move(self.store, deploy_id, "pending", "cancelled", finished_at=self.clock(),
                               outcome=f"expired: not approved within {format_duration(expiry)}"):
                audit.record(self.store, actor="recess", command="button:approve", action="deploy.expire",
                             target=f"deploy:{deploy_id}", before={"status": "pending"}, after={"status": "cancelled"})
                self.notify.update_card(deploy_id)
            raise DeployError(f"deploy #{deploy_id} expired: it was not approved within {format_duration(expiry)}. "
                              f"Request it again with `/deploy {d['service']} {d['version']} {d['env']}`")
        decision = self.policy.can_approve(actor, d["requester"])
        if not decision:
            raise DeployError(decision.reason)
        blocking = self.blocking_findings(deploy_id)
        if blocking:
            f = blocking[0]
            raise DeployError(
                f"approval is refused while {len(blocking)} migration {'finding blocks' if len(blocking) == 1 else 'findings block'}: "
                f"{f['file']}:{f['line']} {f['rule']}. {f.get('fix', '')}"
            )
        def record() -> None:
            with self.store.transaction():
                now_status = rows.get(self.store, deploy_id)["status"]
                if now_status != "pending":
                    raise DeployError(f"deploy #{deploy_id} is already {now_status}; nothing to approve")
                if not rows.add_approval(self.store, deploy_id, actor):
                    raise DeployError("you already approved this deploy; another approver is needed")
                audit.record(self.store, actor=actor, command="button:approve", action="deploy.approve",
                             target=f"deploy:{deploy_id}", before={"status": "pending"},
                             after={"approvals": rows.approvers(self.store, deploy_id)}, at=self.clock())

        self.store.retrying(record)  # a database another process holds is waited out, not lost
        needed = self.approvals_needed_now(rows.get(self.store, deploy_id))
        have = len(rows.approvers(self.store, deploy_id))
        if have >= needed:
            self._approved(deploy_id, actor)
            return "approved"
        self.notify.update_card(deploy_id)
        return f"approval {have} of {needed} recorded"

    def reject(self, deploy_id: int, actor: str, *, card_ts: str | None = None) -> None:
        d = self._load_for_click(deploy_id, card_ts)
        decision = self.policy.can_reject(actor, d["requester"])
        if not decision:
            raise DeployError(decision.reason)
        if not move(self.store, deploy_id, "pending", "rejected", actor=actor, finished_at=self.clock(), outcome=f"rejected by <@{actor}>"):
            raise DeployError(f"deploy #{deploy_id} is already {rows.get(self.store, deploy_id)['status']}; it cannot be rejected")
        audit.record(self.store, actor=actor, command="button:reject", action="deploy.reject", target=f"deploy:{deploy_id}",
                     before={"status": "pending"}, after={"status": "rejected"}, at=self.clock())
        self.notify.update_card(deploy_id)
        self.notify.thread(deploy_id, f":no_entry_sign: Rejected by <@{actor}>.")

    def cancel(self, deploy_id: int, actor: str, *, card_ts: str | None = None) -> None:
        d = self._load_for_click(deploy_id, card_ts)
        decision = self.policy.can_cancel(actor, d["requester"])
        if not decision:
            raise DeployError(decision.reason)
        before = d["status"]
        if not move(self.store, deploy_id, ("pending", "approved", "queued"), "cancelled", actor=actor, finished_at=self.clock(), outcome=f"cancelled by <@{actor}>"):
            now_status = rows.get(self.store, deploy_id)["status"]
            raise DeployError(f"deploy #{deploy_id} is {now_status}; only pending or queued deploys can be cancelled")
        audit.record(self.store, actor=actor, command="button:cancel", action="deploy.cancel", target=f"deploy:{deploy_id}",
                     before={"status": before}, after={"status": "cancelled"}, at=self.clock())
        self.notify.update_card(deploy_id)
        self.notify.thread(deploy_id, f":wastebasket: Cancelled by <@{actor}>.")

    # -- the queue ----------------------------------------------------------------------------

    def approvals_needed_now(self, d: dict[str, Any]) -> int:
        """The approvals the deploy needs if it started now. A `--now` deploy needs one more than
        usual whenever it would run inside school hours or a freeze: counted when approvals are
        counted, and again when it starts (it may have been requested after school and approved
        during class)."""
        needed = d["approvals_needed"]
        if d["now_reason"] and self.cfg.environments[d["env"]].respect_windows:
            if not current_calendar(self.cfg, self.store).is_safe(self.clock()):
                needed = max(needed, self._base_approvals(d) + 1)
        if needed != d["approvals_needed"]:
            self.store.retrying(lambda: rows.update(self.store, d["id"], approvals_needed=needed))
        return needed

    def _base_approvals(self, d: dict[str, Any]) -> int:
        base = self.cfg.environments[d["env"]].approvals
        lint = d.get("lint") or {}
        if lint.get("contract_allowed") and lint.get("contract"):
            base += 1
        return base

    def _approved(self, deploy_id: int, actor: str | None) -> None:
        if not move(self.store, deploy_id, "pending", "approved", actor=actor or "recess", approved_at=self.clock()):
            return  # someone else's click got there first
        d = rows.get(self.store, deploy_id)
        self.notify.thread(deploy_id, f":white_check_mark: Approved by <@{actor}>." if actor
                           else f":white_check_mark: No approval needed in {d['env']} (`approvals = 0`).")
        self.schedule(deploy_id)
        d = rows.get(self.store, deploy_id)
        holder = self.held(d["service"], d["env"])
        if d["status"] == "approved" and holder and holder["id"] != deploy_id:
            self.notify.update_card(deploy_id)
            self.notify.thread(deploy_id, f":hourglass: Waits for deploy #{holder['id']} ({holder['version']}, "
                                          f"{holder['status'].replace('_', ' ')}): it starts as soon as the service is free, "
                                          f"in the order approvals completed.")

    def schedule(self, deploy_id: int) -> None:
        """Passes an approved (or queued) deploy through the window gate, then starts whichever
        waiting deploy of its service comes first, once the service is free."""
        d = rows.get(self.store, deploy_id)
        if d is None or d["status"] not in ("approved", "queued"):
            return
        if self._window_gate(d):
            self.start_next(d["service"], d["env"])

    def _window_gate(self, d: dict[str, Any]) -> bool:
        """True when `d` may start now as far as the calendar and its approvals go; otherwise it was
        queued for the next safe window, cancelled, or sent back for its extra `--now` approval."""
        deploy_id = d["id"]
        now = self.clock()
        env_cfg = self.cfg.environments[d["env"]]
        if not env_cfg.respect_windows:
            return True
        calendar = current_calendar(self.cfg, self.store)
        if d["now_reason"]:
            if calendar.is_safe(now):
                return True
            needed = self.approvals_needed_now(d)
            have = len(rows.approvers(self.store, deploy_id))
            if have >= needed:
                return True
            if move(self.store, deploy_id, ("approved", "queued"), "pending"):
                self.notify.update_card(deploy_id)
                self.notify.thread(deploy_id, f":rotating_light: This `--now` deploy would run during school hours or a freeze, "
                                              f"which needs {needed} approvals; it has {have}. One more approver must approve it.",
                                   broadcast=True)
            return False
        if calendar.is_safe(now):
            return True
        nxt = calendar.next_safe_window(now)
        if nxt is None:
            move(self.store, deploy_id, ("approved", "queued"), "cancelled", finished_at=now, outcome="no safe window within 400 days")
            self.notify.update_card(deploy_id)
            self.notify.thread(deploy_id, ":warning: No safe window in the next 400 days; the deploy was cancelled.", broadcast=True)
            return False
        requeue = d["status"] == "queued"
        if d["status"] == "queued" and d["queued_until"] == nxt:
            return False
        if move(self.store, deploy_id, ("approved", "queued"), "queued", queued_until=nxt):
            self.arm(f"deploy-{deploy_id}", nxt, self.run_due)
            self.notify.update_card(deploy_id)
            if requeue:
                self.notify.thread(deploy_id, ":hourglass: The window closed again (a freeze or school hours); queued for the next safe window.")
            else:
                self.notify.thread(deploy_id, ":hourglass: Queued until the last school's day ends.")
        return False

    def start_next(self, service: str, env: str) -> int | None:
        """Starts the first waiting deploy of the service (first approved, first started) when no
        deploy holds its slots and the window allows; returns its id. The only place a deploy
        request moves to `running`."""
        with self._lock:
            if self.held(service, env):
                return None
            now = self.clock()
            for d in rows.waiting(self.store, service, env):
                if d["status"] == "queued" and d["queued_until"] and d["queued_until"] > now:
                    continue  # waits for its window
                if not self._window_gate(d):
                    continue
                if d["kind"] == "release":
                    from commands import releases

                    if releases.begin(self, d, now):
                        ids = {d["id"], *(m["id"] for m in rows.members(self.store, d))}
                        self.running_here.update(ids)  # before the hand-off: the watchdog must not recover them
                        self.notify.update_card(d["id"])
                        if rows.get(self.store, d["id"])["status"] == "running":
                            self.run_async(lambda release_id=d["id"]: releases.run(self, release_id))
                        else:
                            self.running_here.difference_update(ids)
                        return d["id"]
                    continue
                previous = (rows.live(self.store, service, env) or {}).get("version")
                if move(self.store, d["id"], ("approved", "queued"), "running", started_at=now, previous_version=previous):
                    self.running_here.add(d["id"])  # before the hand-off: the watchdog must not recover it
                    self.notify.update_card(d["id"])
                    self.run_async(lambda deploy_id=d["id"]: self.run_pipeline(deploy_id))
                    return d["id"]
        return None

    def held(self, service: str, env: str) -> dict[str, Any] | None:
        """The deploy that holds the service, or for a release, the release or any of its members."""
        if service in self.cfg.releases:
            from commands.releases import held_by

            return held_by(self, service, env)
        return rows.holder(self.store, service, env)

    def start_waiting(self) -> None:
        """Starts the next waiting deploy of every service that is free (the sweeps' net)."""
        for service, env in {(d["service"], d["env"]) for d in rows.with_status(self.store, "approved", "queued")}:
            try:
                self.start_next(service, env)
            except Exception:
                log.exception("%s/%s: could not start the next waiting deploy", service, env)

    def stop(self, deploy_id: int, actor: str) -> None:
        """Stop on a running deploy's card: the pipeline aborts at its next check (traffic back on
        blue, green stopped). Approvers only."""
        d = rows.get(self.store, deploy_id)
        if d is None:
            raise DeployError(f"deploy #{deploy_id} does not exist")
        if not self.policy.is_approver(actor):
            raise DeployError("only approvers ([access] approvers) can stop a running deploy")
        if d["status"] != "running" or d["kind"] not in ("deploy", "release") or rows.is_member(d):
            raise DeployError(f"deploy #{deploy_id} is {d['status'].replace('_', ' ')}; only a running deploy can be stopped")
        if deploy_id in self.stop_requests:
            raise DeployError(f"deploy #{deploy_id} is already stopping (asked by <@{self.stop_requests[deploy_id]}>)")
        self.stop_requests[deploy_id] = actor
        self.store.retrying(lambda: rows.update(self.store, deploy_id, stopped_by=actor))
        audit.record(self.store, actor=actor, command="button:stop", action="deploy.stop", target=f"deploy:{deploy_id}",
                     before={"status": "running"}, after={"stopping": True}, at=self.clock())
        self.notify.thread(deploy_id, f":octagonal_sign: <@{actor}> pressed Stop: traffic goes back to blue and green is "
                                      f"stopped at the pipeline's next check.", broadcast=True)

    def run_due(self) -> None:
        """Starts every queued deploy whose time has come (re-checking the window), and the next
        waiting deploy of every service that became free."""
        now = self.clock()
        for d in rows.with_status(self.store, "queued"):
            if d["queued_until"] is None or d["queued_until"] <= now:
                self.schedule(d["id"])
        self.start_waiting()

    def rearm(self) -> None:
        """At start-up: every queued deploy gets its timer back; overdue ones are checked now."""
        for d in rows.with_status(self.store, "queued"):
            if d["queued_until"] and d["queued_until"] > self.clock():
                self.arm(f"deploy-{d['id']}", d["queued_until"], self.run_due)
        self.run_due()

    def run_pipeline(self, deploy_id: int) -> None:
        from commands.pipeline import Pipeline

        try:
            Pipeline(self, deploy_id).run()
        finally:
            self.stop_requests.pop(deploy_id, None)
            row = rows.get(self.store, deploy_id)
            if row is not None:
                self.start_next(row["service"], row["env"])  # the next deploy in the queue, if any
                for release in self.cfg.releases_with(row["service"]):
                    self.start_next(release, row["env"])  # a release that waited for this service

    # -- keeping blue, then retiring it --------------------------------------------------------

    def retire_due(self) -> None:
        """Stops the kept (blue) version of every deploy whose rollback window has passed."""
        now = self.clock()
        for d in rows.due_retirements(self.store):
            if d["blue_retire_at"] > now:
                continue
            self.retire_blue(d)

    def retire_blue(self, d: dict[str, Any]) -> None:
        """Stops the kept slot through the door, which re-checks everything under the service's
        lock: a rollback that flipped traffic onto it in the meantime wins, and the slot stays."""
        from commands.traffic import TrafficRefused

        kept_slot = d["blue_slot"]
        if not kept_slot:
            rows.update(self.store, d["id"], blue_retired=1)
            return
        if rows.others_active(self.store, d["service"], d["env"], d["id"], rows.HOLDING):
            return  # a deploy or rollback is using the slots now: the 30 s sweep tries again later
        try:
            done = self.traffic.stop(d["service"], d["env"], kept_slot, d["blue_version"], owner=d["id"], drain_timeout=30)
        except TrafficRefused as exc:
            if exc.kind in ("other_version", "not_running"):
                self.persist(lambda: rows.update(self.store, d["id"], blue_retired=1))  # the slot moved on
            else:
                log.info("deploy %s: blue not retired yet: %s", d["id"], exc)  # serving, in use, router down
            return
        except Exception as exc:  # the platform is away: say so, the next deploy replaces the slot anyway
            log.warning("deploy %s: cannot retire blue: %s", d["id"], exc)
            self.notify.thread(d["id"], f":warning: Could not retire blue ({d['blue_version']}): {exc}")
            return
        cur = self.persist(lambda: self.store.execute(
            "UPDATE deploys SET blue_retired = 1 WHERE id = ? AND blue_retired = 0", (d["id"],)))
        if cur.rowcount != 1 or "already stopped" in done:
            return
        audit.record(self.store, actor="recess", command="scheduler", action="blue.retire", target=f"deploy:{d['id']}",
                     before={"slot": kept_slot, "version": d["blue_version"]}, after=None)
        self.notify.update_card(d["id"])
        self.notify.thread(d["id"], f":sunrise: Blue ({d['blue_version']}) retired after the rollback window; "
                                    f"`/rollback {d['service']}` now redeploys {d['blue_version']} through the pipeline.")

    def rearm_retirements(self) -> None:
        for d in rows.due_retirements(self.store):
            self.arm(f"retire-{d['id']}", d["blue_retire_at"], self.retire_due)
        self.retire_due()

    # -- watchdogs ----------------------------------------------------------------------------

    def watch_deploys(self) -> None:
        """Every `running` deploy that no pipeline of this process drives (its thread died, or it
        belonged to a process that is gone) is recovered; every `needs_attention` deploy is closed
        once one healthy slot serves everything again."""
        from commands import releases
        from commands.recovery import recover_all, resolve_attention

        recover_all(self)
        for row in rows.with_status(self.store, ATTENTION):
            try:
                if rows.is_release(row):
                    releases.resolve_attention(self, row)
                else:
                    resolve_attention(self, row)
            except Exception:
                log.exception("deploy %s: checking whether it still needs attention failed", row["id"])
        self.start_waiting()

    def watch_routers(self) -> list[tuple[str, str, Any]]:
        """Revives the dead router of any service whose platform runs one (local, docker)."""
        revived = []
        for service, spec in self.cfg.services.items():
            if spec.platform not in ROUTED_PLATFORMS:
                continue
            for env in self.cfg.service_environments(service):
                try:
                    revival = self.revive_router(service, env)
                except Exception:
                    log.exception("%s/%s: the router watchdog failed", service, env)
                    continue
                if revival is not None:
                    revived.append((service, env, revival))
        return revived

    def revive_router(self, service: str, env: str) -> Any:
        """Starts a dead router again with the weights it had, through the door, and tells the
        channel; None while it lives. Every revival (the watchdog's, the bake's, recovery's) is
        counted, so a bake during which the router died fails."""
        revival = self.traffic.revive_router(service, env)
        if revival is None:
            return None
        self.router_revivals[(service, env)] = self.router_revivals.get((service, env), 0) + 1
        spec = self.cfg.services[service]
        listen = getattr(getattr(spec, spec.platform, None), "listen", None) or "its public address"
        if revival.error:
            log.error("%s/%s: the router is dead and did not start again: %s", service, env, revival.error)
            self.notify.channel(f":rotating_light: The router of *{service}* in {env} is dead and could not be "
                                f"started again: {revival.error}. Every request to {listen} fails until it is.")
            return revival
        down = (f"down for at most {revival.down_for:.1f} s" if revival.down_for is not None
                else "down since before this recess process started")
        log.warning("%s/%s: the router had died; restarted with weights %s (%s)", service, env,
                    format_weights(revival.weights), down)
        self.notify.channel(f":rotating_light: The router of *{service}* in {env} died and was restarted with "
                            f"the weights it had ({format_weights(revival.weights)}); the public address "
                            f"{listen} was {down}.")
        return revival

    # -- reading ------------------------------------------------------------------------------

    def get(self, deploy_id: int) -> dict[str, Any] | None:
        return rows.get(self.store, deploy_id)

    def history(self, service: str | None = None, limit: int = 10) -> list[dict[str, Any]]:
        if service and service not in self.cfg.services and service not in self.cfg.releases:
            releases = f"; releases: {', '.join(sorted(self.cfg.releases))}" if self.cfg.releases else ""
            raise DeployError(f"unknown service `{service}` (known: {', '.join(sorted(self.cfg.services))}{releases})")
        return rows.history(self.store, service, limit)


def new_click_token() -> str:
    """The random token every button of a deploy's card carries (stored with the deploy)."""
    return secrets.token_urlsafe(12)
