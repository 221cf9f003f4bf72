"""OFREP, the OpenFeature Remote Evaluation Protocol: any OpenFeature SDK reads recess's flags.

`POST /ofrep/v1/evaluate/flags/{key}` evaluates one flag, `POST /ofrep/v1/evaluate/flags` all of
them, for the request's evaluation context (`targetingKey`, `tenant`, `role`). Shapes follow
open-feature/protocol's service/openapi.yaml. Evaluation reads the in-memory flag snapshot, so the
handlers run on the event loop without waiting on SQLite.

Access needs one of `[flags] api_keys` as `Authorization: Bearer KEY` or `X-API-Key: KEY`; with no
keys configured OFREP is closed. Bulk answers carry an ETag over the flag configuration and the
context; `If-None-Match` with that ETag answers 304.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bot.edge import Refusal, read_bounded
from bot.runtime import Runtime
from commands.flags import FLAG_NOT_FOUND, Evaluation, FlagBook, Snapshot

PARSE_ERROR = "PARSE_ERROR"
INVALID_CONTEXT = "INVALID_CONTEXT"
# An evaluation context is a few hundred bytes; bulk gets more room for SDKs that send whole
# user records. Past the limit nothing more is read (bot/edge.read_bounded).
MAX_BODY = 64 * 1024
MAX_BULK_BODY = 1024 * 1024
_CONTEXT_STRINGS = ("targetingKey", "tenant", "role")


class BadRequest(Exception):
    def __init__(self, code: str, details: str, *, close: bool = False) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.close = close  # the rest of the body is unread: the connection cannot be reused


class Context:
    """The parts of an evaluation context recess reads, plus the whole of it for the ETag."""

    __slots__ = ("raw", "targeting_key", "tenant", "role")

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.targeting_key = raw.get("targetingKey") or None
        self.tenant = raw.get("tenant") or None
        self.role = raw.get("role") or None


def read_context(body: bytes, limit: int = MAX_BODY) -> Context:
    """The request body's `context`; raises BadRequest with OFREP's error code."""
    if len(body) > limit:
        raise BadRequest(PARSE_ERROR, f"the request body is larger than {limit} bytes")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(PARSE_ERROR, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest(PARSE_ERROR, 'expected a JSON object like {"context": {"targetingKey": "..."}}')
    if "context" not in data or data["context"] is None:
        raise BadRequest(INVALID_CONTEXT, "the request has no 'context'")
    raw = data["context"]
    if not isinstance(raw, dict):
        raise BadRequest(INVALID_CONTEXT, f"'context' must be an object, got {type(raw).__name__}")
    for name in _CONTEXT_STRINGS:
        value = raw.get(name)
        if value is not None and not isinstance(value, str):
            raise BadRequest(INVALID_CONTEXT, f"context.{name} must be a string, got {type(value).__name__}")
    return Context(raw)


def success(ev: Evaluation) -> dict[str, Any]:
    return {"key": ev.key, "value": ev.value, "reason": ev.reason, "variant": ev.variant, "metadata": ev.metadata}


def failure(ev: Evaluation) -> dict[str, Any]:
    return {"key": ev.key, "errorCode": ev.error_code, "errorDetails": ev.error_details}


def bulk_etag(snapshot: Snapshot, ctx: Context) -> str:
    """Changes when any flag's configuration changes or when the context does."""
    canonical = json.dumps(ctx.raw, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    digest = hashlib.sha256(f"{snapshot.digest}\n{canonical}".encode()).hexdigest()
    return f'"{digest[:32]}"'


def etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    content = json.dumps(body, separators=(",", ":")).encode()
    return Response(content, status_code=status, media_type="application/json", headers=headers)


def routes(rt: Runtime) -> list[Route]:
    book = FlagBook.for_store(rt.store)
    book.seed(rt.cfg.flags.defaults, now=rt.now())
    api_keys = tuple(k.encode() for k in rt.cfg.flags.api_keys if k)

    def authorized(request: Request) -> bool:
        if not api_keys:
            return False
        offered = []
        api_key = request.headers.get("x-api-key")
        if api_key:
            offered.append(api_key.strip())
        scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            offered.append(token.strip())
        # Compare against every key, in constant time per key, so timing reveals nothing.
        found = False
        for given in offered:
            for key in api_keys:
                found |= hmac.compare_digest(given.encode(), key)
        return found

    async def body_of(request: Request, limit: int) -> bytes:
        try:
            return await read_bounded(request, limit)
        except Refusal as exc:
            raise BadRequest(PARSE_ERROR, f"the request body is larger than {limit} bytes" if exc.status == 413
                             else exc.message, close=exc.status == 413) from None

    def refused(exc: BadRequest, body: dict[str, Any]) -> Response:
        return _json(400, {**body, "errorCode": exc.code, "errorDetails": exc.details},
                     headers={"Connection": "close"} if exc.close else None)

    async def evaluate_flag(request: Request) -> Response:
        if not authorized(request):
            return Response(status_code=401, headers={"WWW-Authenticate": 'Bearer realm="ofrep"'})
        key = request.path_params["key"]
        try:
            ctx = read_context(await body_of(request, MAX_BODY))
        except BadRequest as exc:
            return refused(exc, {"key": key})
        ev = book.evaluate(key, ctx.targeting_key, ctx.tenant, ctx.role)
        if ev.ok:
            return _json(200, success(ev))
        return _json(404 if ev.error_code == FLAG_NOT_FOUND else 400, failure(ev))

    async def evaluate_flags(request: Request) -> Response:
        if not authorized(request):
            return Response(status_code=401, headers={"WWW-Authenticate": 'Bearer realm="ofrep"'})
        try:
            ctx = read_context(await body_of(request, MAX_BULK_BODY), MAX_BULK_BODY)
        except BadRequest as exc:
            return refused(exc, {})
        snapshot = book.snapshot  # one snapshot for both the ETag and the values
        etag = bulk_etag(snapshot, ctx)
        if etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers={"ETag": etag})
        results = snapshot.evaluate_all(ctx.targeting_key, ctx.tenant, ctx.role)
        flags = [success(ev) if ev.ok else failure(ev) for ev in results]
        return _json(200, {"flags": flags}, headers={"ETag": etag})

    def counted(endpoint: Any) -> Any:
        """Counts each answer's status for GET /metrics (recess_ofrep_requests_total)."""

        async def run(request: Request) -> Response:
            response = await endpoint(request)
            metrics = rt.extras.get("metrics")
            if metrics is not None:
                metrics.ofrep_answered(response.status_code)
            return response

        return run

    return [
        Route("/ofrep/v1/evaluate/flags", counted(evaluate_flags), methods=["POST"]),
        Route("/ofrep/v1/evaluate/flags/{key:path}", counted(evaluate_flag), methods=["POST"]),
    ]
