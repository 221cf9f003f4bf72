"""The /dashboard routes: sign-in, the overview, deploys, one deploy, flags with toggles, DORA.

Pages are Jinja2 templates (bot/dashboard/templates), rendered in the thread pool since they
read SQLite. Answers to bad input are pages with the right status (400, 401, 403, 404), never a
500 with a trace.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hmac
import logging
import urllib.parse
from typing import Any

import jinja2
import pendulum
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from bot import edge
from bot.runtime import Runtime, user_timezone
from bot.views.deploy import thread_link
from commands import dashboard as dash
from commands.config import format_duration
from commands.flags import Change, FlagBook, FlagError, Scope, Unchanged
from commands.freezes import current_calendar, list_freezes
from commands.windows import format_local, timeline
from storage import audit
from storage import dashboard as links
from storage import deploys as rows

log = logging.getLogger("recess.dashboard")

COOKIE = "recess_session"
MAX_FORM = 16_384
TOGGLE_VALUES = ("on", "off", "default")
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # The sign-in token is in the link's query: never hand it to another site as a Referer.
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
                               "img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
}
SIGNIN_WHY = {
    "unknown": "This sign-in link is not one recess gave out (it may be mistyped or cut short).",
    "spent": "This sign-in link was already used: each link signs in once.",
    "expired": "This sign-in link has expired: links work for a few minutes after they are given.",
}

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("bot.dashboard", "templates"),
    autoescape=jinja2.select_autoescape(default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def signin_url(rt: Runtime, token: str) -> str:
    """The one-time link, on `[bot] public_url` (default: the address `recess serve` listens on)."""
    base = rt.cfg.bot.public_url or rt.extras.get("serve_url") or "http://127.0.0.1:8080"
    return f"{base}/dashboard/signin?token={urllib.parse.quote(token)}"


@dataclasses.dataclass
class Viewer:
    session: dash.Session | None
    tz: str
    admin: bool

    @property
    def user(self) -> str | None:
        return self.session.user if self.session else None


# -- formatting helpers for templates ------------------------------------------------------------


@jinja2.pass_context
def _local(ctx: Any, at: dt.datetime | None) -> str:
    """An instant in the viewer's timezone, with its day when it is not today."""
    if at is None:
        return "—"
    return format_local(at, ctx["tz"], reference=ctx["now"])


def _dur(value: dt.timedelta | float | None) -> str:
    if value is None:
        return "—"
    if not isinstance(value, dt.timedelta):
        value = dt.timedelta(seconds=value)
    return format_duration(value)


def _thread(d: dict[str, Any]) -> str | None:
    link = thread_link(d)
    return link if link.startswith("https://") else None


_templates.filters.update(local=_local, dur=_dur, status_label=lambda s: (s or "").replace("_", " "),
                          duration=dash.duration, thread_link=_thread, release_summary=dash.release_summary,
                          release_title=dash.release_title)
_templates.tests.update(release=rows.is_release, member=rows.is_member)


def _bars(weekly: list[tuple[dt.date, float | None]], *, width: int = 280, height: int = 80) -> dict[str, Any]:
    values = [v for _, v in weekly if v is not None]
    top = max(values, default=0) or 1
    n = max(len(weekly), 1)
    slot = width / n
    bars = []
    for i, (week, v) in enumerate(weekly):
        h = 0 if v is None else max(1.0, v / top * (height - 14))
        bars.append({"x": round(i * slot + 2, 1), "w": round(max(slot - 4, 1), 1), "h": round(h, 1),
                     "y": round(height - 12 - h, 1), "week": week.isoformat(), "value": v})
    return {"width": width, "height": height, "bars": bars, "weeks": [w for w, _ in weekly]}


def _timeline_rows(rt: Runtime, now: dt.datetime, tz: str, days: int = 7) -> dict[str, Any]:
    start = now
    end = now + dt.timedelta(days=days)
    calendar = current_calendar(rt.cfg, rt.store)
    width = 700.0
    span = (end - start).total_seconds()
    lanes = []
    for tenant, spans in timeline(calendar, start, end).items():
        items = []
        for s in spans:
            x = (s.start - start).total_seconds() / span * width
            w = max((s.end - s.start).total_seconds() / span * width, 0.5)
            items.append({"kind": s.kind, "x": round(x, 1), "w": round(w, 1),
                          "label": f"{s.label}: {format_local(s.start, tz, reference=now)} – {format_local(s.end, tz, reference=now)}"})
        lanes.append({"tenant": tenant or "all schools", "spans": items})
    ticks = []
    local_start = pendulum.instance(start).in_timezone(tz).start_of("day")
    for i in range(1, days + 1):
        day = local_start.add(days=i)
        x = (day - pendulum.instance(start)).total_seconds() / span * width
        if 0 <= x <= width:
            ticks.append({"x": round(x, 1), "label": day.format("ddd D")})
    return {"width": width, "rows": lanes, "ticks": ticks}


# -- the routes ---------------------------------------------------------------------------------


def routes(rt: Runtime) -> list[Route]:
    cfg = rt.cfg

    def viewer_of(request: Request) -> Viewer | None:
        session = dash.session(rt.store, request.cookies.get(COOKIE), now=rt.now())
        if session is None:
            return None
        return Viewer(session, user_timezone(rt, session.user), bool(rt.policy.can_change_flags(session.user)))

    def page(name: str, viewer: Viewer | None, status: int = 200, **context: Any) -> HTMLResponse:
        now = rt.now()
        tz = viewer.tz if viewer else "UTC"
        html = _templates.get_template(name).render(viewer=viewer, now=now, tz=tz, cfg=cfg, **context)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def problem(status: int, title: str, message: str, viewer: Viewer | None = None, **context: Any) -> HTMLResponse:
        return page("problem.html", viewer, status, title=title, message=message, **context)

    def reader(request: Request) -> tuple[Viewer | None, Response | None]:
        """Who reads: a signed-in person, anyone when `[dashboard] public`, else a redirect."""
        viewer = viewer_of(request)
        if viewer is None and not cfg.dashboard.public:
            return None, RedirectResponse("/dashboard/signin", status_code=303, headers=SECURITY_HEADERS)
        return viewer, None

    # -- sign-in ---------------------------------------------------------------------------------

    def signin_page(request: Request) -> Response:
        token = request.query_params.get("token")
        if token is None:
            return page("signin_help.html", viewer_of(request))
        try:
            user = dash.check_link(rt.store, token, now=rt.now())
        except dash.SignInError as exc:
            return problem(401, "This link cannot sign you in", SIGNIN_WHY[exc.why], signin_help=True)
        # Spent by the POST below, not by opening the link: link previews and mail scanners
        # fetch links too, and must not use up someone's sign-in.
        return page("signin.html", None, token=token, user=user)

    def signin_post(request: Request, form: dict[str, str]) -> Response:
        try:
            session = dash.redeem(cfg, rt.store, form.get("token", ""), now=rt.now())
        except dash.SignInError as exc:
            return problem(401, "This link cannot sign you in", SIGNIN_WHY[exc.why], signin_help=True)
        audit.record(rt.store, actor=session.user, command="dashboard", action="dashboard.signin", target=f"user:{session.user}",
                     at=rt.now())
        response = RedirectResponse("/dashboard", status_code=303, headers=SECURITY_HEADERS)
        secure = request.url.scheme == "https" or (cfg.bot.public_url or "").startswith("https://")
        response.set_cookie(COOKIE, session.id, max_age=int(cfg.dashboard.session_ttl.total_seconds()), path="/dashboard",
                            httponly=True, samesite="lax", secure=secure)
        return response

    def signout_post(request: Request, form: dict[str, str]) -> Response:
        viewer = viewer_of(request)
        if viewer is None:
            return RedirectResponse("/dashboard/signin", status_code=303, headers=SECURITY_HEADERS)
        if not hmac.compare_digest(form.get("csrf", "").encode(), viewer.session.csrf.encode()):
            return problem(403, "Refused", "This form lacks its CSRF token; reload the page and try again.", viewer)
        links.end_session(rt.store, viewer.session.id)
        response = RedirectResponse("/dashboard/signin", status_code=303, headers=SECURITY_HEADERS)
        response.delete_cookie(COOKIE, path="/dashboard")
        return response

    # -- pages -----------------------------------------------------------------------------------

    def overview_page(request: Request) -> Response:
        viewer, redirect = reader(request)
        if redirect:
            return redirect
        now = rt.now()
        calendar = current_calendar(cfg, rt.store)
        ov = dash.overview(cfg, rt.store, calendar, now=now)
        user = viewer.user if viewer else None
        waiting = sorted(ov.waiting, key=lambda d: (not (user and rt.policy.can_approve(user, d["requester"])), d["id"]))
        tz = viewer.tz if viewer else "UTC"
        return page("overview.html", viewer, ov=ov, waiting=waiting,
                    stretch=ov.safe_until(tz),
                    freezes=list_freezes(cfg, rt.store, now)[:10], timeline=_timeline_rows(rt, now, tz),
                    can_approve=lambda d: bool(user and rt.policy.can_approve(user, d["requester"])))

    def deploys_page(request: Request) -> Response:
        viewer, redirect = reader(request)
        if redirect:
            return redirect
        q = request.query_params
        try:
            page_no = _whole(q.get("page", "1"), "page")
            ids, counted = None, None
            if q.get("dora"):
                key, days = q["dora"], _whole(q.get("days", "30"), "days")
                if key not in dash.DORA_KEYS:
                    raise dash.DashboardError(f"dora: {key!r} is not one of {', '.join(dash.DORA_KEYS)}")
                numbers = dash.dora(cfg, rt.store, now=rt.now(), days=days, service=q.get("service") or None)
                ids = numbers.key(key).ids
                counted = {"key": key, "days": days}
                result = dash.deploy_page(cfg, rt.store, page=page_no, ids=ids)
            else:
                result = dash.deploy_page(cfg, rt.store, service=q.get("service") or None, env=q.get("env") or None,
                                          status=q.get("status") or None, page=page_no)
        except dash.DashboardError as exc:
            return problem(exc.status, "Not a filter recess knows", str(exc), viewer)
        return page("deploys.html", viewer, result=result, counted=counted, query=dict(q),
                    statuses=dash.STATUSES)

    def deploy_page(request: Request) -> Response:
        viewer, redirect = reader(request)
        if redirect:
            return redirect
        raw = request.path_params["id"]
        try:
            detail = dash.deploy_detail(rt.store, int(raw)) if raw.isdigit() and len(raw) < 12 else None
        except dash.DashboardError:
            detail = None
        if detail is None:
            return problem(404, "No such deploy", f"There is no deploy {raw!r}; the deploys page lists them all.", viewer)
        return page("deploy.html", viewer, d=detail.deploy, detail=detail)

    def flags_page(request: Request, notice: str | None = None, status: int = 200) -> Response:
        viewer, redirect = reader(request)
        if redirect:
            return redirect
        tenants = [t.id for t in cfg.tenants]
        chosen = request.query_params.get("tenant") or (tenants[0] if tenants else "")
        if chosen and chosen not in tenants:
            return problem(400, "Not a tenant recess knows", f"tenant: {chosen!r} is not one of {', '.join(tenants)}", viewer)
        book = FlagBook.for_store(rt.store)
        flags = sorted(book.flags(), key=lambda f: f.key)
        matrix = {f.key: {t: dash.tenant_state(f, t) for t in tenants} for f in flags}
        changed = request.query_params.get("changed")
        return page("flags.html", viewer, status, flags=flags, tenants=tenants, chosen=chosen, matrix=matrix,
                    notice=notice or (f"{changed}: changed, audited and announced in the deploy channel" if changed else None),
                    roles=cfg.flags.roles)

    def toggle_post(request: Request, form: dict[str, str]) -> Response:
        viewer = viewer_of(request)
        if viewer is None:
            return problem(401, "Sign in to change flags", "Flag toggles need you signed in, even when the pages are public.",
                           None, signin_help=True)
        if not hmac.compare_digest(form.get("csrf", "").encode(), viewer.session.csrf.encode()):
            return problem(403, "Refused", "This form lacks its CSRF token (or carries another session's); "
                                           "reload the page and try again. Nothing changed.", viewer)
        key, tenant, value = form.get("flag", ""), form.get("tenant", ""), form.get("value", "")
        decision = rt.policy.can_change_flags(viewer.user)
        if not decision:
            audit.record(rt.store, actor=viewer.user, command="dashboard", action="flag.refused", target=f"flag:{key[:100]}",
                         note=f"{value[:20]} for tenant={tenant[:100]}: {decision.reason}", at=rt.now())
            return problem(403, "Refused", f"You cannot change flags: {decision.reason}. Nothing changed.", viewer)
        book = FlagBook.for_store(rt.store)
        if book.get(key) is None:
            return problem(400, "No such flag", f"flag: {key[:100]!r} is not a flag recess knows. Nothing changed.", viewer)
        if tenant not in [t.id for t in cfg.tenants]:
            return problem(400, "No such tenant", f"tenant: {tenant[:100]!r} is not a tenant in the configuration. Nothing changed.", viewer)
        if value not in TOGGLE_VALUES:
            return problem(400, "Not a toggle", f"value: {value[:20]!r} is not one of on, off, default. Nothing changed.", viewer)
        from bot.listeners.flag import apply_change

        change = Change("clear" if value == "default" else value, key, Scope(tenant=tenant))
        where = f"/dashboard/flags?tenant={urllib.parse.quote(tenant)}"
        try:
            apply_change(rt, viewer.user, change, f"dashboard: {value} {key} tenant={tenant}")
        except Unchanged:
            return RedirectResponse(where, status_code=303, headers=SECURITY_HEADERS)
        except FlagError as exc:
            return problem(400, "Not changed", f"{exc}. Nothing changed.", viewer)
        return RedirectResponse(f"{where}&changed={urllib.parse.quote(key)}", status_code=303, headers=SECURITY_HEADERS)

    def metrics_page(request: Request) -> Response:
        viewer, redirect = reader(request)
        if redirect:
            return redirect
        q = request.query_params
        try:
            days = _whole(q.get("days", "30"), "days")
            service = q.get("service") or None
            if service:
                numbers, per_service = dash.dora(cfg, rt.store, now=rt.now(), days=days, service=service), []
            else:
                numbers, *per_service = dash.dora_all(cfg, rt.store, now=rt.now(), days=days)
        except dash.DashboardError as exc:
            return problem(400, "Not a filter recess knows", str(exc), viewer)
        charts = {k: _bars(numbers.key(k).weekly) for k in dash.DORA_KEYS}
        return page("metrics.html", viewer, d=numbers, charts=charts, per_service=per_service, service=service, days=days)

    # -- plumbing --------------------------------------------------------------------------------

    def get(fn: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            return await run_in_threadpool(fn, request)

        return endpoint

    def post(fn: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                body = await edge.read_bounded(request, MAX_FORM)
            except edge.Refusal as exc:
                return await run_in_threadpool(problem, exc.status, "Refused", exc.message)
            fields = urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
            form = {k: v[0] for k, v in fields.items() if v}
            return await run_in_threadpool(fn, request, form)

        return endpoint

    def unknown(request: Request) -> Response:
        viewer, _ = reader(request)
        return problem(404, "No such page", f"recess has no page {request.url.path!r}.", viewer)

    return [
        Route("/dashboard", get(overview_page), methods=["GET"]),
        Route("/dashboard/signin", get(signin_page), methods=["GET"]),
        Route("/dashboard/signin", post(signin_post), methods=["POST"]),
        Route("/dashboard/signout", post(signout_post), methods=["POST"]),
        Route("/dashboard/deploys", get(deploys_page), methods=["GET"]),
        Route("/dashboard/deploys/{id}", get(deploy_page), methods=["GET"]),
        Route("/dashboard/flags", get(flags_page), methods=["GET"]),
        Route("/dashboard/flags", post(toggle_post), methods=["POST"]),
        Route("/dashboard/metrics", get(metrics_page), methods=["GET"]),
        Route("/dashboard/{rest:path}", get(unknown), methods=["GET"]),
    ]


def _whole(text: str, name: str) -> int:
    if not text.isdigit() or len(text) > 9:
        raise dash.DashboardError(f"{name}: expected a whole number, got {text[:40]!r}")
    return int(text)
