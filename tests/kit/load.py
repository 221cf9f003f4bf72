"""One load generator: keep-alive HTTP/1.1 clients asking a path in a loop, counting the answers
per version (the body of a 200) and the failures (anything else, or an error).

    with Load("127.0.0.1:8080", clients=8) as load:   # threads in this process (tests, the demo)
        load.wait_until(lambda t: t.total >= 500)
    assert load.failures == [] and set(load.by_version) == {"v1", "v2"}

    load = Load(listen, clients=20, process=True, record=True).start()   # benchmarks
    ...
    result = load.stop()   # a Tally: every request's start, latency and answer

With `process=True` the clients run in a child process, so that the measuring process does not
compete with them for its GIL; while they run only `count()` is live, the rest comes with stop().
A connection is opened once per client and kept; one that fails, or that the server closes, is
replaced and counted in `connections_opened`.
"""

from __future__ import annotations

import http.client
import multiprocessing
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Tally:
    """What the clients saw. `requests` (start wall-clock time, seconds, version or None when it
    failed) is kept only when the load was asked to `record` every request."""

    by_version: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[float, str]] = field(default_factory=list)  # (wall-clock time, what went wrong)
    connections_opened: int = 0
    requests: list[tuple[float, float, str | None]] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return sum(self.by_version.values())

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def total(self) -> int:
        return self.ok + self.failed

    def copy(self) -> Tally:
        return Tally(Counter(self.by_version), list(self.failures), self.connections_opened, list(self.requests))

    def add(self, other: Tally) -> None:
        self.by_version.update(other.by_version)
        self.failures += other.failures
        self.connections_opened += other.connections_opened
        self.requests += other.requests

    # -- for benchmarks (record=True) ---------------------------------------------------------

    @property
    def starts(self) -> list[float]:
        return [r[0] for r in self.requests]

    @property
    def latencies(self) -> list[float]:
        return [r[1] for r in self.requests]

    def last_answer_of(self, version: str, after: float, before: float) -> float | None:
        """When the last answer by `version` among the requests started in [after, before) arrived."""
        ends = [start + took for start, took, answer in self.requests if answer == version and after <= start < before]
        return max(ends, default=None)

    def settled_on(self, version: str, since: float) -> float | None:
        """The first instant after `since` from which every answer that arrived was `version`."""
        first = None
        for arrived, answer in sorted((start + took, answer) for start, took, answer in self.requests):
            if arrived < since:
                continue
            if answer == version:
                first = first if first is not None else arrived
            else:
                first = None
        return first


def _client(target: tuple[str, int], path: str, timeout: float, pause: float, stop: Any, tally: Tally,
            lock: Any, counts: Any, index: int, record: bool) -> None:
    conn = None
    while not stop.is_set():
        if conn is None:
            conn = http.client.HTTPConnection(*target, timeout=timeout)
            with lock:
                tally.connections_opened += 1
        wall, started = time.time(), time.perf_counter()
        answer = reason = None
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read().decode(errors="replace").strip()
            if resp.status == 200:
                answer = body
            else:
                reason = f"HTTP {resp.status}: {body[:80]}"
            closed = resp.will_close
        except (OSError, http.client.HTTPException) as exc:
            reason, closed = f"{type(exc).__name__}: {exc}", True
        took = time.perf_counter() - started
        with lock:
            if answer is not None:
                tally.by_version[answer] += 1
            else:
                tally.failures.append((wall, reason))
            if record:
                tally.requests.append((wall, took, answer))
            counts[index] += 1
        if closed:
            conn.close()
            conn = None
        if pause:
            stop.wait(pause)
    if conn is not None:
        conn.close()


def _threads(target: tuple[str, int], path: str, timeout: float, pause: float, clients: int, stop: Any,
             tally: Tally, lock: Any, counts: Any, record: bool) -> list[threading.Thread]:
    return [threading.Thread(target=_client, name=f"load-{i}", daemon=True,
                             args=(target, path, timeout, pause, stop, tally, lock, counts, i, record))
            for i in range(clients)]


def _child(target: tuple[str, int], path: str, timeout: float, pause: float, clients: int, stop: Any, ready: Any,
           counts: Any, queue: Any, record: bool) -> None:
    tally = Tally()
    threads = _threads(target, path, timeout, pause, clients, stop, tally, threading.Lock(), counts, record)
    for t in threads:
        t.start()
    ready.set()
    for t in threads:
        t.join()
    queue.put(tally)


class Load:
    def __init__(self, address: str, clients: int = 8, *, path: str = "/version", pause: float = 0.0,
                 process: bool = False, record: bool = False, timeout: float = 5.0) -> None:
        host, port = address.removeprefix("http://").rstrip("/").rsplit(":", 1)
        self.target = (host, int(port))
        self.clients = clients
        self.path = path
        self.pause = pause
        self.process = process
        self.record = record
        self.timeout = timeout
        self.started_at = self.stopped_at = 0.0  # wall-clock times
        self._result: Tally | None = None
        if process:
            ctx = multiprocessing.get_context("spawn")
            self._stop: Any = ctx.Event()
            self._ready = ctx.Event()
            self._counts: Any = ctx.Array("q", clients, lock=False)
            self._queue = ctx.Queue()
            self._proc = ctx.Process(target=_child, daemon=True, args=(
                self.target, path, timeout, pause, clients, self._stop, self._ready, self._counts, self._queue, record))
        else:
            self._stop = threading.Event()
            self._counts = [0] * clients
            self._lock = threading.Lock()
            self._tally = Tally()
            self._threads = _threads(self.target, path, timeout, pause, clients, self._stop, self._tally,
                                     self._lock, self._counts, record)

    def start(self) -> Load:
        if self.process:
            self._proc.start()
            if not self._ready.wait(timeout=60):
                raise RuntimeError("the load process did not start")
        else:
            for t in self._threads:
                t.start()
        self.started_at = time.time()
        return self

    def stop(self) -> Tally:
        """Stops every client (once) and returns what they saw."""
        if self._result is None:
            self._stop.set()
            self.stopped_at = time.time()
            if self.process:
                self._result = self._queue.get(timeout=120)
                self._proc.join(timeout=10)
            else:
                for t in self._threads:
                    t.join(timeout=10)
                with self._lock:
                    self._result = self._tally.copy()
        return self._result

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- while it runs ------------------------------------------------------------------------

    def count(self) -> int:
        """Requests answered or failed so far (live in both modes)."""
        return sum(self._counts[:])

    def tally(self) -> Tally:
        """What the clients have seen so far; in a child process, only once it has stopped."""
        if self._result is not None:
            return self._result
        if self.process:
            raise RuntimeError("a load in a child process reports only count() until stop()")
        with self._lock:
            return self._tally.copy()

    def wait_until(self, predicate: Callable[[Tally], Any], timeout: float = 60.0, what: str = "the load") -> Any:
        """Waits until predicate(tally so far) is truthy; raises AssertionError after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate(self.tally())
            if value:
                return value
            if time.monotonic() > deadline:
                t = self.tally()
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; "
                                     f"answers {dict(t.by_version)}, {t.failed} failed")
            time.sleep(0.02)

    @property
    def by_version(self) -> Counter[str]:
        return self.tally().by_version

    @property
    def failures(self) -> list[tuple[float, str]]:
        return self.tally().failures

    @property
    def ok(self) -> int:
        return self.tally().ok

    @property
    def failed(self) -> int:
        return self.tally().failed

    @property
    def total(self) -> int:
        return self.tally().total

    @property
    def connections_opened(self) -> int:
        return self.tally().connections_opened
