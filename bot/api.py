"""The REST API for CI: request, follow, cancel and roll back deploys with a bearer token.

Routes live under /api/v1 (docs/ci.md; the OpenAPI 3.1 document at GET /api/v1/openapi.json is
built from the same pydantic models that check the bodies). A token (`[[api.tokens]]`) is an
actor named `api:NAME`: commands/policy.py decides what it may do, from its scopes, and it never
approves. Deploys it requests go through the same `Deployer.request` as `/deploy`, with a card
and a thread in Slack that name the token and `requested_by`.

Every refusal is `{"error": "..."}` with 400, 401, 403, 404, 409 or 413, and stores nothing.
An `Idempotency-Key` is stored with the deploy it created, in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import sqlite3
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bot import edge
from bot.deploying import deployer_of
from bot.runtime import Runtime
from bot.views.deploy import thread_link
from commands import releases
from commands import rollback as rollbacks
from commands.config import ApiToken
from commands.deploys import ConflictError, DeployError, HeldError, UnknownTarget
from commands.policy import token_actor
from storage import api as api_rows
from storage import deploys as rows

log = logging.getLogger("recess.api")

MAX_BODY = 64 * 1024
STATUSES = ("pending", "approved", "queued", "running", "succeeded", "failed", "rolled_back", "cancelled",
            "rejected", "needs_attention")
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra  # more fields of the answer, like {"release": NAME} for a release named as a service


# -- bodies and answers, as models (the OpenAPI document is generated from them) ----------------


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class DeployRequest(Body):
    """POST /api/v1/deploys: exactly one of `service` and `release`; a release takes exactly one
    of `version` (every member) and `versions` (the named members); a service takes `version`."""

    service: str | None = Field(default=None, min_length=1, max_length=64, description="a service of [services]")
    release: str | None = Field(default=None, min_length=1, max_length=64,
                                description="a release of [releases]: its members deploy, switch and roll back as one")
    version: str | None = Field(default=None, min_length=1, max_length=64,
                                description="letters, digits, '.', '_', '+' or '-', like v2.4.1; for a release, "
                                            "every member's version")
    versions: dict[str, str] | None = Field(default=None, description="a release only: SERVICE: VERSION for the "
                                                                       "members to deploy, like {\"core\": \"v2.4.1\"}")
    env: str | None = Field(default=None, description="an environment; default: the service's first "
                                                      "(a release's: the first every member deploys to)")
    sha: str | None = Field(default=None, description="the git commit, 7 to 40 hex digits")
    committed_at: dt.datetime | None = Field(default=None, description="ISO 8601 instant with offset")
    requested_by: str | None = Field(default=None, max_length=200, description="who the CI job acts for")
    reason: str | None = Field(default=None, max_length=500)

    @field_validator("sha")
    @classmethod
    def _sha(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[0-9a-fA-F]{7,40}", v):
            raise ValueError(f"expected a git SHA of 7 to 40 hex digits, got {v[:60]!r}")
        return v.lower() if v else v

    @field_validator("committed_at")
    @classmethod
    def _aware(cls, v: dt.datetime | None) -> dt.datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("expected an ISO 8601 instant with an offset (like +00:00 or Z)")
        return v


class RollbackRequest(Body):
    """POST /api/v1/services/{service}/rollback"""

    env: str | None = None
    reason: str | None = Field(default=None, max_length=500)
    requested_by: str | None = Field(default=None, max_length=200)


class Step(BaseModel):
    name: str
    status: str
    started_at: str | None
    finished_at: str | None
    detail: str


class Approval(BaseModel):
    user: str
    at: str | None


class Member(BaseModel):
    service: str
    version: str
    previous_version: str | None
    status: str = Field(description="the member's deploy status; the release's own until it starts; "
                                    "'skipped' when the member already ran its version as the release started")
    deploy_id: int | None = Field(description="the member's own deploy row, once the release started")


class Deploy(BaseModel):
    id: int
    kind: Literal["deploy", "rollback"]
    service: str
    version: str
    previous_version: str | None
    env: str
    status: Literal["pending", "approved", "queued", "running", "succeeded", "failed", "rolled_back", "cancelled",
                    "rejected", "needs_attention"]
    outcome: str | None
    requester: str = Field(description="the Slack user ID, or api:NAME for a token")
    token: str | None = Field(description="the token's name when an API token asked")
    requested_by: str | None
    sha: str | None
    committed_at: str | None
    approvals: list[Approval]
    approvals_needed: int
    queued_until: str | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    steps: list[Step]
    card_url: str | None
    live_version: str | None
    rollback_of: int | None
    release: str | None = Field(default=None, description="a release (or a release's rollback): its name, "
                                                          "also in `service`")
    members: list[Member] | None = Field(default=None, description="a release's members, in switch order")
    release_id: int | None = Field(default=None, description="a member deploy: the release it belongs to")


class ServiceState(BaseModel):
    service: str
    env: str
    platform: str
    live_version: str | None
    live_deploy: int | None
    kept_version: str | None = Field(description="the previous version kept running for a fast rollback")
    kept_until: str | None
    in_progress: Deploy | None


class ErrorAnswer(BaseModel):
    error: str
    release: str | None = Field(default=None, description="the name given is a release: send it as `release`, "
                                                          "or roll it back under /api/v1/releases/")


def _iso(t: Any) -> str | None:
    return t.astimezone(dt.UTC).isoformat() if isinstance(t, dt.datetime) else t


def members_json(rt: Runtime, d: dict[str, Any]) -> list[dict[str, Any]]:
    """A release's members: its plan, with each member row once the release started."""
    written = {m["service"]: m for m in rows.members(rt.store, d)}
    started = d["status"] not in ("pending", "approved", "queued", "rejected", "cancelled")
    out = []
    for m in d["members"] or []:
        row = written.get(m["service"])
        out.append({"service": m["service"], "version": m["version"], "previous_version": m["previous_version"],
                    "status": row["status"] if row else ("skipped" if started else d["status"]),
                    "deploy_id": row["id"] if row else None})
    return out


def deploy_json(rt: Runtime, d: dict[str, Any]) -> dict[str, Any]:
    requester = d["requester"]
    live = rows.live(rt.store, d["service"], d["env"])
    release = rows.is_release(d)
    extra: dict[str, Any] = {}
    if release:
        extra = {"release": d["service"], "members": members_json(rt, d)}
    elif d.get("release_id") is not None:
        extra = {"release_id": d["release_id"]}
    return {
        "id": d["id"], "kind": "rollback" if d["kind"] == "rollback" else "deploy", "service": d["service"], "version": d["version"],
        "previous_version": d["previous_version"], "env": d["env"], "status": d["status"], "outcome": d["outcome"],
        "requester": requester, "token": requester[4:] if requester.startswith("api:") else None,
        "requested_by": d.get("requested_by") or requester, "sha": d.get("sha"), "committed_at": d.get("committed_at"),
        "approvals": [{"user": a["user"], "at": a["at"]} for a in api_rows.approvals(rt.store, d["id"])],
        "approvals_needed": d["approvals_needed"],
        "queued_until": _iso(d["queued_until"]), "created_at": _iso(d["created_at"]),
        "started_at": _iso(d["started_at"]), "finished_at": _iso(d["finished_at"]),
        "steps": [{"name": s["name"], "status": s["status"], "started_at": _iso(s["started_at"]),
                   "finished_at": _iso(s["finished_at"]), "detail": s["detail"]} for s in rows.steps(rt.store, d["id"])],
        "card_url": thread_link(d) if d.get("channel") and d.get("card_ts") else None,
        "live_version": live["version"] if live else None,
        "rollback_of": d["rollback_of"],
        **extra,
    }


def validation_message(exc: ValidationError, known: tuple[str, ...]) -> str:
    """The first problem of a body, naming its field: `version: expected a string, got 42`."""
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "body"
    kind, given = err["type"], err.get("input")
    if kind == "extra_forbidden":
        return f"{field}: unknown field (known: {', '.join(known)})"
    if kind == "missing":
        return f"{field}: required"
    if kind == "model_type" or kind == "model_attributes_type":
        return "the body must be a JSON object"
    if kind == "string_type":
        return f"{field}: expected a string, got {json.dumps(given)[:60]}"
    if kind.startswith("datetime"):
        return f"{field}: expected an ISO 8601 instant with offset, got {json.dumps(given)[:60]}"
    if kind == "string_too_long":
        return f"{field}: at most {err['ctx']['max_length']} characters"
    if kind == "string_too_short":
        return f"{field}: must not be empty"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{field}: {msg}"


def parse_body(model: type[Body], body: bytes) -> Body:
    if not body.strip():
        body = b"{}"
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            raise ApiError(400, f"the body is not valid JSON: {first['ctx'].get('error', 'invalid')}") from None
        raise ApiError(400, validation_message(exc, tuple(model.model_fields))) from None


# -- the routes ---------------------------------------------------------------------------------


def routes(rt: Runtime) -> list[Route]:
    def authenticate(request: Request, scope: str) -> ApiToken:
        header = request.headers.get("authorization")
        if not header:
            raise ApiError(401, "missing Authorization: Bearer TOKEN (see `recess api token`)")
        kind, _, presented = header.partition(" ")
        if kind.lower() != "bearer" or not presented.strip():
            raise ApiError(401, "expected Authorization: Bearer TOKEN")
        token = rt.policy.token_for(presented.strip())
        if token is None:
            if not rt.cfg.api.tokens:
                raise ApiError(401, "unknown API token: this recess has no [[api.tokens]] (see `recess api token`)")
            raise ApiError(401, "unknown API token")
        if scope not in token.scopes:
            raise ApiError(403, f"the token {token.name!r} has no {scope!r} scope (it has: {', '.join(token.scopes)})")
        return token

    def answer(exc: ApiError, request: Request) -> JSONResponse:
        log.info("api refused %s %s with %d: %s", request.method, request.url.path, exc.status, exc.message)
        headers = {"Connection": "close"} if exc.status == 413 else None
        return JSONResponse({"error": exc.message, **exc.extra}, status_code=exc.status, headers=headers)

    async def handle(request: Request, scope: str, work: Any, *, body_model: type[Body] | None = None,
                     inline: bool = False) -> Response:
        """`inline`: a read of a few indexed rows (well under a millisecond) runs on the event loop
        itself; a thread-pool hop would cost more than the work, at the 1,000 polls a second CI
        jobs can make. Everything that writes or may wait runs in the thread pool."""
        try:
            token = authenticate(request, scope)
            parsed = None
            if body_model is not None:
                try:
                    raw = await edge.read_bounded(request, MAX_BODY)
                except edge.Refusal as exc:
                    raise ApiError(exc.status, exc.message) from None
                parsed = parse_body(body_model, raw)
            if inline:
                status, payload = work(token, parsed, request)
            else:
                status, payload = await run_in_threadpool(work, token, parsed, request)
        except ApiError as exc:
            return answer(exc, request)
        return JSONResponse(payload, status_code=status)

    def deploy_id_of(request: Request) -> int:
        text = request.path_params["deploy_id"]
        if not (text.isascii() and text.isdigit() and len(text) <= 12):
            raise ApiError(400, f"id: expected a deploy number, got {text[:40]!r}")
        return int(text)

    def found(deploy_id: int) -> dict[str, Any]:
        d = rows.get(rt.store, deploy_id)
        if d is None:
            raise ApiError(404, f"deploy #{deploy_id} does not exist")
        return d

    # POST /api/v1/deploys
    def request_deploy(token: ApiToken, body: DeployRequest, request: Request) -> tuple[int, Any]:
        key = request.headers.get("idempotency-key")
        if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
            raise ApiError(400, "Idempotency-Key: expected 1 to 200 printable ASCII characters without spaces")
        digest = hashlib.sha256(body.model_dump_json(exclude_none=True).encode()).hexdigest()

        def replay() -> tuple[int, Any] | None:
            seen = api_rows.recall_key(rt.store, token=token.name, key=key)
            if seen is None:
                return None
            if seen["body_sha256"] != digest:
                raise ApiError(409, f"Idempotency-Key {key!r} was used for another body (deploy #{seen['deploy_id']}); "
                                    f"use a new key for a new request")
            return 200, deploy_json(rt, found(seen["deploy_id"]))

        if key is not None:
            earlier = replay()
            if earlier is not None:
                return earlier
        remember = None
        if key is not None:
            def remember(deploy_id: int) -> None:
                api_rows.remember_key(rt.store, token=token.name, key=key, body_sha256=digest, deploy_id=deploy_id)
        what = target_of(body)
        try:
            if isinstance(what, str):
                d = deployer_of(rt).request(
                    actor=token_actor(token.name), service=what, version=body.version or "", env=body.env,
                    command="api", sha=body.sha, committed_at=body.committed_at, requested_by=body.requested_by,
                    on_record=remember,
                )
            else:
                name, versions = what
                d = releases.request(
                    deployer_of(rt), actor=token_actor(token.name), name=name, versions=versions, env=body.env,
                    command="api", sha=body.sha, committed_at=body.committed_at, requested_by=body.requested_by,
                    on_record=remember,
                )
        except sqlite3.IntegrityError:  # the same key won a race a moment ago: answer its deploy
            earlier = replay() if key is not None else None
            if earlier is None:
                raise
            return earlier
        except UnknownTarget as exc:
            raise ApiError(400, _fielded(exc)) from None
        except ConflictError as exc:
            if key is not None:  # a retry whose first try was stored after all: replay() answers it
                earlier = replay()
                if earlier is not None:
                    return earlier
            raise ApiError(409, _plain(str(exc))) from None
        except DeployError as exc:
            raise ApiError(409, _plain(str(exc))) from None
        if body.reason:
            deployer_of(rt).notify.thread(d["id"], f":robot_face: Reason given by {token.name}: {_inert(body.reason)}")
        return 202, deploy_json(rt, d)

    def target_of(body: DeployRequest) -> str | tuple[str, str | dict[str, str]]:
        """The service, or the release and its version(s), of a deploy request (both-or-neither refused)."""
        if (body.service is None) == (body.release is None):
            raise ApiError(400, "service: give exactly one of service and release" if body.service is not None
                           else "service: required (or release, for a [releases.NAME])")
        if body.service is not None:
            if body.versions is not None:
                raise ApiError(400, "versions: only a release takes versions; a service takes version")
            if body.version is None:
                raise ApiError(400, "version: required")
            if body.service in rt.cfg.releases and body.service not in rt.cfg.services:
                raise ApiError(400, f"service: {body.service} is a release, not a service: send "
                                    f"{{\"release\": \"{body.service}\"}}", release=body.service)
            return body.service
        assert body.release is not None
        if (body.version is None) == (body.versions is None):
            raise ApiError(400, "version: a release takes exactly one of version (every member) and versions "
                                "(SERVICE: VERSION for some)")
        return body.release, body.version if body.version is not None else body.versions

    # GET /api/v1/deploys/{id}
    def show_deploy(token: ApiToken, _: None, request: Request) -> tuple[int, Any]:
        return 200, deploy_json(rt, found(deploy_id_of(request)))

    # GET /api/v1/deploys
    def list_deploys(token: ApiToken, _: None, request: Request) -> tuple[int, Any]:
        q = request.query_params
        unknown = sorted(set(q) - {"service", "env", "status", "limit"})
        if unknown:
            raise ApiError(400, f"{unknown[0]}: unknown query parameter (known: service, env, status, limit)")
        service, env, status = q.get("service") or None, q.get("env") or None, q.get("status") or None
        if service is not None and service not in rt.cfg.services and service not in rt.cfg.releases:
            raise ApiError(400, f"service: unknown service {service!r} (known: "
                                f"{', '.join(sorted([*rt.cfg.services, *rt.cfg.releases]))})")
        if env is not None and env not in rt.cfg.environments:
            raise ApiError(400, f"env: unknown environment {env!r} (known: {', '.join(rt.cfg.environments)})")
        if status is not None and status not in STATUSES:
            raise ApiError(400, f"status: expected one of {', '.join(STATUSES)}, got {status!r}")
        limit_text = q.get("limit", "20")
        if not (limit_text.isascii() and limit_text.isdigit() and 1 <= int(limit_text) <= 100):
            raise ApiError(400, f"limit: expected a number from 1 to 100, got {limit_text[:20]!r}")
        # A release is one item; its members show only when ?service= names one of them.
        found_rows = api_rows.listing(rt.store, service=service, env=env, status=status, limit=int(limit_text),
                                      members=service is not None)
        return 200, {"deploys": [deploy_json(rt, d) for d in found_rows]}

    # POST /api/v1/deploys/{id}/cancel
    def cancel_deploy(token: ApiToken, _: Any, request: Request) -> tuple[int, Any]:
        d = found(deploy_id_of(request))
        actor = token_actor(token.name)
        if not rt.policy.can_cancel(actor, d["requester"]):
            raise ApiError(403, f"deploy #{d['id']} was not requested by the token {token.name!r}; "
                                f"a token cancels only its own deploys (people cancel others on the card)")
        try:
            deployer_of(rt).cancel(d["id"], actor)
        except DeployError as exc:
            raise ApiError(409, _plain(str(exc))) from None
        return 200, deploy_json(rt, found(d["id"]))

    # POST /api/v1/services/{service}/rollback
    def roll_back(token: ApiToken, body: RollbackRequest, request: Request) -> tuple[int, Any]:
        deployer = deployer_of(rt)
        actor = token_actor(token.name)
        name = request.path_params["service"]
        if name in rt.cfg.releases and name not in rt.cfg.services:
            raise ApiError(400, f"service: {name} is a release: POST /api/v1/releases/{name}/rollback", release=name)
        try:
            service, env = deployer.target(name, body.env)
            p = rollbacks.plan(deployer, service, env, actor)
            rb = rollbacks.rollback(deployer, p.live["id"], actor, requested_by=body.requested_by, reason=body.reason,
                                    command="api")
        except UnknownTarget as exc:
            raise ApiError(400, _plain(str(exc))) from None
        except (HeldError, DeployError) as exc:
            raise ApiError(409, _plain(str(exc))) from None
        return 202, deploy_json(rt, rb)

    # POST /api/v1/releases/{release}/rollback
    def roll_back_release(token: ApiToken, body: RollbackRequest, request: Request) -> tuple[int, Any]:
        deployer = deployer_of(rt)
        actor = token_actor(token.name)
        try:
            releases.check_release(deployer, request.path_params["release"])
            p = releases.plan_rollback(deployer, request.path_params["release"], body.env, actor)
            rb = rollbacks.rollback(deployer, p.live["id"], actor, requested_by=body.requested_by, reason=body.reason,
                                    command="api")
        except UnknownTarget as exc:
            raise ApiError(400, _fielded(exc)) from None
        except (HeldError, DeployError) as exc:
            raise ApiError(409, _plain(str(exc))) from None
        return 202, deploy_json(rt, rb)

    # GET /api/v1/services
    def list_services(token: ApiToken, _: None, request: Request) -> tuple[int, Any]:
        out = []
        for service, spec in rt.cfg.services.items():
            for env in rt.cfg.service_environments(service):
                live = rows.live(rt.store, service, env)
                kept = live if live and live["blue_version"] and not live["blue_retired"] else None
                busy = api_rows.in_progress(rt.store, service, env)
                out.append({
                    "service": service, "env": env, "platform": spec.platform,
                    "live_version": live["version"] if live else None, "live_deploy": live["id"] if live else None,
                    "kept_version": kept["blue_version"] if kept else None,
                    "kept_until": _iso(kept["blue_retire_at"]) if kept else None,
                    "in_progress": deploy_json(rt, busy) if busy else None,
                })
        return 200, {"services": out}

    async def post_deploys(request: Request) -> Response:
        return await handle(request, "deploy", request_deploy, body_model=DeployRequest)

    async def get_deploys(request: Request) -> Response:
        return await handle(request, "read", list_deploys)

    async def get_deploy(request: Request) -> Response:
        return await handle(request, "read", show_deploy, inline=True)

    async def post_cancel(request: Request) -> Response:
        return await handle(request, "deploy", cancel_deploy)

    async def post_rollback(request: Request) -> Response:
        return await handle(request, "rollback", roll_back, body_model=RollbackRequest)

    async def post_release_rollback(request: Request) -> Response:
        return await handle(request, "rollback", roll_back_release, body_model=RollbackRequest)

    async def get_services(request: Request) -> Response:
        return await handle(request, "read", list_services)

    document = openapi()

    async def get_openapi(_: Request) -> Response:
        return JSONResponse(document)

    return [
        Route("/api/v1/openapi.json", get_openapi, methods=["GET"]),
        Route("/api/v1/deploys", post_deploys, methods=["POST"]),
        Route("/api/v1/deploys", get_deploys, methods=["GET"]),
        Route("/api/v1/deploys/{deploy_id}", get_deploy, methods=["GET"]),
        Route("/api/v1/deploys/{deploy_id}/cancel", post_cancel, methods=["POST"]),
        Route("/api/v1/services/{service}/rollback", post_rollback, methods=["POST"]),
        Route("/api/v1/releases/{release}/rollback", post_release_rollback, methods=["POST"]),
        Route("/api/v1/services", get_services, methods=["GET"]),
    ]


def _plain(text: str) -> str:
    """A domain message written for Slack, for a JSON answer: no backticks, no mentions' markup."""
    return re.sub(r"<@([^>]+)>", r"\1", re.sub(r"<#([^>|]+)(\|[^>]*)?>", r"#\1", text)).replace("`", "")


def _fielded(exc: Exception) -> str:
    """A bad-input message, prefixed with the request's field it names when it knows one."""
    field = getattr(exc, "field", None)
    return f"{field}: {_plain(str(exc))}" if field else _plain(str(exc))


def _inert(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# -- the OpenAPI 3.1 document -----------------------------------------------------------------------


def openapi() -> dict[str, Any]:
    """Describes every route of the REST API (and the window API), from the models above."""
    schemas: dict[str, Any] = {}
    for model in (DeployRequest, RollbackRequest, Deploy, Member, ServiceState, ErrorAnswer, Step, Approval):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            schemas[name] = sub
        schemas[model.__name__] = schema
    schemas["DeployList"] = {"type": "object", "required": ["deploys"],
                             "properties": {"deploys": {"type": "array", "items": {"$ref": "#/components/schemas/Deploy"}}}}
    schemas["ServiceList"] = {"type": "object", "required": ["services"],
                              "properties": {"services": {"type": "array",
                                                          "items": {"$ref": "#/components/schemas/ServiceState"}}}}
    schemas["Window"] = {
        "type": "object", "required": ["at", "safe", "reason", "next_safe_at", "blocked_by"],
        "properties": {
            "at": {"type": "string", "format": "date-time"}, "safe": {"type": "boolean"}, "reason": {"type": "string"},
            "next_safe_at": {"type": ["string", "null"], "format": "date-time"},
            "safe_until": {"type": ["string", "null"], "format": "date-time",
                           "description": "when the safe stretch that starts at next_safe_at ends; null if not within 14 days"},
            "until_reason": {"type": ["string", "null"]},
            "blocked_by": {"type": "array", "items": {"type": "object"}},
        },
    }

    def ref(name: str) -> dict[str, Any]:
        return {"$ref": f"#/components/schemas/{name}"}

    def answers(ok: tuple[str, str, str], *errors: int) -> dict[str, Any]:
        code, name, text = ok
        out = {code: {"description": text, "content": {"application/json": {"schema": ref(name)}}}}
        meaning = {400: "bad input: the message names the field", 401: "missing or unknown token",
                   403: "the token lacks the scope", 404: "no such deploy", 409: "conflicts with what is stored",
                   413: "the body is over 64 KiB"}
        for status in errors:
            out[str(status)] = {"description": meaning[status], "content": {"application/json": {"schema": ref("ErrorAnswer")}}}
        return out

    def body(name: str) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": ref(name)}}}

    deploy_id = {"name": "deploy_id", "in": "path", "required": True, "schema": {"type": "integer"}}
    secured = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "recess REST API", "version": "1",
                 "description": "Request, follow, cancel and roll back blue-green deploys from CI. A token never "
                                "approves: deploys it requests wait for people to approve them in Slack."},
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "a token of [[api.tokens]] (`recess api token NAME`)"}}},
        "paths": {
            "/api/v1/deploys": {
                "post": {"summary": "request a deploy of a service, or of a release (scope deploy)", "security": secured,
                         "requestBody": body("DeployRequest"),
                         "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                         "schema": {"type": "string", "maxLength": 200},
                                         "description": "the same key and body answer the same deploy (200); "
                                                        "the same key with another body answers 409"}],
                         "responses": {**answers(("202", "Deploy", "the new deploy (pending, or queued behind another)"),
                                                 400, 401, 403, 409, 413),
                                       "200": {"description": "a retry with the same Idempotency-Key and body",
                                               "content": {"application/json": {"schema": ref("Deploy")}}}}},
                "get": {"summary": "list deploys, newest first; a release is one item, its members listed only "
                                   "when ?service= names one (scope read)", "security": secured,
                        "parameters": [{"name": n, "in": "query", "required": False, "schema": s} for n, s in (
                            ("service", {"type": "string"}), ("env", {"type": "string"}),
                            ("status", {"type": "string", "enum": list(STATUSES)}),
                            ("limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}))],
                        "responses": answers(("200", "DeployList", "the deploys"), 400, 401, 403)},
            },
            "/api/v1/deploys/{deploy_id}": {
                "get": {"summary": "one deploy with its steps (scope read)", "security": secured, "parameters": [deploy_id],
                        "responses": answers(("200", "Deploy", "the deploy"), 400, 401, 403, 404)},
            },
            "/api/v1/deploys/{deploy_id}/cancel": {
                "post": {"summary": "cancel a deploy this token requested, not yet running (scope deploy)",
                         "security": secured, "parameters": [deploy_id],
                         "responses": answers(("200", "Deploy", "the cancelled deploy"), 400, 401, 403, 404, 409)},
            },
            "/api/v1/services/{service}/rollback": {
                "post": {"summary": "roll back as /rollback does (scope rollback)", "security": secured,
                         "parameters": [{"name": "service", "in": "path", "required": True, "schema": {"type": "string"}}],
                         "requestBody": body("RollbackRequest"),
                         "responses": answers(("202", "Deploy", "the rollback, itself a deploy row"), 400, 401, 403, 409, 413)},
            },
            "/api/v1/releases/{release}/rollback": {
                "post": {"summary": "roll back every member of a release together, as /rollback RELEASE does (scope rollback)",
                         "security": secured,
                         "parameters": [{"name": "release", "in": "path", "required": True, "schema": {"type": "string"}}],
                         "requestBody": body("RollbackRequest"),
                         "responses": answers(("202", "Deploy", "the release's rollback, with its members"),
                                              400, 401, 403, 409, 413)},
            },
            "/api/v1/services": {
                "get": {"summary": "each service and environment: live, kept and in-progress versions (scope read)",
                        "security": secured, "responses": answers(("200", "ServiceList", "the services"), 401, 403)},
            },
            "/api/v1/window": {
                "get": {"summary": "may we deploy now (or at `at`)? No token needed",
                        "parameters": [{"name": "at", "in": "query", "required": False,
                                        "schema": {"type": "string", "format": "date-time"}}],
                        "responses": answers(("200", "Window", "the verdict"), 400)},
            },
            "/api/v1/openapi.json": {"get": {"summary": "this document", "responses": {"200": {"description": "OpenAPI 3.1"}}}},
        },
    }
