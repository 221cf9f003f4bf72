"""Audit log queries: who did what, when, from which command, with before and after."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from storage.db import Store, dumps, iso, utcnow


def record(
    store: Store,
    *,
    actor: str,
    command: str,
    action: str,
    target: str = "",
    before: Any = None,
    after: Any = None,
    note: str | None = None,
    at: dt.datetime | None = None,
) -> int:
    cur = store.execute(
        "INSERT INTO audit (at, actor, command, action, target, before, after, note)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            iso(at or utcnow()),
            actor,
            command,
            action,
            target,
            None if before is None else dumps(before),
            None if after is None else dumps(after),
            note,
        ),
    )
    return cur.lastrowid


def entries(store: Store, *, target: str | None = None, prefix: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Newest first. `target` matches exactly; `prefix` matches targets starting with it."""
    where, params = "", []
    if target is not None:
        where, params = "WHERE target = ?", [target]
    elif prefix is not None:
        where, params = "WHERE target LIKE ?", [prefix + "%"]
    rows = store.rows(f"SELECT * FROM audit {where} ORDER BY id DESC LIMIT ?", [*params, limit])
    for r in rows:
        for k in ("before", "after"):
            r[k] = None if r[k] is None else json.loads(r[k])
    return rows
