"""The store heals: a read-only episode or another process holding the write lock does not break
writes until a restart (issue 9, findings 7 and 8)."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from storage.db import Store, is_transient


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Makes the database file unwritable for a while: `chattr +i` as root, chmod otherwise.

    Only the main file: sqlite maps the -shm file into memory, and an immutable -shm kills the
    process with SIGBUS instead of giving an error.
    """
    if os.geteuid() == 0:
        if shutil.which("chattr") is None:
            pytest.skip("needs chattr to make a file read-only for root")
        made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        if made.returncode != 0:
            pytest.skip(f"chattr +i is not permitted here: {made.stderr.strip()}")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        mode = path.stat().st_mode
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(mode)


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "recess.db")
    s.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)")
    yield s
    s.close()


@pytest.fixture
def one_thread():
    """Runs calls on one and the same thread, like a long-lived worker with its own connection."""
    pool = ThreadPoolExecutor(max_workers=1)
    yield lambda fn: pool.submit(fn).result(timeout=60)
    pool.shutdown()


def insert(store: Store, text: str) -> None:
    store.execute("INSERT INTO notes (text) VALUES (?)", (text,))


def notes(store: Store) -> list[str]:
    return [r["text"] for r in store.rows("SELECT text FROM notes ORDER BY id")]


# -- a read-only episode -----------------------------------------------------------------------------


def test_writes_work_again_after_the_database_was_read_only_for_a_while(store, one_thread):
    with read_only(Path(store.path)):
        # The worker's connection is opened now, while the file cannot be written: sqlite opens it
        # read-only and, left alone, it would stay so after the file is writable again.
        assert one_thread(lambda: notes(store)) == []
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            one_thread(lambda: insert(store, "during"))
    one_thread(lambda: insert(store, "after"))
    one_thread(lambda: insert(store, "and again"))
    assert notes(store) == ["after", "and again"]


def test_a_transaction_commits_again_after_the_database_was_read_only(store, one_thread):
    def add_two() -> None:
        with store.transaction():
            insert(store, "one")
            insert(store, "two")

    with read_only(Path(store.path)):
        one_thread(lambda: notes(store))
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            one_thread(add_two)
    one_thread(add_two)
    assert notes(store) == ["one", "two"]


def test_the_heartbeat_fails_while_read_only_and_succeeds_after(store, one_thread):
    with read_only(Path(store.path)):
        assert one_thread(store.healthy) is False
    assert one_thread(store.healthy) is True
    assert store.row("SELECT pid FROM health")["pid"] == os.getpid()


# -- another process holds the write lock ------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    sys.stdin.readline()
    conn.execute("COMMIT")
    print("released", flush=True)
    sys.stdin.readline()
""")


class LockHolder:
    """A second process that holds `BEGIN EXCLUSIVE` on the database until told to let go."""

    def __init__(self, path: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, path], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "locked"
        self.held = True

    def release(self) -> None:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "released"
        self.held = False

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write("\n\n")
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


class FakeTime:
    """`sleep` moves the monotonic clock instead of waiting; after `release_after` naps the lock
    holder lets go, so the retry loop's progress, not the wall clock, decides when."""

    def __init__(self, holder: LockHolder | None = None, release_after: int = 3) -> None:
        self.t = 1000.0
        self.naps: list[float] = []
        self.holder = holder
        self.release_after = release_after

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.naps.append(seconds)
        self.t += seconds
        if self.holder is not None and self.holder.held and len(self.naps) >= self.release_after:
            self.holder.release()


@pytest.fixture
def locked_store(tmp_path):
    clock = FakeTime()
    store = Store(tmp_path / "recess.db", busy_timeout=0.05, sleep=clock.sleep, monotonic=clock.monotonic)
    store.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)")
    holder = LockHolder(store.path)
    clock.holder = holder
    yield store, clock, holder
    holder.close()
    store.close()


def test_a_write_waits_out_another_process_holding_the_write_lock(locked_store):
    store, clock, holder = locked_store
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        insert(store, "not retried")  # the lock is real: a plain statement gives up
    store.write("INSERT INTO notes (text) VALUES (?)", ("retried",))
    assert not holder.held
    assert len(clock.naps) >= clock.release_after  # refused while held, written once released
    assert notes(store) == ["retried"]


def test_a_transaction_is_retried_whole_until_the_other_process_lets_go(locked_store):
    store, clock, holder = locked_store
    runs = []

    def add_two() -> None:
        runs.append(1)
        with store.transaction():
            insert(store, "one")
            insert(store, "two")

    store.retrying(add_two)
    assert len(runs) > clock.release_after - 1 and not holder.held
    assert notes(store) == ["one", "two"]


def test_retrying_gives_up_at_its_deadline_with_the_last_error(tmp_path):
    clock = FakeTime()
    store = Store(tmp_path / "recess.db", sleep=clock.sleep, monotonic=clock.monotonic)
    calls = []

    def always_locked() -> None:
        calls.append(clock.t)
        raise sqlite3.OperationalError("database is locked")

    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        store.retrying(always_locked, deadline=10)
    assert len(calls) > 3
    assert sum(clock.naps) <= 10
    assert max(clock.naps) <= 2.0


def test_an_error_that_waiting_cannot_fix_is_raised_at_once(store):
    calls = []

    def broken() -> None:
        calls.append(1)
        store.execute("INSERT INTO no_such_table VALUES (1)")

    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        store.retrying(broken, sleep=lambda s: pytest.fail("slept for an error that waiting cannot fix"))
    assert calls == [1]


def test_inside_a_transaction_retrying_leaves_the_retry_to_the_whole_transaction(store):
    calls = []

    def locked() -> None:
        calls.append(1)
        raise sqlite3.OperationalError("database is locked")

    with pytest.raises(sqlite3.OperationalError), store.transaction():
        insert(store, "rolled back")
        store.retrying(locked, sleep=lambda s: pytest.fail("retried inside a transaction"))
    assert calls == [1]
    assert notes(store) == []


@pytest.mark.parametrize(("message", "transient"), [
    ("database is locked", True),
    ("database is busy", True),
    ("attempt to write a readonly database", True),
    ("disk I/O error", True),
    ("no such table: notes", False),
    ('near "SELEC": syntax error', False),
])
def test_only_errors_a_later_attempt_may_not_meet_are_retried(message, transient):
    assert is_transient(sqlite3.OperationalError(message)) is transient
    assert is_transient(sqlite3.IntegrityError(message)) is False
