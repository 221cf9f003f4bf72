"""Freeze queries: stored deploy freezes (config freezes are not stored, they come from the file)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from storage.db import Store, iso, parse_iso, utcnow


def add(store: Store, *, start: dt.datetime, end: dt.datetime, reason: str, created_by: str) -> int:
    cur = store.execute(
        'INSERT INTO freezes (start, "end", reason, created_by, created_at) VALUES (?, ?, ?, ?, ?)',
        (iso(start), iso(end), reason, created_by, iso(utcnow())),
    )
    return cur.lastrowid


def get(store: Store, freeze_id: int) -> dict[str, Any] | None:
    row = store.row("SELECT * FROM freezes WHERE id = ?", (freeze_id,))
    return _typed(row) if row else None


def lift(store: Store, freeze_id: int, *, lifted_by: str) -> bool:
    """Lifts an active freeze; False when it does not exist or was already lifted."""
    cur = store.execute(
        "UPDATE freezes SET lifted_by = ?, lifted_at = ? WHERE id = ? AND lifted_at IS NULL",
        (lifted_by, iso(utcnow()), freeze_id),
    )
    return cur.rowcount == 1


def active(store: Store, *, since: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Freezes not lifted, ordered by start; with `since`, only those ending after it."""
    if since is None:
        rows = store.rows('SELECT * FROM freezes WHERE lifted_at IS NULL ORDER BY start, id')
    else:
        rows = store.rows(
            'SELECT * FROM freezes WHERE lifted_at IS NULL AND "end" > ? ORDER BY start, id',
            (iso(since),),
        )
    return [_typed(r) for r in rows]


def _typed(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "start": parse_iso(row["start"]), "end": parse_iso(row["end"])}
