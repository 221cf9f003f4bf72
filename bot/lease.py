"""One owner per database: the exclusive lease a `recess serve` holds on its SQLite file.

The lease is `flock(LOCK_EX)` on `<database>.lock`, held on an open file descriptor for the life of
the process. The kernel frees it when the process ends, however it ends (SIGKILL included), so a
lease never outlives its owner and never needs a timeout. The descriptor is not inherited: the app
processes and HAProxy that a deploy starts outlive recess on purpose, and must not keep the lease.

Once the lock is taken, the file records who holds it (JSON: pid, host, since), so the process
that is refused can say whom to stop. The file itself is never deleted: removing a lock file
that someone else has open is how two processes end up holding "the" lock on two different files.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

log = logging.getLogger("recess.lease")

POLL_SECONDS = 1.0  # how often a standby tries the lock again
_RECORD_TRIES = 20  # a refused start reads the holder's record this many times before giving up
_RECORD_PAUSE = 0.05  # seconds between those reads: the holder writes it just after locking


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a database's lease, as its lock file says."""

    pid: int
    host: str
    since: dt.datetime

    def to_json(self) -> dict[str, object]:
        return {"pid": self.pid, "host": self.host, "since": _iso(self.since)}

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host} since {_iso(self.since)}"


class LeaseError(Exception):
    """The lease could not be taken."""


class LeaseHeld(LeaseError):
    """Another process holds the lease; `holder` is who, when its lock file says so."""

    def __init__(self, database: Path, lock_path: Path, holder: Holder | None) -> None:
        self.database = database
        self.lock_path = lock_path
        self.holder = holder
        super().__init__(f"the database {database} is owned by {_owner(lock_path, holder)}")


class DatabaseLease:
    """`with DatabaseLease(path).acquire(wait=False): ...` or keep it for the life of the process.

    `sleep` is the pause between a standby's tries (injectable, so tests do not wait), and
    `clock` gives the "since" written into the lock file.
    """

    def __init__(
        self,
        database: str | Path,
        *,
        sleep: Callable[[float], None] = time.sleep,
        poll: float = POLL_SECONDS,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.database = Path(database).resolve()
        self.lock_path = self.database.with_name(self.database.name + ".lock")
        self._sleep = sleep
        self._poll = poll
        self._clock = clock
        self._fd: int | None = None
        self._record: Holder | None = None

    @staticmethod
    def needed(database: str | Path) -> bool:
        """An in-memory database belongs to its one process: it needs no lease."""
        return str(database) != ":memory:" and Path(database).name != ":memory:"

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wait: bool = False) -> DatabaseLease:
        """Takes the lease. Raises LeaseHeld when another process holds it and `wait` is false;
        with `wait`, logs once whom it waits for, then tries again every `poll` seconds until the
        lease is free (no deadline: a standby waits as long as the owner lives)."""
        if self._fd is not None:
            return self
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # No O_TRUNC: the file holds the current owner's record until this process owns it.
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise LeaseError(f"cannot open the lock file {self.lock_path}: {exc.strerror}") from None
        os.set_inheritable(fd, False)
        told = False
        try:
            while not _try_lock(fd):
                if not wait:
                    raise LeaseHeld(self.database, self.lock_path, self._read_record(retry=True))
                if not told:
                    told = True
                    log.info("standby: the database %s is owned by %s; waiting to take over when it stops",
                             self.database, _owner(self.lock_path, self._read_record(retry=True)))
                self._sleep(self._poll)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._record = Holder(os.getpid(), socket.gethostname(), self._clock().astimezone(dt.UTC).replace(microsecond=0))
        data = (json.dumps(self._record.to_json()) + "\n").encode()
        # Write first, then cut: a reader sees the old record, the new one, or (briefly) neither.
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
        if told:
            log.info("standby: took over the database %s; starting", self.database)
        return self

    def holder(self) -> Holder | None:
        """Who holds the lease: this process when it does, else whoever the lock file names
        (None when it names nobody, e.g. no server has ever taken it)."""
        if self._record is not None:
            return self._record
        return self._read_record(retry=False)

    def release(self) -> None:
        """Frees the lease (ending the process frees it too). Clears the record first."""
        fd, self._fd, self._record = self._fd, None, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the descriptor drops the flock

    def __enter__(self) -> DatabaseLease:
        return self.acquire(wait=False)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    def _read_record(self, *, retry: bool) -> Holder | None:
        for attempt in range(_RECORD_TRIES if retry else 1):
            holder = _parse(self.lock_path)
            if holder is not None:
                return holder
            if attempt + 1 < _RECORD_TRIES and retry:
                self._sleep(_RECORD_PAUSE)
        return None


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _parse(lock_path: Path) -> Holder | None:
    try:
        raw = json.loads(lock_path.read_text())
        since = dt.datetime.fromisoformat(raw["since"].replace("Z", "+00:00"))
        return Holder(int(raw["pid"]), str(raw["host"]), since)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _owner(lock_path: Path, holder: Holder | None) -> str:
    if holder is None:
        return f"another process (its lock file {lock_path} does not say which)"
    return holder.describe()


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
