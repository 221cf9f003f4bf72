"""The HTTP face of recess: Slack events, health, the window API, and OFREP, on one port.

Bolt's sync dispatch runs in Starlette's thread pool, so a listener never blocks the event loop
(and with it every other route). Bad signatures get 401 and are not processed; a malformed body
gets 400.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import urllib.parse

import anyio
import anyio.to_thread
from slack_bolt import App, BoltRequest
from slack_bolt.adapter.starlette.handler import to_starlette_response
from slack_sdk.signature import SignatureVerifier
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bot import ofrep
from bot.runtime import Runtime
from commands import freezes

log = logging.getLogger("recess.http")


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _well_formed(body: bytes, content_type: str) -> bool:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    if "application/json" in content_type:
        try:
            return isinstance(json.loads(text), dict)
        except ValueError:
            return False
    form = urllib.parse.parse_qs(text, keep_blank_values=True)
    if not form:
        return False
    if "payload" in form:
        try:
            return isinstance(json.loads(form["payload"][0]), dict)
        except ValueError:
            return False
    return "command" in form or "ssl_check" in form or "type" in form


def build_http_app(rt: Runtime, bolt: App | None, *, verify: bool = True) -> Starlette:
    verifier = SignatureVerifier(rt.signing_secret) if verify and bolt is not None else None

    async def slack_events(request: Request) -> Response:
        if bolt is None:
            return error(404, "Slack traffic arrives over Socket Mode on this server")
        body = await request.body()
        if verifier is not None and not verifier.is_valid_request(body, dict(request.headers)):
            return error(401, "invalid or stale Slack signature")
        if not _well_formed(body, request.headers.get("content-type", "")):
            return error(400, "malformed Slack request body")
        bolt_request = BoltRequest(body=body.decode("utf-8"), query=dict(request.query_params), headers=dict(request.headers))
        bolt_response = await run_in_threadpool(bolt.dispatch, bolt_request)
        return to_starlette_response(bolt_response)

    async def healthz(_: Request) -> Response:
        report = await run_in_threadpool(rt.health)
        return JSONResponse(report.to_json(), status_code=200 if report.ok else 503)

    def window_verdict(at_text: str | None) -> JSONResponse:
        if at_text is None:
            at = rt.now()
        else:
            try:
                at = dt.datetime.fromisoformat(at_text.replace(" ", "+"))
            except ValueError:
                return error(400, f"at: expected an ISO 8601 instant with offset, got {at_text!r}")
            if at.tzinfo is None:
                return error(400, f"at: expected an ISO 8601 instant with an offset (like -04:00 or Z), got {at_text!r}")
            try:
                at = freezes.check_instant(at)
            except (ValueError, OverflowError) as exc:
                return error(400, f"at: {exc}")
        verdict = freezes.current_calendar(rt.cfg, rt.store).verdict(at.astimezone(dt.UTC))
        return JSONResponse(verdict.to_json())

    async def window(request: Request) -> Response:
        return await run_in_threadpool(window_verdict, request.query_params.get("at"))

    routes = [
        Route("/slack/events", slack_events, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/api/v1/window", window, methods=["GET"]),
    ]
    routes += ofrep.routes(rt)

    async def not_found(request: Request, exc: Exception) -> Response:
        return error(404, f"no route {request.method} {request.url.path}")

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return error(405, f"{request.method} is not allowed on {request.url.path}")

    async def internal(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path, exc_info=exc)
        return error(500, "internal error; see the server log")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):  # noqa: ANN202
        # Slack requests wait in the thread pool while Bolt's listeners ack; 40 threads (anyio's
        # default) would queue a burst of 50 commands behind one another.
        anyio.to_thread.current_default_thread_limiter().total_tokens = 128
        yield

    return Starlette(routes=routes, exception_handlers={404: not_found, 405: method_not_allowed, 500: internal},
                     lifespan=lifespan)
