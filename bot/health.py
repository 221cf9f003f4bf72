"""What `GET /healthz` checks, and the sentences it answers with when something is wrong.

recess is unhealthy when any of these holds, and each becomes one cause in the 503 body:

- the store cannot write: the heartbeat row in `health` is really written, not `SELECT 1`;
- the scheduler is not running;
- a deploy (or rollback) is `running` past its environment's `deploy_timeout`;
- a deploy needs attention (status `needs_attention`: recovery could not tell what is true);
- the oldest unsent Slack message in the outbox is older than 5 minutes.

200: `{"status": "ok", "store": true, "scheduler": true}`.
503: `{"status": "unhealthy", "store": ..., "scheduler": ..., "causes": ["deploy #13 of web to
production has run 41 min, past its deploy_timeout of 30 min", ...]}`.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from commands.config import Config, Environment, format_duration
from storage.db import Store, parse_iso, utcnow

OUTBOX_STALE = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class HealthReport:
    store: bool
    scheduler: bool
    causes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.causes

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": "ok" if self.ok else "unhealthy", "store": self.store,
                                "scheduler": self.scheduler}
        if not self.ok:
            body["causes"] = list(self.causes)
        return body


def check(
    store: Store,
    cfg: Config,
    *,
    now: dt.datetime,
    scheduler_running: bool,
    outbox_clock: Callable[[], dt.datetime] = utcnow,
) -> HealthReport:
    """Every check, each on its own: one failing never hides another.

    `now` is the runtime's clock, the one deploys are stamped with. The outbox stamps its rows
    with the wall clock (`storage.db.utcnow`), so their age is measured on `outbox_clock`.
    """
    causes: list[str] = []
    store_ok = True
    try:
        store.heartbeat(now)
    except sqlite3.Error as exc:
        store_ok = False
        causes.append(f"the store cannot write ({store.path}): {exc}")
    if not scheduler_running:
        causes.append("the scheduler is not running: queued deploys and retirements would never start")
    for name, probe in (("deploys", lambda: _stuck_deploys(store, cfg, now)),
                        ("the outbox", lambda: _stale_outbox(store, outbox_clock()))):
        try:
            causes += probe()
        except sqlite3.Error as exc:
            causes.append(f"the store cannot be read ({name}): {exc}")
    return HealthReport(store=store_ok, scheduler=scheduler_running, causes=causes)


def _stuck_deploys(store: Store, cfg: Config, now: dt.datetime) -> list[str]:
    causes = []
    running = store.rows(
        "SELECT id, kind, service, env, started_at FROM deploys"
        " WHERE status = 'running' AND started_at IS NOT NULL ORDER BY id"
    )
    for r in running:
        timeout = cfg.environments.get(r["env"], Environment()).deploy_timeout
        ran = now - parse_iso(r["started_at"])
        if ran > timeout:
            causes.append(f"{r['kind']} #{r['id']} of {r['service']} to {r['env']} has run {_minutes(ran)}, "
                          f"past its deploy_timeout of {format_duration(timeout)}")
    attention = store.rows(
        "SELECT id, kind, service, env, updated_at, outcome FROM deploys"
        " WHERE status = 'needs_attention' ORDER BY id"
    )
    for r in attention:
        since = parse_iso(r["updated_at"]).astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        why = f": {r['outcome']}" if r["outcome"] else ""
        causes.append(f"{r['kind']} #{r['id']} of {r['service']} to {r['env']} needs attention "
                      f"since {since}{why}")
    return causes


def _stale_outbox(store: Store, now: dt.datetime) -> list[str]:
    oldest = store.row(
        "SELECT id, deploy_id, created_at, attempts, error FROM outbox"
        " WHERE sent_at IS NULL AND lane NOT LIKE 'webhook:%' ORDER BY created_at, id LIMIT 1"
    )
    if oldest is None:
        return []
    waited = now - parse_iso(oldest["created_at"])
    if waited <= OUTBOX_STALE:
        return []
    unsent = store.row("SELECT count(*) AS n FROM outbox WHERE sent_at IS NULL AND lane NOT LIKE 'webhook:%'")["n"]
    about = f" (deploy #{oldest['deploy_id']})" if oldest["deploy_id"] is not None else ""
    tried = f" after {oldest['attempts']} attempt(s), last error: {oldest['error']}" if oldest["error"] else ""
    return [f"{unsent} Slack message(s) unsent; the oldest, #{oldest['id']}{about}, has waited {_minutes(waited)}, "
            f"more than {format_duration(OUTBOX_STALE)}{tried}"]


def _minutes(d: dt.timedelta) -> str:
    """Whole minutes past the first one ("41 min"): a health sentence needs no seconds."""
    if d < dt.timedelta(minutes=1):
        return format_duration(d)
    return format_duration(dt.timedelta(minutes=int(d.total_seconds() // 60)))

