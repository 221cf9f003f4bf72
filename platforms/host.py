"""What the platforms that run things on a host share: /proc, process groups, atomic files, locks.

The `local` slots and every HAProxy router are detached processes: after a bot restart they are
nobody's children, so their life is read from /proc (with the start time, so a reused pid is
never mistaken for the process recess started).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOG_TAIL_CHARS = 3000


def proc_stat(pid: int) -> dict[str, Any] | None:
    """State, process group, start time and name of a process from /proc, or None if there is none."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The name is in parentheses and may itself contain spaces or parentheses.
    name = raw[raw.find("(") + 1 : raw.rfind(")")]
    fields = raw[raw.rfind(")") + 2 :].split()
    return {"comm": name, "state": fields[0], "pgrp": int(fields[2]), "start": int(fields[19])}


def proc_start(pid: int) -> int | None:
    proc = proc_stat(pid)
    return proc["start"] if proc else None


def alive(pid: int) -> bool:
    proc = proc_stat(pid)
    return proc is not None and proc["state"] not in "ZX"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - chars))
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def as_int(value: str | None) -> int:
    try:
        return int(value) if value else 0
    except ValueError:
        return 0


class StateLock:
    """Serialises changes to one piece of state: across this process's threads (re-entrant) and
    across processes (flock), e.g. the bot and a `recess` command run by hand."""

    _locks: dict[Path, StateLock] = {}
    _guard = threading.Lock()

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rlock = threading.RLock()
        self.depth = 0
        self.fd: int | None = None

    @classmethod
    @contextlib.contextmanager
    def at(cls, path: Path) -> Iterator[None]:
        with cls._guard:
            lock = cls._locks.setdefault(path, cls(path))
        with lock.rlock:
            if lock.depth == 0:
                lock.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(lock.fd, fcntl.LOCK_EX)
            lock.depth += 1
            try:
                yield
            finally:
                lock.depth -= 1
                if lock.depth == 0 and lock.fd is not None:
                    fcntl.flock(lock.fd, fcntl.LOCK_UN)
                    os.close(lock.fd)
                    lock.fd = None
