"""The `railway` platform: deploys through Railway's public GraphQL API and lets Railway hand over.

Railway runs one deployment per service and environment. A new one takes the traffic only after
its healthcheck path answered 200 (Railway keeps the previous one for `overlapSeconds`), and it
cannot split traffic. recess does not pretend to run a router there: this driver says so with
`hands_over = True`, and maps the protocol's two slots onto Railway's deployments:

- the slot that serves is the deployment Railway routes to (weight 100, even while it is crashed,
  so the door knows traffic has to move away from it);
- the other slot is either the deployment in progress (running, weight 0) or the one that served
  before, which "runs" as long as Railway retains its image (`canRollback`): moving traffic to it
  is `deploymentRollback`, followed to SUCCESS.

Which slot name a deployment carries is recess's own bookkeeping (a small JSON file in the state
directory, like the local platform's pid files); everything else (which deployment serves, its
version, its status, whether it can be rolled back to) is read from Railway on every call.

    platform = RailwayPlatform("core", "production", spec, state_dir)
    platform.start("green", "v2")      # serviceInstanceUpdate(source.image) + serviceInstanceDeployV2
    platform.health("green")           # the deployment's status: SUCCESS is healthy and handed over

The client is a good API citizen: Retry-After and X-RateLimit-* are honoured (a rate limit of up
to `rate_limit_wait` is waited out), network errors and 5xx are retried with backoff, the token
never reaches a log line, and GraphQL errors become PlatformError in Railway's own words.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from platforms.base import (
    SLOTS,
    Health,
    PlatformError,
    Result,
    RouterStats,
    SlotState,
    Traffic,
    checked_weights,
    other_slot,
)

if TYPE_CHECKING:
    from commands.config import Service

log = logging.getLogger(__name__)

IN_PROGRESS = frozenset({"INITIALIZING", "QUEUED", "WAITING", "BUILDING", "DEPLOYING", "NEEDS_APPROVAL"})
SERVING = frozenset({"SUCCESS", "CRASHED", "SLEEPING"})  # what Railway routes to (a crashed one answers nothing)
ENDED_BADLY = frozenset({"FAILED", "CRASHED"})

# Every operation recess sends; tests/test_railway_platform.py validates each against Railway's
# published schema.
DEPLOYMENT_FIELDS = "id status canRollback createdAt meta"
STATUS_QUERY = f"""
query RecessStatus($serviceId: String!, $environmentId: String!, $projectId: String!) {{
  serviceInstance(serviceId: $serviceId, environmentId: $environmentId) {{
    latestDeployment {{ {DEPLOYMENT_FIELDS} }}
    activeDeployments {{ {DEPLOYMENT_FIELDS} }}
  }}
  deployments(first: 10, input: {{projectId: $projectId, serviceId: $serviceId, environmentId: $environmentId}}) {{
    edges {{ node {{ {DEPLOYMENT_FIELDS} }} }}
  }}
}}"""
DEPLOYMENT_QUERY = f"query RecessDeployment($id: String!) {{ deployment(id: $id) {{ {DEPLOYMENT_FIELDS} }} }}"
LATEST_QUERY = f"""
query RecessLatest($serviceId: String!, $environmentId: String!) {{
  serviceInstance(serviceId: $serviceId, environmentId: $environmentId) {{ latestDeployment {{ {DEPLOYMENT_FIELDS} }} }}
}}"""
UPDATE_MUTATION = """
mutation RecessSetSource($serviceId: String!, $environmentId: String!, $input: ServiceInstanceUpdateInput!) {
  serviceInstanceUpdate(serviceId: $serviceId, environmentId: $environmentId, input: $input)
}"""
DEPLOY_MUTATION = """
mutation RecessDeploy($serviceId: String!, $environmentId: String!, $commitSha: String) {
  serviceInstanceDeployV2(serviceId: $serviceId, environmentId: $environmentId, commitSha: $commitSha)
}"""
ROLLBACK_MUTATION = "mutation RecessRollback($id: String!) { deploymentRollback(id: $id) }"
CANCEL_MUTATION = "mutation RecessCancel($id: String!) { deploymentCancel(id: $id) }"
OPERATIONS = (STATUS_QUERY, DEPLOYMENT_QUERY, LATEST_QUERY, UPDATE_MUTATION, DEPLOY_MUTATION,
              ROLLBACK_MUTATION, CANCEL_MUTATION)

BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0)  # seconds between tries after a network error or a 5xx
RETRIED_MUTATION_STATUS = frozenset({502, 503, 504})  # the gateway answered: the mutation did not run


class RailwayClient:
    """Railway's GraphQL API over httpx, with rate limits honoured and failures retried."""

    def __init__(self, api_url: str, *, token_env: str, token_kind: str, rate_limit_wait: float = 300.0,
                 transport: httpx.BaseTransport | None = None, sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 timeout: float = 30.0) -> None:
        self.api_url = api_url
        self.token_env = token_env
        self.token_kind = token_kind
        self.rate_limit_wait = rate_limit_wait
        self.sleep = sleep
        self.monotonic = monotonic
        self.wall = wall
        self.http = httpx.Client(timeout=timeout, transport=transport)
        self.calls = 0  # GraphQL requests sent (retries included), for the benchmark
        self.waited = 0.0  # seconds spent waiting out rate limits and backoff
        self.api_seconds = 0.0  # seconds spent waiting for Railway's answers (the benchmark subtracts them)
        # Told about every rate-limit wait, in words (the pipeline posts it in the deploy's thread).
        self.on_wait: Callable[[str], None] | None = None
        self._not_before = 0.0  # monotonic instant before which no request is sent (X-RateLimit-Remaining: 0)
        self._lock = threading.Lock()

    def _headers(self) -> dict[str, str]:
        token = os.environ.get(self.token_env, "").strip()
        if not token:
            raise PlatformError(f"the Railway token variable {self.token_env} is not set in recess's environment")
        if self.token_kind == "account":
            return {"Authorization": f"Bearer {token}"}
        return {"Project-Access-Token": token}

    def _tell(self, text: str) -> None:
        if self.on_wait is not None:
            try:
                self.on_wait(text)
            except Exception:  # a thread line is never worth failing a deploy for
                log.exception("could not tell about a Railway rate-limit wait")

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self.waited += seconds
            self.sleep(seconds)

    def execute(self, query: str, variables: Mapping[str, Any], *, what: str) -> dict[str, Any]:
        """Sends one operation; returns its `data`. Raises PlatformError in words."""
        mutation = query.lstrip().startswith("mutation")
        headers = {**self._headers(), "Content-Type": "application/json"}
        body = {"query": query, "variables": dict(variables)}
        limited = 0.0  # rate-limit wait spent on this operation
        tries = 0
        while True:
            with self._lock:
                gap = self._not_before - self.monotonic()
            if gap > 0:
                if limited + gap > self.rate_limit_wait:
                    raise PlatformError(f"Railway's rate limit did not lift within {self.rate_limit_wait:.0f} s ({what})")
                limited += gap
                log.warning("Railway rate limit: waiting %.0f s before %s", gap, what)
                self._tell(f"Railway's API rate limit is used up: waiting {gap:.0f} s for it to reset before {what}")
                self._wait(gap)
            self.calls += 1
            sent_at = time.perf_counter()
            try:
                resp = self.http.post(self.api_url, json=body, headers=headers)
            except httpx.TransportError as exc:
                self.api_seconds += time.perf_counter() - sent_at
                sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if (mutation and sent) or tries >= len(BACKOFF):
                    raise PlatformError(f"Railway's API did not answer {what}: {type(exc).__name__}"
                                        f"{' (not retried: the change may have been made)' if mutation and sent else ''}") from None
                log.warning("Railway API: %s on %s, retrying in %.0f s", type(exc).__name__, what, BACKOFF[tries])
                self._wait(BACKOFF[tries])
                tries += 1
                continue
            self.api_seconds += time.perf_counter() - sent_at
            self._note_limits(resp)
            if resp.status_code == 429:
                wait = self._retry_after(resp)
                if limited + wait > self.rate_limit_wait:
                    raise PlatformError(f"Railway's rate limit asks to wait {wait:.0f} s more, beyond the "
                                        f"{self.rate_limit_wait:.0f} s recess waits ({what})")
                limited += wait
                log.warning("Railway API: rate limited on %s, waiting %.0f s (Retry-After)", what, wait)
                self._tell(f"Railway's API rate limit: waiting {wait:.0f} s, as Railway asked, before {what}; "
                           f"the deploy goes on after")
                self._wait(wait)
                continue
            if resp.status_code >= 500:
                if (mutation and resp.status_code not in RETRIED_MUTATION_STATUS) or tries >= len(BACKOFF):
                    raise PlatformError(f"Railway's API answered HTTP {resp.status_code} to {what}")
                log.warning("Railway API: HTTP %s on %s, retrying in %.0f s", resp.status_code, what, BACKOFF[tries])
                self._wait(BACKOFF[tries])
                tries += 1
                continue
            return self._data(resp, what)

    def _data(self, resp: httpx.Response, what: str) -> dict[str, Any]:
        try:
            payload = resp.json()
        except ValueError:
            payload = None
        errors = payload.get("errors") if isinstance(payload, dict) else None
        if errors:
            words = "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors)
            if resp.status_code in (401, 403) or "not authorized" in words.lower():
                raise PlatformError(f"Railway refused the {self.token_kind} token in {self.token_env} ({what}): {words}")
            raise PlatformError(f"Railway answered {what} with an error: {words}")
        if resp.status_code in (401, 403):
            raise PlatformError(f"Railway refused the {self.token_kind} token in {self.token_env} ({what}): "
                                f"HTTP {resp.status_code}")
        if resp.status_code >= 400 or not isinstance(payload, dict) or not isinstance(payload.get("data"), dict):
            raise PlatformError(f"Railway answered {what} with HTTP {resp.status_code} and no data")
        return payload["data"]

    def _retry_after(self, resp: httpx.Response) -> float:
        value = resp.headers.get("Retry-After")
        if value:
            try:
                return max(0.0, float(value))
            except ValueError:
                when = email.utils.parsedate_to_datetime(value) if value else None
                if when is not None:
                    return max(0.0, when.timestamp() - self.wall())
        reset = resp.headers.get("X-RateLimit-Reset")
        if reset:
            try:
                return max(0.0, float(reset) - self.wall())
            except ValueError:
                pass
        return 60.0  # Railway said "too many" without saying for how long

    def _note_limits(self, resp: httpx.Response) -> None:
        """X-RateLimit-Remaining: 0 on an answer means the next request would be refused: wait for
        X-RateLimit-Reset before sending it."""
        if resp.status_code == 429 or resp.headers.get("X-RateLimit-Remaining") != "0":
            return
        try:
            reset_in = float(resp.headers.get("X-RateLimit-Reset", "")) - self.wall()
        except ValueError:
            return
        with self._lock:
            self._not_before = max(self._not_before, self.monotonic() + max(0.0, reset_in))


def version_of(deployment: Mapping[str, Any] | None) -> str | None:
    """The version a deployment runs: its image's tag, or the commit it was built from."""
    meta = (deployment or {}).get("meta")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except ValueError:
            meta = None
    if not isinstance(meta, dict):
        return None
    image = meta.get("image")
    if isinstance(image, str) and image:
        last = image.rsplit("/", 1)[-1]
        return last.rsplit(":", 1)[1] if ":" in last else "latest"
    commit = meta.get("commitHash")
    return commit if isinstance(commit, str) and commit else None


class RailwayPlatform:
    """One Railway service in one environment. Bound to service + env."""

    hands_over = True  # Railway moves traffic itself after its healthcheck; there is no router to flip

    def __init__(self, service: str, env: str, spec: Service, state_dir: Path, *,
                 transport: httpx.BaseTransport | None = None, sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic, poll_interval: float | None = None) -> None:
        if spec.railway is None:
            raise PlatformError(f"service {service!r} has no [services.{service}.railway] table")
        rw = spec.railway
        if env not in rw.environments:
            raise PlatformError(f"services.{service}.railway.environments has no Railway environment ID for {env!r}")
        self.service = service
        self.env = env
        self.spec = spec
        self.railway = rw
        self.environment_id = rw.environments[env]
        self.state_dir = Path(state_dir).absolute()
        self.sleep = sleep
        self.monotonic = monotonic
        # Tests and benchmarks poll faster on a fake clock; the configuration never goes below 2 s.
        self.poll_interval = rw.poll_interval.total_seconds() if poll_interval is None else poll_interval
        self.client = RailwayClient(rw.api_url, token_env=rw.token_env, token_kind=rw.token_kind,
                                    rate_limit_wait=rw.rate_limit_wait.total_seconds(), transport=transport,
                                    sleep=sleep, monotonic=monotonic)
        self.public_url = rw.public_url
        self.last_router_call_seconds: float | None = None
        self.waiting_seconds = 0.0  # time spent sleeping between status polls (the benchmark's "not overhead")
        self.probe_seconds = 0.0  # time spent waiting for public_url's answers
        # One client for every probe: a new httpx client per request builds a TLS context each time
        # (tens of ms of CPU), which the bake's probe every 2 s would pay 60 times in 2 minutes.
        self._public = httpx.Client(timeout=5.0, follow_redirects=False)
        # A SUCCESS seen this recently is not asked again: the bake watch probes public_url every
        # poll (free) and asks Railway's API only this often, so a 2-minute bake costs 12 queries.
        self.success_fresh_for = 10.0
        self._success_at: dict[str, float] = {}
        self._book_lock = threading.Lock()

    # -- the slot book: which deployment carries which slot name -------------------------------

    @property
    def _book_path(self) -> Path:
        return self.state_dir / "railway-slots.json"

    def _book(self) -> dict[str, str]:
        try:
            data = json.loads(self._book_path.read_text())
        except (OSError, ValueError):
            return {}
        return {s: v for s, v in data.items() if s in SLOTS and isinstance(v, str)} if isinstance(data, dict) else {}

    def _write_book(self, book: Mapping[str, str]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._book_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(book), sort_keys=True))
        tmp.replace(self._book_path)

    def deployment_in(self, slot: str) -> str | None:
        """The Railway deployment ID that carries `slot` (for the thread and for rollback)."""
        return self._book().get(slot)

    # -- GraphQL -------------------------------------------------------------------------------

    def _ids(self) -> dict[str, str]:
        return {"serviceId": self.railway.service_id, "environmentId": self.environment_id}

    def deployment(self, deployment_id: str) -> dict[str, Any]:
        data = self.client.execute(DEPLOYMENT_QUERY, {"id": deployment_id}, what="the deployment query")
        return data["deployment"]

    def latest_deployment(self) -> dict[str, Any] | None:
        """The service instance's latest deployment as Railway shows it (the one a
        `deploymentRollback` or a deploy just made, whoever made it), or None."""
        data = self.client.execute(LATEST_QUERY, self._ids(), what="the latest deployment query")
        return (data.get("serviceInstance") or {}).get("latestDeployment") or None

    def deployments_now(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(the deployment Railway routes to, the latest one), read from Railway."""
        serving, _, by_id = self._read()
        newest = max(by_id.values(), key=lambda d: str(d.get("createdAt") or ""), default=None)
        return serving, newest

    def adopt(self, slot: str, deployment_id: str) -> None:
        """Records that `deployment_id` carries `slot` (recovery: a rollback deployment whose ID
        the bot did not live to read)."""
        _check_slot(slot)
        with self._book_lock:
            book = self._book()
            if book.get(slot) != deployment_id:
                book[slot] = deployment_id
                self._write_book(book)

    def _read(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None, dict[str, dict[str, Any]]]:
        """(the deployment Railway routes to, the one in progress, every recent one by ID)."""
        data = self.client.execute(STATUS_QUERY, {**self._ids(), "projectId": self.railway.project_id},
                                   what="the status query")
        inst = data.get("serviceInstance") or {}
        recent = [e["node"] for e in (data.get("deployments") or {}).get("edges", []) if e.get("node")]
        by_id = {d["id"]: d for d in recent}
        for d in [*(inst.get("activeDeployments") or []), inst.get("latestDeployment")]:
            if d:
                by_id.setdefault(d["id"], d)
        newest_first = sorted(by_id.values(), key=lambda d: str(d.get("createdAt") or ""), reverse=True)
        active = sorted(inst.get("activeDeployments") or [], key=lambda d: str(d.get("createdAt") or ""), reverse=True)
        serving = active[0] if active else next((d for d in newest_first if d["status"] in SERVING), None)
        if serving is not None:
            # A newer one that crashed after taking over still holds the traffic (and answers nothing).
            newer_crash = next((d for d in newest_first if d["status"] in ("CRASHED", "SLEEPING")
                                and str(d.get("createdAt")) > str(serving.get("createdAt"))), None)
            serving = newer_crash or serving
        latest = inst.get("latestDeployment")
        progress = latest if latest and latest["status"] in IN_PROGRESS else None
        return serving, progress, by_id

    # -- the protocol ----------------------------------------------------------------------------

    def status(self) -> Traffic:
        serving, progress, by_id = self._read()
        with self._book_lock:
            book = self._book()
            before = dict(book)
            slot_of = {v: s for s, v in book.items()}
            if progress is not None and progress["id"] not in slot_of:
                # Started elsewhere (Railway's dashboard, its CLI): it still gets a slot name.
                taken = slot_of.get(serving["id"]) if serving else None
                free = other_slot(taken) if taken else "green"
                book[free] = progress["id"]
                slot_of = {v: s for s, v in book.items()}
            if serving is not None and serving["id"] not in slot_of:
                taken = slot_of.get(progress["id"]) if progress else None
                free = other_slot(taken) if taken else "blue"
                book[free] = serving["id"]
            if book != before:
                self._write_book(book)
        slots = {}
        for slot in SLOTS:
            dep = by_id.get(book.get(slot, ""))
            if dep is None:
                slots[slot] = SlotState(slot=slot)
            elif serving is not None and dep["id"] == serving["id"]:
                slots[slot] = SlotState(slot=slot, version=version_of(dep), running=True, weight=100,
                                        address=self.public_url)
            elif progress is not None and dep["id"] == progress["id"]:
                slots[slot] = SlotState(slot=slot, version=version_of(dep), running=True)
            elif dep.get("canRollback"):
                slots[slot] = SlotState(slot=slot, version=version_of(dep), running=True)
            else:
                slots[slot] = SlotState(slot=slot)
        return Traffic(slots=slots, router_up=True)

    def start(self, slot: str, version: str) -> None:
        """Sets the image (IMAGE:VERSION) and deploys; without an image, deploys commit VERSION."""
        _check_slot(slot)
        update: dict[str, Any] = {}
        if self.railway.image:
            update["source"] = {"image": f"{self.railway.image}:{version}"}
        if self.railway.migrate:
            update["preDeployCommand"] = [self.railway.migrate]
        if update:
            self.client.execute(UPDATE_MUTATION, {**self._ids(), "input": update}, what="serviceInstanceUpdate")
        commit = None if self.railway.image else version
        data = self.client.execute(DEPLOY_MUTATION, {**self._ids(), "commitSha": commit},
                                   what="serviceInstanceDeployV2")
        deployment_id = data.get("serviceInstanceDeployV2")
        if not isinstance(deployment_id, str) or not deployment_id:
            raise PlatformError("Railway did not return a deployment ID for serviceInstanceDeployV2")
        with self._book_lock:
            book = self._book()
            book[slot] = deployment_id
            self._write_book(book)
        log.info("%s/%s: Railway deployment %s of %s started (slot %s)", self.service, self.env, deployment_id,
                 version, slot)

    def stop(self, slot: str, version: str | None = None) -> None:
        """Cancels the slot's deployment while it is still in progress; otherwise Railway removes
        it on its own after the hand-over, and recess only forgets the slot."""
        _check_slot(slot)
        deployment_id = self.deployment_in(slot)
        if deployment_id is None:
            return
        dep = self.deployment(deployment_id)
        running = version_of(dep)
        if version is not None and running is not None and running != version:
            raise PlatformError(f"slot {slot} is Railway deployment {deployment_id} of {running}, not {version}: "
                                f"not stopping it")
        if dep["status"] in IN_PROGRESS:
            self.client.execute(CANCEL_MUTATION, {"id": deployment_id}, what="deploymentCancel")
        with self._book_lock:
            book = self._book()
            if book.get(slot) == deployment_id:
                del book[slot]
                self._write_book(book)

    def health(self, slot: str) -> Health:
        """The slot's deployment as Railway sees it: SUCCESS is healthy (Railway's own healthcheck
        passed and it serves); in progress is not yet; FAILED and CRASHED end the wait at once. A
        deployment that served before is healthy while Railway can still roll back to it."""
        _check_slot(slot)
        deployment_id = self.deployment_in(slot)
        if deployment_id is None:
            return Health(ok=False, exited=True, detail=f"no Railway deployment in slot {slot}")
        seen = self._success_at.get(deployment_id)
        if seen is not None and self.monotonic() - seen < self.success_fresh_for:
            return Health(ok=True, status=200, detail=f"Railway deployment {deployment_id} is SUCCESS")
        try:
            dep = self.deployment(deployment_id)
        except PlatformError as exc:
            return Health(ok=False, detail=str(exc))
        status = dep["status"]
        if status == "SUCCESS":
            self._success_at = {deployment_id: self.monotonic()}
            return Health(ok=True, status=200, detail=f"Railway deployment {deployment_id} is SUCCESS")
        self._success_at.pop(deployment_id, None)
        if status in IN_PROGRESS:
            return Health(ok=False, detail=f"Railway deployment {deployment_id} is {status}")
        if status in ENDED_BADLY:
            return Health(ok=False, exited=True, detail=f"Railway deployment {deployment_id} {status}")
        if dep.get("canRollback"):
            return Health(ok=True, detail=f"Railway deployment {deployment_id} is {status} and retained: it can "
                                          f"be rolled back to")
        return Health(ok=False, exited=True, detail=f"Railway deployment {deployment_id} is {status} and no "
                                                    f"longer retained")

    def shift(self, weights: Mapping[str, int]) -> None:
        """Traffic to one slot: nothing to do when its deployment serves already (Railway handed
        over after its healthcheck); otherwise `deploymentRollback` to it, followed to SUCCESS
        and until `public_url` answers."""
        target = checked_weights(weights)
        if all(target.values()):
            raise PlatformError("Railway cannot split traffic between two deployments; deploy without --canary")
        to = max(SLOTS, key=lambda s: target[s])
        if target[to] == 0:
            raise PlatformError("refusing to send traffic to no deployment at all")
        started = time.perf_counter()
        traffic = self.status()
        if traffic.serving == to:
            self.last_router_call_seconds = time.perf_counter() - started
            return
        deployment_id = self.deployment_in(to)
        if deployment_id is None:
            raise PlatformError(f"no Railway deployment carries slot {to}")
        dep = self.deployment(deployment_id)
        if not dep.get("canRollback"):
            raise PlatformError(f"Railway no longer retains deployment {deployment_id} ({version_of(dep)}): it "
                                f"cannot be rolled back to")
        self.client.execute(ROLLBACK_MUTATION, {"id": deployment_id}, what="deploymentRollback")
        from commands.states import crash_point

        # Fault injection (RECESS_CRASH_AT, never set in production). Killed here, recovery finds the
        # new deployment from Railway (commands/railway.py rollback_in_flight).
        crash_point("deploymentRollback", "after")
        latest = self.latest_deployment() or {}
        new_id = latest.get("id")
        if not new_id or new_id == deployment_id:
            raise PlatformError(f"Railway accepted the rollback to {deployment_id} but shows no new deployment")
        self.adopt(to, new_id)
        final = self.follow(new_id, self.spec.health_timeout.total_seconds())
        if final["status"] != "SUCCESS":
            raise PlatformError(f"Railway's rollback deployment {new_id} ended {final['status']}")
        self.wait_public(self.spec.health_timeout.total_seconds())
        self.last_router_call_seconds = time.perf_counter() - started

    def follow(self, deployment_id: str, timeout: float) -> dict[str, Any]:
        """Polls the deployment every `poll_interval` until it leaves the in-progress states."""
        deadline = self.monotonic() + timeout
        while True:
            dep = self.deployment(deployment_id)
            if dep["status"] not in IN_PROGRESS:
                return dep
            if self.monotonic() >= deadline:
                raise PlatformError(f"Railway deployment {deployment_id} was still {dep['status']} after {timeout:.0f} s")
            self.waiting_seconds += self.poll_interval
            self.sleep(self.poll_interval)

    def wait_public(self, timeout: float) -> Health:
        deadline = self.monotonic() + timeout
        while True:
            probe = self.probe_public()
            if probe.ok:
                return probe
            if self.monotonic() >= deadline:
                raise PlatformError(f"{self.public_url}{self.spec.health_path} did not answer 200 "
                                    f"({probe.status or probe.detail})")
            self.waiting_seconds += self.poll_interval
            self.sleep(self.poll_interval)

    def migrate(self, slot: str, version: str, env: Mapping[str, str]) -> Result:
        _check_slot(slot)
        return Result(ok=True, output=self.migration_note(version))

    def migration_note(self, version: str) -> str:
        """What the migrate step says: Railway runs the pre-deploy command inside the deployment."""
        if self.railway.migrate:
            return (f"Railway runs the pre-deploy command `{self.railway.migrate}` in the deployment of {version}, "
                    f"before it starts it; a failing command fails the deployment and the previous one keeps serving")
        return (f"skipped: :warning: no pre-deploy command in [services.{self.service}.railway] migrate, so no "
                f"migrations ran for {version}")

    def base_url(self, slot: str) -> str:
        _check_slot(slot)
        return self.public_url

    def probe_public(self) -> Health:
        url = f"{self.public_url}{self.spec.health_path}"
        sent_at = time.perf_counter()
        try:
            resp = self._public.get(url)
        except httpx.HTTPError as exc:
            return Health(ok=False, detail=f"{url}: {type(exc).__name__}")
        finally:
            self.probe_seconds += time.perf_counter() - sent_at
        return Health(ok=resp.status_code == 200, status=resp.status_code, detail=f"{url} answered {resp.status_code}")

    def router_stats(self) -> dict[str, RouterStats]:
        return {}  # Railway's edge keeps its counters to itself

    def drain(self, slot: str, timeout: float) -> None:
        _check_slot(slot)  # Railway drains the old deployment itself (drainingSeconds)


def _check_slot(slot: str) -> None:
    if slot not in SLOTS:
        raise PlatformError(f"unknown slot {slot!r}: expected blue or green")
