"""Dashboard sign-in: one-time links and browser sessions, stored as digests of their secrets."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from storage.db import Store, iso, parse_iso


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def add_link(store: Store, token: str, user: str, *, now: dt.datetime, expires_at: dt.datetime) -> None:
    store.write("INSERT INTO dashboard_links (token_sha256, user, created_at, expires_at) VALUES (?, ?, ?, ?)",
                (digest(token), user, iso(now), iso(expires_at)))


def get_link(store: Store, token: str) -> dict[str, Any] | None:
    row = store.row("SELECT * FROM dashboard_links WHERE token_sha256 = ?", (digest(token),))
    if row:
        for k in ("created_at", "expires_at", "used_at"):
            row[k] = parse_iso(row[k])
    return row


def spend_link(store: Store, token: str, *, now: dt.datetime) -> bool:
    """Marks the link used; True only for the one call that did it (a second click loses)."""
    cur = store.write("UPDATE dashboard_links SET used_at = ? WHERE token_sha256 = ? AND used_at IS NULL AND expires_at > ?",
                      (iso(now), digest(token), iso(now)))
    return cur.rowcount == 1


def add_session(store: Store, session_id: str, user: str, csrf: str, *, now: dt.datetime, expires_at: dt.datetime) -> None:
    def write() -> None:
        with store.transaction():
            store.execute("DELETE FROM dashboard_sessions WHERE expires_at <= ?", (iso(now),))
            store.execute("DELETE FROM dashboard_links WHERE expires_at <= ?", (iso(now - dt.timedelta(days=1)),))
            store.execute(
                "INSERT INTO dashboard_sessions (id_sha256, user, csrf, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                (digest(session_id), user, csrf, iso(now), iso(expires_at)))

    store.retrying(write)


def get_session(store: Store, session_id: str, *, now: dt.datetime) -> dict[str, Any] | None:
    return store.row("SELECT user, csrf, expires_at FROM dashboard_sessions WHERE id_sha256 = ? AND expires_at > ?",
                     (digest(session_id), iso(now)))


def end_session(store: Store, session_id: str) -> None:
    store.write("DELETE FROM dashboard_sessions WHERE id_sha256 = ?", (digest(session_id),))
