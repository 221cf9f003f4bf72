"""The HTTP face of recess: Slack events, health, the window API, OFREP and the REST API, on one port.

Bolt's sync dispatch runs in Starlette's thread pool, so a listener never blocks the event loop
(and with it every other route). Before Bolt sees a Slack request, bot/edge.py bounds its body
(413), checks its signature (401), its shape (400), replays and retries (401, or 200 without
acting), and its workspace (an ephemeral refusal): malformed requests never answer 500.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable

import anyio
import anyio.to_thread
from slack_bolt import App, BoltContext, BoltRequest
from slack_bolt.adapter.starlette.handler import to_starlette_response
from slack_bolt.request.internals import build_context
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bot import api, dashboard, edge, metrics, ofrep
from bot.runtime import Runtime
from bot.slack_client import make_client
from commands import freezes

log = logging.getLogger("recess.http")


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def refused(exc: edge.Refusal, request: Request) -> JSONResponse:
    """One log line, no traceback; a 413 closes the connection so the rest of the body is never read."""
    client = request.client.host if request.client else "?"
    log.warning("refused %s %s from %s with %d: %s", request.method, request.url.path, client, exc.status, exc.message)
    return error(exc.status, exc.message, {"Connection": "close"} if exc.status == 413 else None)


def build_http_app(rt: Runtime, bolt: App | None, *, verify: bool = True, clock: Callable[[], float] = time.time) -> Starlette:
    """`verify=False` skips the signature and replay checks (never in `recess serve`); `clock`
    (Unix seconds) is what signature timestamps are compared with."""
    guard = edge.replay_guard(rt) if bolt is not None else None
    if guard is not None:
        guard.clock = clock
    workspaces = None
    if bolt is not None:
        lookup = make_client(rt.client.token, rt.client.base_url, timeout=5, retries=False)
        rt.extras["home_team"] = None  # the installed workspace's team ID, once auth.test has said it
        workspaces = rt.extras["workspaces"] = edge.Workspaces(
            rt.cfg.access.teams, edge.auth_test_team(lookup), on_home=lambda team: rt.extras.__setitem__("home_team", team))

    def admit(request: Request, body: bytes) -> Response | edge.SlackRequest:
        """Everything between the body and Bolt (bot/edge.py); runs in the thread pool, since the
        replay log writes to SQLite. Raises edge.Refusal, or answers itself, or hands back the
        request for Bolt."""
        headers = request.headers
        if verify:
            ts = edge.check_signature(rt.signing_secret, body, headers.get("x-slack-request-timestamp"),
                                      headers.get("x-slack-signature"), now=clock())
        parsed = edge.parse_slack_request(body, headers.get("content-type"))
        if verify:
            retry = headers.get("x-slack-retry-num")
            # Slack's retry of a body already taken is acknowledged, even when it carries the same
            # signature (a retry within the same second has the same timestamp): a 401 would only
            # make Slack retry again. The header is not signed, but all it can buy is a 200.
            redelivered = retry is not None and guard.seen_body(body)
            fresh = guard.admit(headers["x-slack-signature"], ts, body)
            if redelivered:
                log.info("Slack retry #%s (%s) of a request already taken: acknowledged, not acted on again",
                         retry[:8], headers.get("x-slack-retry-reason", "no reason given")[:40])
                return Response(status_code=200)
            if not fresh:
                raise edge.Refusal(401, "replayed Slack request: this signature was already used")
        if parsed.kind in ("command", "interactive", "event") and not workspaces.serves(parsed.teams):
            log.warning("refused a %s from team %s: recess serves %s", parsed.kind, ", ".join(parsed.teams) or "(none)",
                        ", ".join(sorted(workspaces.allowed)))
            if parsed.kind == "event":
                return Response(status_code=200)
            return JSONResponse({"response_type": "ephemeral", "text": edge.NOT_HOME})
        return parsed

    async def slack_events(request: Request) -> Response:
        if bolt is None:
            return error(404, "Slack traffic arrives over Socket Mode on this server")
        try:
            body = await edge.read_bounded(request, edge.MAX_SLACK_BODY)
            admitted = await run_in_threadpool(admit, request, body)
        except edge.Refusal as exc:
            return refused(exc, request)
        if isinstance(admitted, Response):
            return admitted
        try:
            bolt_request = BoltRequest(body=admitted.text, query=dict(request.query_params), headers=dict(request.headers))
            # Bolt re-parses the text with a rule that mistakes a command mentioning "payload" for
            # a click; give it the edge's reading of the same bytes (the signature is on raw_body).
            bolt_request.body = admitted.payload
            bolt_request.context = build_context(BoltContext({}), admitted.payload)
        except Exception as exc:  # a shape the checks above did not foresee: still the sender's fault
            return refused(edge.Refusal(400, f"malformed Slack request: {type(exc).__name__}: {exc}"), request)
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
    routes += metrics.routes(rt)  # before ofrep: OFREP answers are counted into it
    routes += ofrep.routes(rt)
    routes += api.routes(rt)  # the REST API for CI (bot/api.py)
    routes += dashboard.routes(rt)

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
