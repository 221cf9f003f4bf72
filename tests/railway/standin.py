"""A stand-in for Railway's public GraphQL API that holds recess to Railway's published schema.

Every request is parsed and validated, query and variables, against `schema.json` (Railway's
introspection result, from railwayapp/cli, MIT: see LICENSE beside it) with graphql-core, and
executed against that same schema, so an answer has Railway's shape and a query Railway would
reject is rejected here with a GraphQL error. Deployments move
INITIALIZING -> BUILDING -> DEPLOYING -> SUCCESS (or FAILED, or CRASHED later) on a clock the test
owns: nothing here waits for real time.

    with RailwayStandIn() as railway:
        railway.add_service("svc-core", "env-prod", image="ghcr.io/district/core", live="v1")
        ... recess deploys ...
        railway.advance(60)                       # the deployment finishes its stages
        railway.rate_limit(2, retry_after=3)      # the next two requests answer 429

The serving deployment answers the public URL's health path (an HTTP server of its own), with
the version it runs, or 503 while it is crashed, so smoke tests and the bake watch look at
something real.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from graphql import (
    GraphQLError,
    GraphQLSchema,
    OperationDefinitionNode,
    build_client_schema,
    execute,
    parse,
    validate,
)
from graphql.execution.values import get_variable_values

SCHEMA_FILE = Path(__file__).with_name("schema.json")
PROJECT_TOKEN = "railway-project-token-0001"
ACCOUNT_TOKEN = "railway-account-token-0001"
IN_PROGRESS = ("INITIALIZING", "QUEUED", "WAITING", "BUILDING", "DEPLOYING")
EPOCH = dt.datetime(2027, 3, 16, 22, 0, tzinfo=dt.UTC)


@functools.cache
def railway_schema() -> GraphQLSchema:
    schema = build_client_schema(json.loads(SCHEMA_FILE.read_text())["data"])
    # The published schema fails one of graphql-core's own checks (a deprecated Team.id implementing
    # Node.id); Railway serves it anyway, so queries are checked against it as published.
    schema._validation_errors = []  # noqa: SLF001
    return schema


def problems(query: str, variables: dict[str, Any] | None = None) -> list[str]:
    """What Railway would reject in this operation and, when given, its variables (empty when valid)."""
    schema = railway_schema()
    try:
        doc = parse(query)
    except GraphQLError as exc:
        return [exc.message]
    errors = [e.message for e in validate(schema, doc)]
    if errors:
        return errors
    if variables is None:
        return []
    ops = [d for d in doc.definitions if isinstance(d, OperationDefinitionNode)]
    coerced = get_variable_values(schema, ops[0].variable_definitions or [], variables or {})
    if isinstance(coerced, list):
        return [e.message for e in coerced]
    return []


@dataclass
class Deployment:
    id: str
    service_id: str
    environment_id: str
    project_id: str
    meta: dict[str, Any]
    created: float  # stand-in clock, seconds
    outcome: str = "SUCCESS"  # where it ends: SUCCESS or FAILED
    final_status: str | None = None  # set once it ended or was changed (CRASHED, REMOVED, ...)
    retained_until: float | None = None  # canRollback while the clock is before this

    @property
    def version(self) -> str:
        image = self.meta.get("image")
        return image.rsplit(":", 1)[-1] if image else self.meta.get("commitHash", "")


@dataclass
class Instance:
    service_id: str
    environment_id: str
    project_id: str
    image: str | None
    pre_deploy: list[str] | None = None
    pending_tag: str | None = None  # the tag serviceInstanceUpdate set, deployed by the next deploy
    deployments: list[Deployment] = field(default_factory=list)


class RailwayStandIn:
    """Railway's GraphQL API at `api_url`, and the serving deployment at `public_url`."""

    def __init__(self, *, build_seconds: float = 10, deploy_seconds: float = 10,
                 retention_seconds: float = 24 * 3600, tick: float = 0.0) -> None:
        # Status by age of a deployment: INITIALIZING for 1 s, BUILDING, DEPLOYING, then its outcome.
        self.timeline = (("INITIALIZING", 1.0), ("BUILDING", 1.0 + build_seconds),
                         ("DEPLOYING", 1.0 + build_seconds + deploy_seconds))
        self.retention_seconds = retention_seconds
        self.tick = tick  # the clock moves this far on every GraphQL request (a deploy advances as recess polls)
        self.now = 0.0
        self.instances: dict[tuple[str, str], Instance] = {}
        self.tokens = {"project": PROJECT_TOKEN, "account": ACCOUNT_TOKEN}
        self.calls: list[dict[str, Any]] = []  # every request: root fields, variables, headers
        self.refused: list[dict[str, Any]] = []  # requests that failed validation
        self._limited: list[float] = []  # Retry-After of each coming 429
        self._errors_5xx = 0
        self._refusals: dict[str, str] = {}
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self.api = _serve(self._api_handler())
        self.public = _serve(self._public_handler())
        self.api_url = f"http://127.0.0.1:{self.api.server_address[1]}/graphql/v2"
        self.public_url = f"http://127.0.0.1:{self.public.server_address[1]}"
        self.public_service: tuple[str, str] | None = None  # whose serving deployment answers public_url

    # -- set-up --------------------------------------------------------------------------------

    def add_service(self, service_id: str, environment_id: str, *, project_id: str = "proj-district",
                    image: str | None = None, live: str | None = None) -> Instance:
        with self._lock:
            inst = Instance(service_id, environment_id, project_id, image)
            self.instances[(service_id, environment_id)] = inst
            if self.public_service is None:
                self.public_service = (service_id, environment_id)
            if live:
                d = self._new_deployment(inst, live)
                d.final_status = "SUCCESS"
            return inst

    def close(self) -> None:
        for server in (self.api, self.public):
            server.shutdown()
            server.server_close()

    def __enter__(self) -> RailwayStandIn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what the test controls ----------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds
            for inst in self.instances.values():
                self._settle(inst)

    def fail_next(self, outcome: str = "FAILED") -> None:
        """The next deployment ends FAILED (its healthcheck never answered 200)."""
        self._next_outcome = outcome

    def crash(self, service_id: str, environment_id: str) -> Deployment:
        """The serving deployment crashes: its status becomes CRASHED and public_url answers 503."""
        with self._lock:
            d = self.serving(service_id, environment_id)
            assert d is not None, "nothing serves"
            d.final_status = "CRASHED"
            return d

    def expire_retention(self) -> None:
        """Railway's image retention passed: no deployment can be rolled back to any more."""
        with self._lock:
            for inst in self.instances.values():
                for d in inst.deployments:
                    d.retained_until = self.now

    def rate_limit(self, count: int, retry_after: float = 1.0) -> None:
        """The next `count` GraphQL requests answer 429 with Retry-After (and X-RateLimit-*)."""
        with self._lock:
            self._limited.extend([retry_after] * count)

    def refuse(self, root_field: str, message: str) -> None:
        """Every later request for `root_field` gets a GraphQL error with `message` (a permission
        Railway denies, a service it does not know)."""
        with self._lock:
            self._refusals[root_field] = message

    def fail_5xx(self, count: int) -> None:
        with self._lock:
            self._errors_5xx += count

    # -- reading the state ---------------------------------------------------------------------

    def status_of(self, d: Deployment) -> str:
        if d.final_status:
            return d.final_status
        age = self.now - d.created
        for name, until in self.timeline:
            if age < until:
                return name
        return d.outcome

    def serving(self, service_id: str, environment_id: str) -> Deployment | None:
        """The deployment Railway routes to: the newest that reached SUCCESS and was not replaced."""
        inst = self.instances[(service_id, environment_id)]
        for d in reversed(inst.deployments):
            if self.status_of(d) in ("SUCCESS", "CRASHED", "SLEEPING"):
                return d
        return None

    def deployment(self, deployment_id: str) -> Deployment | None:
        for inst in self.instances.values():
            for d in inst.deployments:
                if d.id == deployment_id:
                    return d
        return None

    def root_fields(self) -> list[str]:
        return [f for call in self.calls for f in call["fields"]]

    # -- the model -----------------------------------------------------------------------------

    _next_outcome = "SUCCESS"

    def _new_deployment(self, inst: Instance, version: str, *, meta: dict[str, Any] | None = None) -> Deployment:
        if meta is None:
            meta = {"image": f"{inst.image}:{version}"} if inst.image else {"commitHash": version}
        d = Deployment(id=str(uuid.UUID(int=next(self._ids))), service_id=inst.service_id,
                       environment_id=inst.environment_id, project_id=inst.project_id, meta=dict(meta),
                       created=self.now, outcome=self._next_outcome)
        self._next_outcome = "SUCCESS"
        inst.deployments.append(d)
        return d

    def _settle(self, inst: Instance) -> None:
        """Railway's hand-over: once a newer deployment succeeds, the older ones are removed
        (their images stay retained for rollback)."""
        newest_ok = None
        for d in reversed(inst.deployments):
            if self.status_of(d) == "SUCCESS":
                newest_ok = d
                break
        if newest_ok is None:
            return
        for d in inst.deployments:
            if d is newest_ok or d.created > newest_ok.created:
                continue
            if self.status_of(d) in ("SUCCESS", "CRASHED", "SLEEPING"):
                d.final_status = "REMOVED"
                if d.retained_until is None:
                    d.retained_until = self.now + self.retention_seconds

    def _shape(self, d: Deployment | None) -> dict[str, Any] | None:
        if d is None:
            return None
        status = self.status_of(d)
        retained = d.retained_until is None or self.now < d.retained_until
        created = EPOCH + dt.timedelta(seconds=d.created)
        return {
            "id": d.id, "status": status, "meta": d.meta, "projectId": d.project_id, "serviceId": d.service_id,
            "environmentId": d.environment_id, "createdAt": created.isoformat(),
            "updatedAt": created.isoformat(), "statusUpdatedAt": created.isoformat(),
            "canRollback": retained and status in ("SUCCESS", "REMOVED", "CRASHED") and bool(d.meta),
            "canRedeploy": True, "deploymentStopped": status in ("REMOVED", "FAILED", "CRASHED"),
            "staticUrl": None, "url": None, "suggestAddServiceDomain": False, "snapshotId": None,
        }

    def _instance(self, service_id: str, environment_id: str | None) -> Instance:
        inst = self.instances.get((service_id, environment_id or ""))
        if inst is None:
            raise GraphQLError("ServiceInstance not found")
        return inst

    # -- resolvers (graphql-core's default resolver calls these with (info, **args)) -----------

    def _root(self) -> dict[str, Any]:
        def service_instance(info: Any, serviceId: str, environmentId: str) -> dict[str, Any]:  # noqa: N803 (Railway's names)
            inst = self._instance(serviceId, environmentId)
            serving = self.serving(serviceId, environmentId)
            active = [self._shape(serving)] if serving and self.status_of(serving) == "SUCCESS" else []
            return {
                "id": f"{serviceId}:{environmentId}", "serviceId": serviceId, "environmentId": environmentId,
                "serviceName": serviceId, "latestDeployment": self._shape(inst.deployments[-1] if inst.deployments else None),
                "activeDeployments": active, "source": {"image": inst.image, "repo": None},
                "preDeployCommand": inst.pre_deploy, "healthcheckPath": "/api/v1/health",
                "overlapSeconds": 20, "drainingSeconds": 10,
            }

        def deployment(info: Any, id: str) -> dict[str, Any]:  # noqa: A002
            d = self.deployment(id)
            if d is None:
                raise GraphQLError("Deployment not found")
            return self._shape(d)

        def deployments(info: Any, input: dict[str, Any], first: int | None = None, **_: Any) -> dict[str, Any]:  # noqa: A002
            inst = self._instance(input.get("serviceId") or "", input.get("environmentId"))
            newest = list(reversed(inst.deployments))[: first or 50]
            return {"edges": [{"node": self._shape(d), "cursor": d.id} for d in newest],
                    "pageInfo": {"hasNextPage": False, "hasPreviousPage": False}}

        def service_instance_update(info: Any, serviceId: str, input: dict[str, Any],  # noqa: N803, A002
                                    environmentId: str | None = None) -> bool:
            inst = self._instance(serviceId, environmentId)
            source = input.get("source") or {}
            if source.get("image"):
                image = source["image"]
                inst.image = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
                inst.pending_tag = image.rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else "latest"
            if "preDeployCommand" in input:
                inst.pre_deploy = input["preDeployCommand"]
            return True

        def service_instance_deploy_v2(info: Any, serviceId: str, environmentId: str,  # noqa: N803
                                       commitSha: str | None = None) -> str:
            inst = self._instance(serviceId, environmentId)
            if inst.image:
                tag = inst.pending_tag or "latest"
                d = self._new_deployment(inst, tag)
            else:
                if not commitSha:
                    raise GraphQLError("No commit to deploy: this service has no image and no commitSha was given")
                d = self._new_deployment(inst, commitSha)
            return d.id

        def deployment_rollback(info: Any, id: str) -> bool:  # noqa: A002
            d = self.deployment(id)
            if d is None:
                raise GraphQLError("Deployment not found")
            if not self._shape(d)["canRollback"]:
                raise GraphQLError("Deployment cannot be rolled back: its image is no longer retained")
            inst = self._instance(d.service_id, d.environment_id)
            self._new_deployment(inst, d.version, meta=d.meta)
            return True

        def deployment_cancel(info: Any, id: str) -> bool:  # noqa: A002
            d = self.deployment(id)
            if d is None:
                raise GraphQLError("Deployment not found")
            if self.status_of(d) in IN_PROGRESS:
                d.final_status = "REMOVED"
                d.retained_until = self.now
            return True

        return {"serviceInstance": service_instance, "deployment": deployment, "deployments": deployments,
                "serviceInstanceUpdate": service_instance_update, "serviceInstanceDeployV2": service_instance_deploy_v2,
                "deploymentRollback": deployment_rollback, "deploymentCancel": deployment_cancel}

    def answer(self, body: Any, headers: dict[str, str]) -> tuple[int, dict[str, Any], dict[str, str]]:
        """One GraphQL request as Railway answers it: (HTTP status, JSON body, headers)."""
        with self._lock:
            limits = {"X-RateLimit-Limit": "1000", "X-RateLimit-Remaining": "999",
                      "X-RateLimit-Reset": str(int(EPOCH.timestamp() + self.now + 3600))}
            if self._limited:
                wait = self._limited.pop(0)
                self.calls.append({"fields": ["<429>"], "variables": {}, "headers": headers})
                return 429, {"errors": [{"message": "Rate limit exceeded"}]}, {
                    **limits, "X-RateLimit-Remaining": "0", "Retry-After": f"{wait:g}"}
            if self._errors_5xx:
                self._errors_5xx -= 1
                self.calls.append({"fields": ["<503>"], "variables": {}, "headers": headers})
                return 503, {"errors": [{"message": "Service Unavailable"}]}, limits
            self.now += self.tick
            for inst in self.instances.values():
                self._settle(inst)
            if not isinstance(body, dict) or not isinstance(body.get("query"), str):
                return 400, {"errors": [{"message": "Body must be JSON with a query string"}]}, limits
            query, variables = body["query"], body.get("variables") or {}
            bad = problems(query, variables if isinstance(variables, dict) else {"": variables})
            doc = parse(query) if not bad else None
            fields = ([s.name.value for op in doc.definitions for s in op.selection_set.selections]
                      if doc is not None else [])
            self.calls.append({"fields": fields, "variables": variables, "headers": headers})
            if bad:
                self.refused.append({"query": query, "variables": variables, "problems": bad})
                return 400, {"errors": [{"message": m} for m in bad]}, limits
            token_ok = (headers.get("project-access-token") == self.tokens["project"]
                        or headers.get("authorization") == f"Bearer {self.tokens['account']}")
            if not token_ok:
                return 200, {"data": None, "errors": [{"message": "Not Authorized"}]}, limits
            denied = [self._refusals[f] for f in fields if f in self._refusals]
            if denied:
                return 200, {"data": None, "errors": [{"message": m} for m in denied]}, limits
            result = execute(railway_schema(), doc, root_value=self._root(), variable_values=variables)
            out: dict[str, Any] = {"data": result.data}
            if result.errors:
                out["errors"] = [{"message": e.message, "path": e.path} for e in result.errors]
            for inst in self.instances.values():
                self._settle(inst)
            return 200, out, limits

    # -- HTTP ----------------------------------------------------------------------------------

    def _api_handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw or b"null")
                except ValueError:
                    body = None
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, out, extra = standin.answer(body, headers)
                data = json.dumps(out, default=str).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def _public_handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                with standin._lock:
                    d = standin.serving(*standin.public_service) if standin.public_service else None
                    status = standin.status_of(d) if d else None
                if d is None or status != "SUCCESS":
                    code, body = 503, b"Application failed to respond"
                else:
                    code, body = 200, json.dumps({"ok": True, "version": d.version}).encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


def _serve(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
