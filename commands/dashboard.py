"""What the deploy dashboard shows, as plain data: the overview, deploy lists, DORA numbers, sign-in.

App Home (bot/listeners/home.py), the web pages (bot/dashboard/) and GET /metrics read the same
functions, so Slack, the browser and Prometheus never disagree. No Slack imports, no clock reads:
every function is given `now`.
"""

from __future__ import annotations

import datetime as dt
import secrets
import statistics
from dataclasses import dataclass, field
from typing import Any

from commands.config import Config
from commands.windows import Calendar, Verdict, ending_phrase
from storage import dashboard as links
from storage import deploys as rows
from storage.db import Store, iso, parse_iso

STATUSES = ("pending", "approved", "queued", "running", "needs_attention", "succeeded", "failed", "rolled_back",
            "cancelled", "rejected")
DORA_KEYS = ("frequency", "lead_time", "failure_rate", "restore")
DORA_DAYS = (30, 90)
PER_PAGE = 50


class DashboardError(ValueError):
    """A request the dashboard cannot answer: `status` is the HTTP status (400, 404)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# -- the overview --------------------------------------------------------------------------------


@dataclass
class ServiceState:
    service: str
    env: str
    live: dict[str, Any] | None  # the deploy whose version serves
    kept_version: str | None = None  # the previous version, still in the other slot
    kept_until: dt.datetime | None = None
    release: dict[str, Any] | None = None  # the release whose member the live deploy is


def release_summary(d: dict[str, Any]) -> str:
    """A release's (or its rollback's) members as 'core v1 → v2, web nothing → v2', in switch order."""
    return ", ".join(f"{m['service']} {m.get('previous_version') or 'nothing'} → {m['version']}" for m in d.get("members") or [])


def release_title(d: dict[str, Any]) -> str:
    """'release k12' or 'rollback of release k12'."""
    return f"rollback of release {d['service']}" if d["kind"] == "rollback" else f"release {d['service']}"


def fold(store: Store, found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`found` with each release's member rows left out: the release's own row stands for them."""
    return [d for d in found if not rows.folded(store, d)]


@dataclass
class Overview:
    now: dt.datetime
    verdict: Verdict
    services: list[ServiceState]
    in_progress: list[dict[str, Any]]
    queued: list[dict[str, Any]]
    waiting: list[dict[str, Any]]  # pending approval, oldest first
    recent: list[dict[str, Any]]

    def safe_until(self, tz: str) -> str | None:
        """How long the current safe window lasts, in `tz` ('safe until 19:00 EDT, when
        sakura-intl starts school'); None while deploys are blocked."""
        return ending_phrase(self.verdict.ends, tz, self.now) if self.verdict.safe else None


def overview(cfg: Config, store: Store, calendar: Calendar, *, now: dt.datetime, recent: int = 10) -> Overview:
    verdict = calendar.verdict(now)
    states = []
    for service in cfg.services:
        for env in cfg.service_environments(service):
            live = rows.live(store, service, env)
            state = ServiceState(service, env, live)
            if rows.is_member(live):
                state.release = rows.get(store, live["release_id"])
            if live and live.get("blue_version") and not live.get("blue_retired") and live.get("blue_retire_at"):
                if live["blue_retire_at"] > now:
                    state.kept_version, state.kept_until = live["blue_version"], live["blue_retire_at"]
            states.append(state)
    active = rows.with_status(store, "pending", "approved", "queued", "running", "needs_attention")
    return Overview(
        now=now,
        verdict=verdict,
        services=states,
        in_progress=fold(store, [d for d in active if d["status"] in ("running", "needs_attention")]),
        queued=fold(store, [d for d in active if d["status"] in ("approved", "queued")]),
        waiting=fold(store, [d for d in active if d["status"] == "pending"]),
        recent=rows.history_folded(store, recent),
    )


def duration(d: dict[str, Any]) -> dt.timedelta | None:
    """How long a deploy ran: from its start (or request) to its end."""
    end = d.get("finished_at")
    begin = d.get("started_at") or d.get("created_at")
    if end is None or begin is None:
        return None
    return max(end - begin, dt.timedelta(0))


def fingerprint(store: Store) -> tuple[Any, ...]:
    """Changes whenever anything the dashboard shows from the store changes (deploys, flags,
    freezes, approvals); App Home republishes when it does."""
    row = store.row(
        "SELECT (SELECT max(updated_at) FROM deploys) AS d, (SELECT count(*) FROM approvals) AS a,"
        " (SELECT max(id) FROM audit) AS au, (SELECT count(*) FROM freezes) AS f")
    return tuple(row.values()) if row else ()


@dataclass(frozen=True)
class TenantState:
    """What a flag is for one school: `state` ('on', 'off', '25%', 'killed'), where it comes from
    (`own`: the school's own setting; else the flag's default), and the toggle that is current
    ('on' | 'off' | 'default')."""

    state: str
    own: bool
    toggle: str


def tenant_state(flag: Any, tenant: str) -> TenantState:
    """A flag for one school, ignoring role overrides (those are shown beside it)."""
    if flag.killed:
        return TenantState("killed", False, "default")
    for o in flag.overrides:
        if o.tenant == tenant and not o.role:
            shown = f"{o.rollout}%" if o.rollout is not None else ("on" if o.value else "off")
            return TenantState(shown, True, "on" if o.value else "off")
    shown = f"{flag.rollout}%" if flag.rollout is not None else ("on" if flag.default else "off")
    return TenantState(shown, False, "default")


# -- deploy lists ---------------------------------------------------------------------------------


@dataclass
class DeployPage:
    deploys: list[dict[str, Any]]
    page: int
    pages: int
    total: int
    filters: dict[str, str]


def check_filters(cfg: Config, *, service: str | None, env: str | None, status: str | None) -> None:
    if service and service not in cfg.services:
        raise DashboardError(f"service: {service!r} is not one of {', '.join(cfg.services) or '(no services)'}")
    if env and env not in cfg.environments:
        raise DashboardError(f"env: {env!r} is not one of {', '.join(cfg.environments)}")
    if status and status not in STATUSES:
        raise DashboardError(f"status: {status!r} is not one of {', '.join(STATUSES)}")


def deploy_page(cfg: Config, store: Store, *, service: str | None = None, env: str | None = None,
                status: str | None = None, page: int = 1, ids: list[int] | None = None,
                per_page: int = PER_PAGE) -> DeployPage:
    check_filters(cfg, service=service, env=env, status=status)
    if page < 1:
        raise DashboardError(f"page: expected a whole number from 1, got {page}")
    where, params = [], []
    for column, value in (("service", service), ("env", env), ("status", status)):
        if value:
            where.append(f"{column} = ?")
            params.append(value)
    if ids is not None:
        where.append("id IN (SELECT value FROM json_each(?))")
        params.append(_json_list(ids))
    elif not service:
        # A release is one row (its parent); `service=` naming a member lists its member rows.
        where.append(f"NOT {rows.FOLDED_SQL}")
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    total = store.execute(f"SELECT count(*) FROM deploys{clause}", params).fetchone()[0]
    pages = max(1, -(-total // per_page))
    found = store.rows(f"SELECT * FROM deploys{clause} ORDER BY id DESC LIMIT ? OFFSET ?",
                       [*params, per_page, (page - 1) * per_page])
    filters = {k: v for k, v in (("service", service), ("env", env), ("status", status)) if v}
    deploys = [rows._typed(r) for r in found]
    parents = {d["release_id"] for d in deploys if rows.is_member(d)}
    names = {r["id"]: r["service"] for r in store.rows(
        "SELECT id, service FROM deploys WHERE id IN (SELECT value FROM json_each(?))", (_json_list(sorted(parents)),))}
    for d in deploys:
        if rows.is_member(d):
            d["release_name"] = names.get(d["release_id"])
    return DeployPage(deploys, page, pages, total, filters)


def _json_list(ids: list[int]) -> str:
    return "[" + ",".join(str(int(i)) for i in ids) + "]"


@dataclass
class DeployDetail:
    deploy: dict[str, Any]
    steps: list[dict[str, Any]]
    approvals: list[dict[str, Any]]
    rollbacks: list[dict[str, Any]]  # rollback rows that undid this deploy
    undoes: dict[str, Any] | None  # for a rollback: the deploy it undid
    members: list[dict[str, Any]] = field(default_factory=list)  # a release's member rows, in switch order
    release: dict[str, Any] | None = None  # for a member (or a solo rollback of one): its release
    solo_rollbacks: list[dict[str, Any]] = field(default_factory=list)  # members of a release rolled back on their own


def deploy_detail(store: Store, deploy_id: int) -> DeployDetail:
    d = rows.get(store, deploy_id)
    if d is None:
        raise DashboardError(f"there is no deploy #{deploy_id}", status=404)
    approvals = store.rows("SELECT user, at FROM approvals WHERE deploy_id = ? ORDER BY at", (deploy_id,))
    for a in approvals:
        a["at"] = parse_iso(a["at"])
    undone_by = [rows._typed(r) for r in store.rows("SELECT * FROM deploys WHERE rollback_of = ? ORDER BY id", (deploy_id,))]
    undoes = rows.get(store, d["rollback_of"]) if d.get("rollback_of") else None
    detail = DeployDetail(d, rows.steps(store, deploy_id), approvals, undone_by, undoes)
    if rows.is_release(d):
        detail.members = rows.members(store, d)
        # One timeline: the release's own steps (the switch, the bake) and each member's, by start.
        merged = list(detail.steps)
        for m in detail.members:
            merged += [{**st, "name": f"{m['service']}: {st['name']}"} for st in rows.steps(store, m["id"])]
        detail.steps = sorted(merged, key=lambda st: (st["started_at"], st["id"]))
        detail.solo_rollbacks = rows.solo_rollbacks(store, d)
    elif rows.is_member(d):
        detail.release = rows.get(store, d["release_id"])
    return detail


# -- DORA four keys -------------------------------------------------------------------------------


@dataclass
class Key:
    """One DORA number over a period, the deploys it counts, and its weekly series."""

    value: float | None
    ids: list[int] = field(default_factory=list)
    weekly: list[tuple[dt.date, float | None]] = field(default_factory=list)


@dataclass
class Dora:
    service: str | None  # None: all services
    env: str
    days: int
    since: dt.datetime
    frequency: Key  # successful deploys per week
    lead_time: Key  # median seconds from committed_at to live
    failure_rate: Key  # failed changes / changes that moved traffic
    restore: Key  # median seconds from the failing switch to the restoring one
    failures: int = 0
    changes: int = 0

    def key(self, name: str) -> Key:
        return getattr(self, name)


def _history(store: Store, env: str, since: dt.datetime, service: str | None) -> list[dict[str, Any]]:
    sql = ("SELECT id, kind, service, env, status, created_at, traffic_at, finished_at, committed_at, rollback_of"
           f" FROM deploys WHERE env = ? AND traffic_at >= ? AND NOT {rows.PARENT_SQL}")
    params: list[Any] = [env, iso(since)]
    if service:
        sql += " AND service = ?"
        params.append(service)
    found = store.rows(sql + " ORDER BY traffic_at, id", params)
    for r in found:
        for k in ("created_at", "traffic_at", "finished_at", "committed_at"):
            r[k] = parse_iso(r[k])
    return found


def _week(at: dt.datetime) -> dt.date:
    day = at.astimezone(dt.UTC).date()
    return day - dt.timedelta(days=day.weekday())


def dora(cfg: Config, store: Store, *, now: dt.datetime, days: int, service: str | None = None,
         history: list[dict[str, Any]] | None = None) -> Dora:
    """The four keys over the `days` before `now` for the DORA environment (docs/dashboard.md says
    how each is computed). `history` may be given (rows of _history over at least that period and
    a little more) to compute several periods and services from one query."""
    if days not in DORA_DAYS:
        raise DashboardError(f"days: expected one of {', '.join(map(str, DORA_DAYS))}, got {days}")
    if service and service not in cfg.services:
        raise DashboardError(f"service: {service!r} is not one of {', '.join(cfg.services) or '(no services)'}")
    env = cfg.dora_environment
    since = now - dt.timedelta(days=days)
    # Restores can come after the period's last failure; look a little past `now`'s history too.
    everything = history if history is not None else _history(store, env, since, service)
    if service:
        everything = [r for r in everything if r["service"] == service]
    rollbacks: dict[int, list[dict[str, Any]]] = {}
    for r in everything:
        if r["kind"] == "rollback" and r["rollback_of"] and r["status"] == "succeeded":
            rollbacks.setdefault(r["rollback_of"], []).append(r)
    changes = [r for r in everything if r["kind"] == "deploy" and since <= r["traffic_at"] <= now]
    went_live, failed, restore_s, lead_s = [], [], [], []
    for r in changes:
        undone = r["id"] in rollbacks
        if r["status"] == "succeeded" or (r["status"] == "rolled_back" and undone):
            went_live.append(r)
            if r["committed_at"] is not None:
                lead_s.append((r, max((r["traffic_at"] - r["committed_at"]).total_seconds(), 0.0)))
        if r["status"] in ("failed", "rolled_back"):
            failed.append(r)
            restored = _restored_at(r, rollbacks.get(r["id"], []), everything)
            if restored is not None:
                restore_s.append((r, max((restored - r["traffic_at"]).total_seconds(), 0.0)))
    weeks = sorted({_week(since + dt.timedelta(days=i)) for i in range(days + 1)})
    week_of = {r["id"]: _week(r["traffic_at"]) for r in changes}

    def weekly(items: list[tuple[dict[str, Any], float]], how: str) -> list[tuple[dt.date, float | None]]:
        by_week: dict[dt.date, list[float]] = {}
        for r, v in items:
            by_week.setdefault(week_of[r["id"]], []).append(v)
        if how == "count":
            return [(w, float(len(by_week.get(w, ())))) for w in weeks]
        return [(w, statistics.median(by_week[w]) if w in by_week else None) for w in weeks]

    moved_per_week: dict[dt.date, int] = {}
    for r in changes:
        moved_per_week[week_of[r["id"]]] = moved_per_week.get(week_of[r["id"]], 0) + 1
    bad_per_week: dict[dt.date, int] = {}
    for r in failed:
        bad_per_week[week_of[r["id"]]] = bad_per_week.get(week_of[r["id"]], 0) + 1
    failure_weekly = [(w, bad_per_week.get(w, 0) / moved_per_week[w] if moved_per_week.get(w) else None) for w in weeks]
    return Dora(
        service=service, env=env, days=days, since=since,
        frequency=Key(len(went_live) / (days / 7), [r["id"] for r in went_live], weekly([(r, 1.0) for r in went_live], "count")),
        lead_time=Key(statistics.median([v for _, v in lead_s]) if lead_s else None, [r["id"] for r, _ in lead_s],
                      weekly(lead_s, "median")),
        failure_rate=Key(len(failed) / len(changes) if changes else None, [r["id"] for r in failed], failure_weekly),
        restore=Key(statistics.median([v for _, v in restore_s]) if restore_s else None, [r["id"] for r, _ in restore_s],
                    weekly(restore_s, "median")),
        failures=len(failed), changes=len(changes),
    )


def _restored_at(failed: dict[str, Any], rollbacks: list[dict[str, Any]], everything: list[dict[str, Any]]) -> dt.datetime | None:
    """When service was restored after a failed change: the rollback's switch; else, when the
    pipeline itself put traffic back (it ends the deploy); else the next successful deploy's switch."""
    if rollbacks:
        return min(r["traffic_at"] for r in rollbacks if r["traffic_at"] is not None)
    if failed["finished_at"] is not None and failed["status"] in ("failed", "rolled_back"):
        return failed["finished_at"]
    later = [r["traffic_at"] for r in everything if r["service"] == failed["service"] and r["status"] == "succeeded"
             and r["traffic_at"] > failed["traffic_at"]]
    return min(later) if later else None


def dora_all(cfg: Config, store: Store, *, now: dt.datetime, days: int) -> list[Dora]:
    """All services together (first), then each service, from one query."""
    history = _history(store, cfg.dora_environment, now - dt.timedelta(days=days), None)
    out = [dora(cfg, store, now=now, days=days, history=history)]
    for service in cfg.services:
        out.append(dora(cfg, store, now=now, days=days, service=service, history=history))
    return out


# -- sign-in ---------------------------------------------------------------------------------------


class SignInError(Exception):
    """A sign-in link that cannot sign anyone in: `why` is 'unknown', 'spent' or 'expired'."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


@dataclass(frozen=True)
class Session:
    id: str
    user: str
    csrf: str
    expires_at: dt.datetime


def issue_link(cfg: Config, store: Store, user: str, *, now: dt.datetime) -> str:
    """A fresh one-time token for `user` (valid `[dashboard] link_ttl`); only its digest is stored."""
    token = secrets.token_urlsafe(32)
    links.add_link(store, token, user, now=now, expires_at=now + cfg.dashboard.link_ttl)
    return token


def check_link(store: Store, token: str, *, now: dt.datetime) -> str:
    """The user a link would sign in; raises SignInError. Does not spend it."""
    row = links.get_link(store, token) if token else None
    if row is None:
        raise SignInError("unknown")
    if row["used_at"] is not None:
        raise SignInError("spent")
    if row["expires_at"] <= now:
        raise SignInError("expired")
    return row["user"]


def redeem(cfg: Config, store: Store, token: str, *, now: dt.datetime) -> Session:
    """Spends the link (once, whoever races) and opens a session for its user."""
    user = check_link(store, token, now=now)
    if not links.spend_link(store, token, now=now):
        raise SignInError("spent")
    session = Session(secrets.token_urlsafe(32), user, secrets.token_urlsafe(24), now + cfg.dashboard.session_ttl)
    links.add_session(store, session.id, user, session.csrf, now=now, expires_at=session.expires_at)
    return session


def session(store: Store, session_id: str | None, *, now: dt.datetime) -> Session | None:
    if not session_id or len(session_id) > 200:
        return None
    row = links.get_session(store, session_id, now=now)
    if row is None:
        return None
    return Session(session_id, row["user"], row["csrf"], parse_iso(row["expires_at"]))
