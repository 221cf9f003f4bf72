"""The SQLite store: one file, WAL mode, a connection per thread, and forward schema migrations.

SQLite is recess's source of truth. Bolt's listener threads, the deploy runner and the scheduler
each get their own connection (sqlite3 refuses cross-thread use); WAL plus a busy timeout lets
readers and one writer proceed together.

The store heals. A connection that once failed is not trusted again: after any
`sqlite3.OperationalError` in `execute`, `rows`, `row` or `transaction`, this thread's connection
is closed and the next use opens a fresh one. (A connection opened while the file was read-only,
say during a `chattr +i`, stays read-only for good, "attempt to write a readonly database", even
after the file is writable again; a fresh one writes.) Outside a transaction, `execute` also tries
a statement once more on the fresh connection when the error was of that kind, so the first write
after such an episode already works.

Waiting for the write lock. Each statement waits up to `busy_timeout` (10 s) for another writer.
Another process can hold the lock longer (a `BEGIN EXCLUSIVE` of 18 s was seen), so writes that
must not be lost, the pipeline's, rollback's and recovery's, go through `retrying`:

    store.retrying(fn, *, deadline=None, sleep=None, clock=None) -> fn's result
    store.write(sql, params=()) -> sqlite3.Cursor      # one statement, retried

`retrying` calls `fn()` again while it raises a transient `sqlite3.OperationalError` ("database is
locked", "database is busy", a read-only or I/O error that a fresh connection may not have), with
a backoff from 0.05 s doubling to 2 s, until `deadline` seconds (default `retry_deadline`, 60 s) have
passed on the monotonic clock; then the last error is raised. Any other error is raised at once.
`fn` runs again from the start, so it must be safe to repeat: one statement, or one
`with store.transaction():` block, never a sequence of separate commits. Called inside a
transaction, `retrying` runs `fn` once: only the whole transaction can be tried again.

    def finish_step() -> None:
        with store.transaction():
            store.execute("UPDATE steps SET status = 'ok' WHERE id = ?", (step_id,))
            store.execute("UPDATE deploys SET updated_at = ? WHERE id = ?", (iso(now), deploy_id))

    store.retrying(finish_step)
    store.write("UPDATE deploys SET status = 'failed' WHERE id = ?", (deploy_id,))

`sleep` and `clock` (seconds, like `time.sleep` and `time.monotonic`) are injectable per call or
per store (`Store(path, sleep=..., monotonic=...)`), so tests move a fake clock instead of waiting.

`heartbeat()` proves the store can write (one upserted row in `health`); `/healthz` calls it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from storage.schema import MIGRATIONS


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(t: dt.datetime | None) -> str | None:
    """Stored instants are ISO 8601 UTC strings, so they sort and compare as text."""
    if t is None:
        return None
    if t.tzinfo is None:
        raise ValueError("naive datetime given to the store")
    return t.astimezone(dt.UTC).isoformat(timespec="microseconds")


def parse_iso(s: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(s) if s else None


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


log = logging.getLogger("recess.store")

T = TypeVar("T")

# Errors a later attempt may not meet: another writer holds the lock, or the connection was opened
# (or broke) while the file could not be written. Matched on sqlite's message, which is all the
# sqlite3 module exposes portably.
LOCKED = ("database is locked", "database is busy", "database table is locked")
POISONED = ("readonly database", "disk i/o error", "unable to open database file", "database disk image is malformed")


def is_transient(exc: BaseException) -> bool:
    """True for an OperationalError that retrying (on a fresh connection) may get past."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    message = str(exc).lower()
    return any(m in message for m in LOCKED + POISONED)


def _poisoned(exc: BaseException) -> bool:
    message = str(exc).lower()
    return any(m in message for m in POISONED)


class Store:
    """Owns the database file. `store.db` is this thread's sqlite_utils.Database."""

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout: float = 10.0,
        retry_deadline: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = str(path)
        self.busy_timeout = busy_timeout
        self.retry_deadline = retry_deadline
        self.sleep = sleep
        self.monotonic = monotonic
        self._local = threading.local()
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.migrate()

    # -- this thread's connection ----------------------------------------------------------------

    @property
    def db(self) -> sqlite_utils.Database:
        db = getattr(self._local, "db", None)
        if db is None:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
                conn.execute("PRAGMA foreign_keys=ON")
                conn.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error:
                conn.close()
                raise
            db = sqlite_utils.Database(conn)
            self._local.db = db
        return db

    def _discard(self) -> None:
        """Forgets this thread's connection; the next use opens a fresh one."""
        db = getattr(self._local, "db", None)
        self._local.db = None
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.conn.close()

    def _in_transaction(self) -> bool:
        return getattr(self._local, "transaction", False)

    # -- statements ------------------------------------------------------------------------------

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        try:
            return self.db.execute(sql, params)
        except sqlite3.OperationalError as exc:
            if self._in_transaction():
                raise  # transaction() rolls back and discards the connection on its way out
            self._discard()
            if not _poisoned(exc):
                raise
            # A statement that failed in autocommit mode left nothing behind: once more, fresh.
            log.warning("store: %s; reopened the connection and tried again", exc)
            try:
                return self.db.execute(sql, params)
            except sqlite3.OperationalError:
                self._discard()
                raise

    def rows(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        cur = self.execute(sql, params)
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def row(self, sql: str, params: Any = ()) -> dict[str, Any] | None:
        found = self.rows(sql, params)
        return found[0] if found else None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT: one writer at a time, all or nothing.

        Any OperationalError on the way (at BEGIN, inside, at COMMIT) rolls back and discards this
        thread's connection before it is raised, so the next transaction starts on a fresh one.
        """
        try:
            conn = self.db.conn
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            self._discard()
            raise
        self._local.transaction = True
        try:
            try:
                yield conn
            except BaseException as exc:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    self._discard()
                if isinstance(exc, sqlite3.OperationalError):
                    self._discard()
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.OperationalError:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                self._discard()
                raise
        finally:
            self._local.transaction = False

    # -- writes that wait out another writer -----------------------------------------------------

    def retrying(
        self,
        fn: Callable[[], T],
        *,
        deadline: float | None = None,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> T:
        """Calls `fn()` until it gets past transient store errors or `deadline` seconds pass.

        Inside a transaction it calls `fn()` once: only the whole transaction can be tried again,
        so wrap the `with store.transaction():` block, not a statement within it.
        """
        if self._in_transaction():
            return fn()
        deadline = self.retry_deadline if deadline is None else deadline
        sleep = sleep or self.sleep
        clock = clock or self.monotonic
        started = clock()
        delay = 0.05
        attempt = 1
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not is_transient(exc):
                    raise
                self._discard()
                waited = clock() - started
                if waited + delay > deadline:
                    log.error("store: %s; giving up after %d attempts in %.1f s", exc, attempt, waited)
                    raise
                log.warning("store: %s (attempt %d); trying again in %.2f s", exc, attempt, delay)
            sleep(delay)
            delay = min(delay * 2, 2.0)
            attempt += 1

    def write(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        """One statement, retried like `retrying` while the store is locked."""
        return self.retrying(lambda: self.execute(sql, params))

    # -- schema and health -----------------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        return self.execute("PRAGMA user_version").fetchone()[0]

    def migrate(self) -> int:
        """Applies the schema migrations this file has not seen yet, each in its own transaction."""
        current = self.schema_version
        for version, statements in enumerate(MIGRATIONS, start=1):
            if version <= current:
                continue
            with self.transaction() as conn:
                for sql in statements:
                    conn.execute(sql)
                conn.execute(f"PRAGMA user_version = {version}")
        return self.schema_version

    def heartbeat(self, at: dt.datetime | None = None, *, timeout: float = 2.0) -> None:
        """Writes the `health` row: raises sqlite3.Error when the store cannot write now.

        It waits at most `timeout` seconds for the write lock (not `busy_timeout`), so a health
        probe answers while another process holds the database.
        """
        at = at or utcnow()
        conn = self.db.conn
        conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        try:
            self.execute(
                "INSERT INTO health (id, beat_at, pid) VALUES (1, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET beat_at = excluded.beat_at, pid = excluded.pid",
                (iso(at), os.getpid()),
            )
        finally:
            db = getattr(self._local, "db", None)
            if db is not None:  # still the same (or a fresh) connection: restore its patience
                with contextlib.suppress(sqlite3.Error):
                    db.conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")

    def healthy(self) -> bool:
        """True when the store can write (a real write of the heartbeat row)."""
        try:
            self.heartbeat()
            return True
        except sqlite3.Error:
            return False

    def close(self) -> None:
        self._discard()
