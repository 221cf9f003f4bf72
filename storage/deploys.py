"""Deploy queries: requests, approvals, steps, and the conditional updates that move a deploy.

Every status change is `UPDATE ... WHERE id = ? AND status IN (...)`: a double click, a Slack
retry or a second runner changes nothing the second time, and the caller learns it lost.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from storage.db import Store, iso, parse_iso, utcnow

# Statuses of a deploy that is not over yet.
ACTIVE = ("pending", "approved", "queued", "running", "needs_attention")
# Statuses that hold the service's slots: no other deploy of it in that environment may start
# meanwhile; approved ones wait in the queue, in the order their approvals completed.
HOLDING = ("running", "needs_attention")
# Columns stored as JSON text.
_JSON = ("canary", "lint", "members")
_INSTANTS = ("created_at", "updated_at", "queued_until", "started_at", "finished_at", "blue_retire_at", "traffic_at",
             "approved_at")


def _typed(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    out = dict(row)
    for k in _INSTANTS:
        out[k] = parse_iso(out.get(k))
    for k in _JSON:
        out[k] = json.loads(out[k]) if out.get(k) else None
    return out


def insert(store: Store, **values: Any) -> int:
    now = iso(utcnow())
    values = {"created_at": now, "updated_at": now, **values}
    for k in _JSON:
        if k in values and values[k] is not None and not isinstance(values[k], str):
            values[k] = json.dumps(values[k])
    for k in _INSTANTS:
        if isinstance(values.get(k), dt.datetime):
            values[k] = iso(values[k])
    cols = ", ".join(values)
    marks = ", ".join("?" for _ in values)
    return store.execute(f"INSERT INTO deploys ({cols}) VALUES ({marks})", list(values.values())).lastrowid


def get(store: Store, deploy_id: int) -> dict[str, Any] | None:
    return _typed(store.row("SELECT * FROM deploys WHERE id = ?", (deploy_id,)))


def holder(store: Store, service: str, env: str) -> dict[str, Any] | None:
    """The deploy that holds the service's slots in this environment (running, or needing attention)."""
    marks = ", ".join("?" for _ in HOLDING)
    return _typed(store.row(
        f"SELECT * FROM deploys WHERE service = ? AND env = ? AND status IN ({marks}) ORDER BY id LIMIT 1",
        (service, env, *HOLDING),
    ))


def waiting(store: Store, service: str, env: str) -> list[dict[str, Any]]:
    """Approved (or queued) deploys of the service and environment, first approved first."""
    return [_typed(r) for r in store.rows(
        "SELECT * FROM deploys WHERE service = ? AND env = ? AND status IN ('approved', 'queued')"
        " ORDER BY COALESCE(approved_at, created_at), id",
        (service, env),
    )]


def open_requests(store: Store, service: str, env: str) -> list[dict[str, Any]]:
    """Deploys of the service and environment that are requested but not started yet."""
    return [_typed(r) for r in store.rows(
        "SELECT * FROM deploys WHERE service = ? AND env = ? AND status IN ('pending', 'approved', 'queued') ORDER BY id",
        (service, env),
    )]


def others_active(store: Store, service: str, env: str, deploy_id: int,
                  statuses: tuple[str, ...] = ACTIVE) -> list[dict[str, Any]]:
    """Deploys of the service and environment other than `deploy_id` in `statuses` (default: not over)."""
    marks = ", ".join("?" for _ in statuses)
    return [_typed(r) for r in store.rows(
        f"SELECT * FROM deploys WHERE service = ? AND env = ? AND status IN ({marks}) AND id != ? ORDER BY id",
        (service, env, *statuses, deploy_id),
    )]


def live(store: Store, service: str, env: str) -> dict[str, Any] | None:
    """The deploy whose version serves now: the last one that moved traffic and still stands, unless
    the service was taken down since (`recess down`, audited as service.down): then nothing is live,
    and the next deploy is a first deploy."""
    return _typed(store.row(
        "SELECT * FROM deploys d WHERE service = ? AND env = ? AND status = 'succeeded' AND traffic_at IS NOT NULL"
        " AND NOT EXISTS (SELECT 1 FROM audit a WHERE a.action = 'service.down' AND a.target = ? AND a.at > d.traffic_at)"
        " ORDER BY traffic_at DESC, id DESC LIMIT 1",
        (service, env, f"service:{service}/{env}"),
    ))


def transition(store: Store, deploy_id: int, from_: tuple[str, ...] | str, to: str, **values: Any) -> bool:
    """Moves the deploy to `to` only if it is in one of `from_`; True when this call did it."""
    if isinstance(from_, str):
        from_ = (from_,)
    values = {**values, "status": to, "updated_at": utcnow()}
    sets, params = [], []
    for k, v in values.items():
        sets.append(f"{k} = ?")
        if isinstance(v, dt.datetime):
            v = iso(v)
        elif k in _JSON and v is not None and not isinstance(v, str):
            v = json.dumps(v)
        params.append(v)
    marks = ", ".join("?" for _ in from_)
    cur = store.execute(
        f"UPDATE deploys SET {', '.join(sets)} WHERE id = ? AND status IN ({marks})",
        [*params, deploy_id, *from_],
    )
    return cur.rowcount == 1


def update(store: Store, deploy_id: int, **values: Any) -> None:
    sets, params = [], []
    for k, v in {**values, "updated_at": utcnow()}.items():
        sets.append(f"{k} = ?")
        if k in _JSON and v is not None and not isinstance(v, str):
            v = json.dumps(v)
        params.append(iso(v) if isinstance(v, dt.datetime) else v)
    store.execute(f"UPDATE deploys SET {', '.join(sets)} WHERE id = ?", [*params, deploy_id])


def with_status(store: Store, *statuses: str) -> list[dict[str, Any]]:
    marks = ", ".join("?" for _ in statuses)
    return [_typed(r) for r in store.rows(f"SELECT * FROM deploys WHERE status IN ({marks}) ORDER BY id", statuses)]


def due_retirements(store: Store) -> list[dict[str, Any]]:
    return [_typed(r) for r in store.rows(
        "SELECT * FROM deploys WHERE status = 'succeeded' AND blue_retired = 0 AND blue_retire_at IS NOT NULL ORDER BY id"
    )]


def history(store: Store, service: str | None = None, limit: int = 10) -> list[dict[str, Any]]:
    if service:
        rows = store.rows("SELECT * FROM deploys WHERE service = ? ORDER BY id DESC LIMIT ?", (service, limit))
    else:
        rows = store.rows("SELECT * FROM deploys ORDER BY id DESC LIMIT ?", (limit,))
    return [_typed(r) for r in rows]


# -- releases ----------------------------------------------------------------------------------


def is_release(row: dict[str, Any] | None) -> bool:
    """A release's parent row (a release deploy, or the rollback of one): its release_id is its own id."""
    return bool(row) and row.get("release_id") is not None and row["release_id"] == row["id"]


def is_member(row: dict[str, Any] | None) -> bool:
    """A member row of a release: an ordinary deploy (or rollback) row of one service."""
    return bool(row) and row.get("release_id") is not None and row["release_id"] != row["id"]


def undoes_rollback(store: Store, row: dict[str, Any] | None) -> bool:
    """A rollback that undoes a rollback (an "Undo rollback" click): the chain of rollbacks back to
    the deploy or release has even length, so the version that deploy brought serves again."""
    n, seen = 0, set()
    while row and row["kind"] == "rollback" and row.get("rollback_of") and row["id"] not in seen:
        seen.add(row["id"])
        n += 1
        row = get(store, row["rollback_of"])
    return n > 0 and n % 2 == 0


def members(store: Store, parent: dict[str, Any]) -> list[dict[str, Any]]:
    """The member rows of a release (or of a release's rollback), in its switch order. A
    `/rollback SERVICE` of one member on its own also names the release, but is not a member."""
    kind = "rollback" if parent["kind"] == "rollback" else "deploy"
    return [_typed(r) for r in store.rows(
        "SELECT * FROM deploys WHERE release_id = ? AND id != ? AND kind = ? ORDER BY id", (parent["id"], parent["id"], kind))]


# A member row folded into its release's line: a deploy row with a release_id other than its own
# (only a release writes those), or a rollback row of a release's rollback. A `/rollback SERVICE`
# of one member also names the release but is a deploy of its own, so it is not folded.
FOLDED_SQL = ("(deploys.release_id IS NOT NULL AND deploys.release_id != deploys.id AND (deploys.kind = 'deploy'"
              " OR EXISTS (SELECT 1 FROM deploys p WHERE p.id = deploys.release_id AND p.kind = 'rollback')))")
# Parent rows of releases (and of their rollbacks): their `service` is the release's name.
PARENT_SQL = "(deploys.release_id IS NOT NULL AND deploys.release_id = deploys.id)"


def folded(store: Store, row: dict[str, Any]) -> bool:
    """True for a member row that its release's line stands for (see FOLDED_SQL)."""
    if not is_member(row):
        return False
    if row["kind"] == "deploy":
        return True
    parent = store.row("SELECT kind FROM deploys WHERE id = ?", (row["release_id"],))
    return bool(parent) and parent["kind"] == "rollback"


def history_folded(store: Store, limit: int = 10) -> list[dict[str, Any]]:
    """The last deploys with each release as one row (its parent) and its members left out."""
    return [_typed(r) for r in store.rows(
        f"SELECT * FROM deploys WHERE NOT {FOLDED_SQL} ORDER BY id DESC LIMIT ?", (limit,))]


def solo_rollbacks(store: Store, parent: dict[str, Any]) -> list[dict[str, Any]]:
    """Rollbacks of single members of a release, made on their own with `/rollback SERVICE`."""
    if parent["kind"] != "release":
        return []
    return [_typed(r) for r in store.rows(
        "SELECT * FROM deploys WHERE release_id = ? AND id != ? AND kind = 'rollback' ORDER BY id", (parent["id"], parent["id"]))]


def holding_member(store: Store, services: list[str], env: str) -> dict[str, Any] | None:
    """The first deploy that holds any of `services` in `env`."""
    for service in services:
        row = holder(store, service, env)
        if row is not None:
            return row
    return None


# -- approvals ---------------------------------------------------------------------------------


def add_approval(store: Store, deploy_id: int, user: str) -> bool:
    cur = store.execute(
        "INSERT OR IGNORE INTO approvals (deploy_id, user, at) VALUES (?, ?, ?)", (deploy_id, user, iso(utcnow()))
    )
    return cur.rowcount == 1


def approvers(store: Store, deploy_id: int) -> list[str]:
    return [r["user"] for r in store.rows("SELECT user FROM approvals WHERE deploy_id = ? ORDER BY at", (deploy_id,))]


# -- steps -------------------------------------------------------------------------------------


def start_step(store: Store, deploy_id: int, name: str, at: dt.datetime | None = None) -> int:
    return store.execute(
        "INSERT INTO steps (deploy_id, name, status, started_at) VALUES (?, ?, 'running', ?)",
        (deploy_id, name, iso(at or utcnow())),
    ).lastrowid


def finish_step(store: Store, step_id: int, status: str, detail: str = "", at: dt.datetime | None = None) -> None:
    store.execute(
        "UPDATE steps SET status = ?, finished_at = ?, detail = ? WHERE id = ?",
        (status, iso(at or utcnow()), detail, step_id),
    )


def steps(store: Store, deploy_id: int) -> list[dict[str, Any]]:
    rows = store.rows("SELECT * FROM steps WHERE deploy_id = ? ORDER BY id", (deploy_id,))
    for r in rows:
        r["started_at"] = parse_iso(r["started_at"])
        r["finished_at"] = parse_iso(r["finished_at"])
    return rows
