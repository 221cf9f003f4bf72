"""Flag queries: flags, their per-tenant/per-role overrides, scheduled flag changes, and the
flags' last audited change. Nothing outside this module writes flag SQL."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from storage.db import Store, dumps, iso, parse_iso

# The columns a change may set on a flag row; anything else is a programming error.
_FLAG_FIELDS = ("default_value", "rollout", "rollout_by", "killed")


# -- flags --------------------------------------------------------------------------------------


def all_flags(store: Store) -> list[dict[str, Any]]:
    return store.rows("SELECT * FROM flags ORDER BY key")


def all_overrides(store: Store) -> list[dict[str, Any]]:
    return store.rows("SELECT * FROM flag_overrides ORDER BY flag_key, tenant, role")


def get_flag(store: Store, key: str) -> dict[str, Any] | None:
    return store.row("SELECT * FROM flags WHERE key = ?", (key,))


def get_override(store: Store, key: str, tenant: str, role: str) -> dict[str, Any] | None:
    return store.row(
        "SELECT * FROM flag_overrides WHERE flag_key = ? AND tenant = ? AND role = ?",
        (key, tenant, role),
    )


def insert_flag(
    store: Store,
    *,
    key: str,
    description: str,
    owner: str,
    default: bool,
    at: dt.datetime,
    only_if_absent: bool = False,
) -> bool:
    """Adds a flag; with `only_if_absent`, an existing flag is left alone. True when inserted."""
    verb = "INSERT OR IGNORE" if only_if_absent else "INSERT"
    cur = store.execute(
        f"{verb} INTO flags (key, description, owner, default_value, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (key, description, owner, int(default), iso(at), iso(at)),
    )
    return cur.rowcount == 1


def update_flag(store: Store, key: str, *, at: dt.datetime, **fields: Any) -> bool:
    unknown = set(fields) - set(_FLAG_FIELDS)
    if unknown or not fields:
        raise ValueError(f"cannot set flag columns {sorted(unknown) or 'none'}")
    names = sorted(fields)
    assignments = ", ".join(f"{name} = ?" for name in names)
    cur = store.execute(
        f"UPDATE flags SET {assignments}, updated_at = ? WHERE key = ?",
        [*(fields[n] for n in names), iso(at), key],
    )
    return cur.rowcount == 1


def upsert_override(
    store: Store, key: str, *, tenant: str, role: str, value: bool, rollout: int | None, at: dt.datetime
) -> None:
    store.execute(
        "INSERT INTO flag_overrides (flag_key, tenant, role, value, rollout, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (flag_key, tenant, role)"
        " DO UPDATE SET value = excluded.value, rollout = excluded.rollout, updated_at = excluded.updated_at",
        (key, tenant, role, int(value), rollout, iso(at)),
    )


def delete_override(store: Store, key: str, *, tenant: str, role: str) -> bool:
    cur = store.execute(
        "DELETE FROM flag_overrides WHERE flag_key = ? AND tenant = ? AND role = ?",
        (key, tenant, role),
    )
    return cur.rowcount == 1


def last_changes(store: Store) -> dict[str, dict[str, Any]]:
    """Each flag's newest audit entry, by flag key: {"at", "actor", "action"}."""
    rows = store.rows(
        "SELECT a.target, a.at, a.actor, a.action FROM audit a"
        " JOIN (SELECT max(id) AS id FROM audit WHERE target LIKE 'flag:%' GROUP BY target) newest"
        " ON a.id = newest.id"
    )
    return {
        r["target"][len("flag:") :]: {"at": parse_iso(r["at"]), "actor": r["actor"], "action": r["action"]}
        for r in rows
    }


# -- scheduled changes --------------------------------------------------------------------------


def add_change(
    store: Store,
    *,
    key: str,
    change: dict[str, Any],
    requested_by: str,
    note: str | None,
    run_at: dt.datetime,
    created_at: dt.datetime,
) -> int:
    cur = store.execute(
        "INSERT INTO flag_changes (flag_key, change, requested_by, note, status, run_at, created_at)"
        " VALUES (?, ?, ?, ?, 'scheduled', ?, ?)",
        (key, dumps(change), requested_by, note, iso(run_at), iso(created_at)),
    )
    return cur.lastrowid


def get_change(store: Store, change_id: int) -> dict[str, Any] | None:
    row = store.row("SELECT * FROM flag_changes WHERE id = ?", (change_id,))
    return _typed_change(row) if row else None


def scheduled_changes(store: Store, key: str | None = None) -> list[dict[str, Any]]:
    """Changes still waiting for their window, soonest first; with `key`, only that flag's."""
    if key is None:
        rows = store.rows("SELECT * FROM flag_changes WHERE status = 'scheduled' ORDER BY run_at, id")
    else:
        rows = store.rows(
            "SELECT * FROM flag_changes WHERE status = 'scheduled' AND flag_key = ? ORDER BY run_at, id",
            (key,),
        )
    return [_typed_change(r) for r in rows]


def finish_change(store: Store, change_id: int, *, status: str, at: dt.datetime) -> bool:
    """Moves a scheduled change to `status` ('applied', 'failed', 'cancelled') exactly once.

    The WHERE clause makes a second run of the same job (a double fire, a restart) do nothing.
    """
    cur = store.execute(
        "UPDATE flag_changes SET status = ?, applied_at = ? WHERE id = ? AND status = 'scheduled'",
        (status, iso(at), change_id),
    )
    return cur.rowcount == 1


def reschedule_change(store: Store, change_id: int, *, run_at: dt.datetime) -> bool:
    cur = store.execute(
        "UPDATE flag_changes SET run_at = ? WHERE id = ? AND status = 'scheduled'",
        (iso(run_at), change_id),
    )
    return cur.rowcount == 1


def _typed_change(row: dict[str, Any]) -> dict[str, Any]:
    return {
        **row,
        "change": json.loads(row["change"]),
        "run_at": parse_iso(row["run_at"]),
        "created_at": parse_iso(row["created_at"]),
        "applied_at": parse_iso(row["applied_at"]),
    }
