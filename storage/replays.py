"""What the Slack edge has seen: request signatures (replays) and event IDs (Slack's retries).

A signature stays until `expires_at`, five minutes after its request's timestamp: past that Slack's
signature check refuses the request as stale anyway. An event ID stays an hour, longer than Slack
keeps retrying (at once, after 1 minute, after 5 minutes). Instants are ISO 8601 UTC text, so
`expires_at < now` compares as text.

Writes here are made on the request path, so they wait at most `lock_timeout` seconds for another
writer (not the store's 10 s busy timeout) and raise sqlite3.OperationalError when that runs out;
the caller (bot/edge.py) keeps the rows in memory and writes them again later.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
from collections.abc import Iterable, Iterator

from storage.db import Store, iso, parse_iso


@contextlib.contextmanager
def _patience(store: Store, seconds: float) -> Iterator[None]:
    """This thread's connection waits `seconds` for the write lock, then its usual busy timeout."""
    store.db.conn.execute(f"PRAGMA busy_timeout={int(seconds * 1000)}")
    try:
        yield
    finally:
        db = getattr(store._local, "db", None)  # a failed statement may have replaced it
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.conn.execute(f"PRAGMA busy_timeout={int(store.busy_timeout * 1000)}")


def remember(store: Store, *, signatures: Iterable[tuple[str, str, dt.datetime]] = (),
             events: Iterable[tuple[str, dt.datetime]] = (), lock_timeout: float = 0.25) -> None:
    """Stores (signature, body_sha256, expires_at) and (event_id, expires_at) rows in one
    transaction; a row already there is kept as it is."""
    signatures, events = list(signatures), list(events)
    if not signatures and not events:
        return
    with _patience(store, lock_timeout), store.transaction() as conn:
        conn.executemany("INSERT OR IGNORE INTO seen_signatures (signature, body_sha256, expires_at) VALUES (?, ?, ?)",
                         [(sig, digest, iso(expires)) for sig, digest, expires in signatures])
        conn.executemany("INSERT OR IGNORE INTO seen_events (event_id, expires_at) VALUES (?, ?)",
                         [(event_id, iso(expires)) for event_id, expires in events])


def prune(store: Store, now: dt.datetime, *, lock_timeout: float = 0.25) -> int:
    """Deletes every row that expired before `now`; returns how many."""
    with _patience(store, lock_timeout), store.transaction() as conn:
        gone = conn.execute("DELETE FROM seen_signatures WHERE expires_at < ?", (iso(now),)).rowcount
        gone += conn.execute("DELETE FROM seen_events WHERE expires_at < ?", (iso(now),)).rowcount
    return gone


def unexpired_signatures(store: Store, now: dt.datetime) -> list[tuple[str, str, dt.datetime]]:
    """(signature, body_sha256, expires_at) of every signature still remembered at `now`."""
    rows = store.rows("SELECT signature, body_sha256, expires_at FROM seen_signatures WHERE expires_at >= ?", (iso(now),))
    return [(r["signature"], r["body_sha256"], parse_iso(r["expires_at"])) for r in rows]


def unexpired_events(store: Store, now: dt.datetime) -> list[tuple[str, dt.datetime]]:
    rows = store.rows("SELECT event_id, expires_at FROM seen_events WHERE expires_at >= ?", (iso(now),))
    return [(r["event_id"], parse_iso(r["expires_at"])) for r in rows]


def count(store: Store) -> dict[str, int]:
    """Rows held now, by table (what tests and /healthz-style checks read)."""
    return {
        "signatures": store.row("SELECT count(*) AS n FROM seen_signatures")["n"],
        "events": store.row("SELECT count(*) AS n FROM seen_events")["n"],
    }
