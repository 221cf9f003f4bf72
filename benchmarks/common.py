"""Shared helpers for the benchmarks that drive a whole recess: bench_window_http.py,
bench_deploy.py and zero_downtime.py. Not a benchmark itself (running it prints the machine).

What lives here:
- machine():            platform, CPU model, cores, Python, HAProxy, load average
- stats helpers:        percentile(), summary(), fmt_ms()
- SlackStub:            tests/fake_slack.py's FakeSlack in its own process (optionally slowed
                        down), so the bot's Slack calls do not compete with the load generator
- RecessProcess:        `recess serve` as a subprocess with SLACK_API_URL, SLACK_SIGNING_SECRET,
                        RECESS_CONFIG (and RECESS_CRASH_AT for fault injection)
- Signer / burst():     signed Slack requests sent all at once from pre-opened connections
- Load:                 keep-alive HTTP clients in a separate process, every request recorded
- Probe:                one client polling the public address as fast as it can
- Db:                   read-only look at the bot's SQLite file (WAL lets us read while it writes)
"""

from __future__ import annotations

import contextlib
import http.client
import json
import multiprocessing
import os
import platform as host
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.slack_sender import sign  # noqa: E402

SECRET = "bench-signing-secret"
ENGINEER = "U0ENGINEER"
APPROVER = "U0APPROVER1"
RECESS_BIN = Path(sys.executable).parent / "recess"


# -- the machine ----------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return host.processor() or "unknown CPU"


def machine() -> str:
    try:
        haproxy = subprocess.run(["haproxy", "-v"], capture_output=True, text=True, timeout=5).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        haproxy = "HAProxy not found"
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"machine: {host.system()} {host.release()} {host.machine()}, {os.cpu_count()} CPUs "
        f"({usable} usable), {cpu_model()}\n"
        f"python:  {host.python_implementation()} {host.python_version()}\n"
        f"router:  {haproxy}\n"
        f"load average at start (1/5/15 min): {load}  (shared machine: other work runs too)"
    )


# -- statistics -----------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"n": 0, "min": float("nan"), "p50": float("nan"), "p90": float("nan"), "p99": float("nan"), "max": float("nan")}
    return {
        "n": len(values),
        "min": min(values),
        "p50": statistics.median(values),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
    }


def fmt_ms(seconds: float, digits: int = 1) -> str:
    return f"{seconds * 1000:.{digits}f} ms"


def spread(values: Sequence[float], digits: int = 1, unit: float = 1000.0, suffix: str = " ms") -> str:
    """"median M (min A, max B, n N)" for a list of seconds, shown in ms by default."""
    if not values:
        return "no samples"
    return (f"median {statistics.median(values) * unit:.{digits}f}{suffix} "
            f"(min {min(values) * unit:.{digits}f}, max {max(values) * unit:.{digits}f}, n {len(values)})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- a fake Slack in its own process --------------------------------------------------------------

_STUB = """
import sys, threading, time
sys.path.insert(0, sys.argv[1])
import socketserver
from tests.fake_slack import FakeSlack
# The standard library's listen backlog is 5: a burst of Web API calls from the bot's threads
# would overflow it and wait for a SYN retransmit (1 s). Slack itself has no such limit.
socketserver.TCPServer.request_queue_size = 256
latency = float(sys.argv[2])
if latency > 0:
    answer = FakeSlack._answer
    def slow(self, method, params):
        time.sleep(latency)
        return answer(self, method, params)
    FakeSlack._answer = slow
fake = FakeSlack()
print(fake.port, flush=True)
sys.stdin.read()  # lives until the benchmark closes our stdin
fake.close()
"""


class SlackStub:
    """tests.fake_slack.FakeSlack in a child process. `latency` delays every Web API answer
    (Slack itself answers in tens to hundreds of milliseconds)."""

    def __init__(self, latency: float = 0.0) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _STUB, str(ROOT), str(latency)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if not line:
            raise RuntimeError("the fake Slack did not start")
        self.port = int(line)
        self.api_url = f"http://127.0.0.1:{self.port}/api/"
        self.response_url = f"http://127.0.0.1:{self.port}/respond/bench"

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> SlackStub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- recess serve as a subprocess -----------------------------------------------------------------


class RecessProcess:
    """`recess serve` on a free port; stderr (the bot's log) goes to `log_path`."""

    def __init__(self, config: Path, slack: SlackStub, log_path: Path, *, crash_at: str | None = None,
                 port: int | None = None, extra_env: dict[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if k not in ("RECESS_CRASH_AT", "SLACK_APP_TOKEN")}
        env.update({
            "SLACK_API_URL": slack.api_url,
            "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_BOT_TOKEN": "xoxb-bench",
            "RECESS_CONFIG": str(config),
            "RECESS_LOG_LEVEL": "INFO",
            **(extra_env or {}),
        })
        if crash_at:
            env["RECESS_CRASH_AT"] = crash_at
        self.spawned = time.monotonic()
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([str(RECESS_BIN), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                                     env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=config.parent)
        self.ready_at: float | None = None

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Waits for /healthz 200; returns the seconds since the process was spawned."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"recess serve exited with {self.proc.returncode}; see {self.log_path}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    self.ready_at = time.monotonic()
                    conn.close()
                    return self.ready_at - self.spawned
                conn.close()
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"recess serve did not answer /healthz within {timeout:.0f} s; see {self.log_path}")

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


# -- signed Slack requests ------------------------------------------------------------------------


class Signer:
    """Builds request bodies and headers exactly like Slack's (form bodies, v0 signatures)."""

    def __init__(self, secret: str = SECRET, response_url: str = "http://127.0.0.1:9/respond") -> None:
        self.secret = secret
        self.response_url = response_url

    def headers(self, body: str) -> dict[str, str]:
        ts = str(int(time.time()))
        return {"Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": ts,
                "X-Slack-Signature": sign(self.secret, ts, body)}

    def command(self, command: str, text: str, user: str = ENGINEER) -> str:
        return urllib.parse.urlencode({
            "token": "legacy", "team_id": "T1", "team_domain": "school", "channel_id": "C0ENG",
            "channel_name": "eng", "user_id": user, "user_name": user.lower(), "command": command,
            "text": text, "api_app_id": "A1", "response_url": self.response_url, "trigger_id": "1.2.3",
        })

    def action(self, action_id: str, value: str, user: str, message_ts: str, channel: str = "C0DEPLOYS") -> str:
        payload = {
            "type": "block_actions", "team": {"id": "T1"},
            "user": {"id": user, "username": user.lower(), "team_id": "T1"},
            "api_app_id": "A1", "trigger_id": "1.2.3",
            "container": {"type": "message", "message_ts": message_ts, "channel_id": channel, "is_ephemeral": False},
            "channel": {"id": channel}, "message": {"ts": message_ts, "text": "card"},
            "response_url": self.response_url,
            "actions": [{"action_id": action_id, "block_id": "b", "value": value, "type": "button",
                         "action_ts": str(time.time())}],
        }
        return urllib.parse.urlencode({"payload": json.dumps(payload)})

    def post(self, base_url: str, body: str, timeout: float = 10.0) -> tuple[int, bytes, float]:
        """One signed POST /slack/events; (status, body, seconds)."""
        u = urllib.parse.urlsplit(base_url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
        try:
            started = time.perf_counter()
            conn.request("POST", "/slack/events", body=body.encode(), headers=self.headers(body))
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, data, time.perf_counter() - started
        finally:
            conn.close()


class BurstResult:
    def __init__(self, statuses: list[int], bodies: list[bytes], latencies: list[float], errors: list[str]) -> None:
        self.statuses, self.bodies, self.latencies, self.errors = statuses, bodies, latencies, errors

    @property
    def acked(self) -> int:
        return sum(1 for s, b in zip(self.statuses, self.bodies, strict=True) if s == 200 and b)


def burst(base_url: str, bodies: Sequence[str], signer: Signer, timeout: float = 10.0) -> BurstResult:
    """Sends every body at the same moment, each from its own already-open connection (Slack
    sends from many machines at once). Latency is measured per request, from the first byte
    written to the last byte of the answer read."""
    u = urllib.parse.urlsplit(base_url)
    n = len(bodies)
    conns = []
    for _ in range(n):
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
        c.connect()
        conns.append(c)
    prepared = [(b.encode(), signer.headers(b)) for b in bodies]
    statuses = [0] * n
    answers = [b""] * n
    latencies = [float("nan")] * n
    errors: list[str] = []
    gate = threading.Barrier(n)

    def one(i: int) -> None:
        body, headers = prepared[i]
        gate.wait()
        started = time.perf_counter()
        try:
            conns[i].request("POST", "/slack/events", body=body, headers=headers)
            resp = conns[i].getresponse()
            answers[i] = resp.read()
            statuses[i] = resp.status
        except (OSError, http.client.HTTPException) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        latencies[i] = time.perf_counter() - started

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in conns:
        c.close()
    return BurstResult(statuses, answers, latencies, errors)


# -- load: keep-alive clients in their own process ------------------------------------------------


def _load_client(target: tuple[str, int], path: str, stop: Any, counts: Any, index: int, out: dict) -> None:
    conn = None
    starts, lats, codes, failures = out["start"], out["latency"], out["code"], out["failures"]
    versions: dict[str, int] = out["versions"]
    while not stop.is_set():
        if conn is None:
            conn = http.client.HTTPConnection(*target, timeout=10)
        t_wall = time.time()
        t0 = time.perf_counter()
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read().decode(errors="replace").strip()
        except (OSError, http.client.HTTPException) as exc:
            failures.append((t_wall, f"{type(exc).__name__}: {exc}"))
            starts.append(t_wall)
            lats.append(time.perf_counter() - t0)
            codes.append(-1)
            conn.close()
            conn = None
            counts[index] += 1
            continue
        starts.append(t_wall)
        lats.append(time.perf_counter() - t0)
        if resp.status != 200:
            failures.append((t_wall, f"HTTP {resp.status}"))
            codes.append(-1)
        else:
            codes.append(versions.setdefault(body, len(versions)))
        counts[index] += 1
        if resp.getheader("Connection", "").lower() == "close":
            conn.close()
            conn = None
    if conn is not None:
        conn.close()


def _load_main(target: tuple[str, int], path: str, clients: int, stop: Any, ready: Any, counts: Any, queue: Any) -> None:
    outs = [{"start": [], "latency": [], "code": [], "failures": [], "versions": {}} for _ in range(clients)]
    threads = [threading.Thread(target=_load_client, args=(target, path, stop, counts, i, outs[i])) for i in range(clients)]
    for t in threads:
        t.start()
    ready.set()
    for t in threads:
        t.join()
    queue.put(outs)


class LoadResult:
    """Every request of every client: wall-clock start, latency, answer (version or failure)."""

    def __init__(self, outs: list[dict]) -> None:
        self.starts: list[float] = []
        self.latencies: list[float] = []
        self.answers: list[str | None] = []  # None: failed
        self.failures: list[tuple[float, str]] = []
        for o in outs:
            names = {v: k for k, v in o["versions"].items()}
            self.starts += o["start"]
            self.latencies += o["latency"]
            self.answers += [names.get(c) if c >= 0 else None for c in o["code"]]
            self.failures += o["failures"]

    @property
    def total(self) -> int:
        return len(self.starts)

    def by_version(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for a in self.answers:
            if a is not None:
                out[a] = out.get(a, 0) + 1
        return out

    def split_latencies(self, instants: Iterable[float], half_width: float) -> tuple[list[float], list[float]]:
        """(latencies of requests started within ±half_width of any instant, all the others)."""
        marks = sorted(instants)
        near, far = [], []
        import bisect

        for start, lat in zip(self.starts, self.latencies, strict=True):
            i = bisect.bisect_left(marks, start)
            close = any(abs(start - marks[j]) <= half_width for j in (i - 1, i) if 0 <= j < len(marks))
            (near if close else far).append(lat)
        return near, far

    def last_answer_of(self, version: str, after: float, before: float) -> float | None:
        """The latest end time (start + latency) of a response by `version` started in [after, before)."""
        best = None
        for start, lat, a in zip(self.starts, self.latencies, self.answers, strict=True):
            if a == version and after <= start < before:
                end = start + lat
                best = end if best is None or end > best else best
        return best


class Load:
    """`clients` threads in a child process, each with one HTTP/1.1 keep-alive connection,
    asking `path` in a loop. A child process, so that they do not compete for the benchmark's GIL."""

    def __init__(self, address: str, clients: int = 20, path: str = "/version") -> None:
        host_name, port = address.rsplit(":", 1)
        ctx = multiprocessing.get_context("spawn")
        self.clients = clients
        self.stop_event = ctx.Event()
        self.ready = ctx.Event()
        self.counts = ctx.Array("q", clients, lock=False)
        self.queue = ctx.Queue()
        self.process = ctx.Process(target=_load_main, args=((host_name, int(port)), path, clients, self.stop_event,
                                                           self.ready, self.counts, self.queue), daemon=True)
        self.result: LoadResult | None = None
        self.started_at = 0.0
        self.stopped_at = 0.0

    def start(self) -> Load:
        self.process.start()
        if not self.ready.wait(timeout=30):
            raise RuntimeError("load process did not start")
        self.started_at = time.time()
        return self

    def count(self) -> int:
        return sum(self.counts[:])

    def stop(self) -> LoadResult:
        if self.result is None:
            self.stop_event.set()
            self.stopped_at = time.time()
            outs = self.queue.get(timeout=60)
            self.process.join(timeout=10)
            self.result = LoadResult(outs)
        return self.result

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Probe:
    """One keep-alive client polling the public address as fast as it can, in a thread, recording
    (wall-clock time the answer arrived, answer) until stopped."""

    def __init__(self, address: str, path: str = "/version") -> None:
        host_name, port = address.rsplit(":", 1)
        self.target = (host_name, int(port))
        self.path = path
        self.seen: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn = None
        while not self._stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection(*self.target, timeout=5)
            try:
                conn.request("GET", self.path)
                resp = conn.getresponse()
                body = resp.read().decode(errors="replace").strip()
                self.seen.append((time.time(), body if resp.status == 200 else f"HTTP {resp.status}"))
            except (OSError, http.client.HTTPException) as exc:
                self.seen.append((time.time(), f"{type(exc).__name__}"))
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def start(self) -> Probe:
        self._thread.start()
        return self

    def stop(self) -> list[tuple[float, str]]:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.seen

    def settled_on(self, version: str, since: float) -> float | None:
        """The first instant after `since` from which every answer seen was `version`."""
        first = None
        for at, answer in self.seen:
            if at < since:
                continue
            if answer == version:
                first = first if first is not None else at
            else:
                first = None
        return first


def get_text(address: str, path: str = "/version", timeout: float = 2.0) -> str | None:
    host_name, port = address.rsplit(":", 1)
    try:
        conn = http.client.HTTPConnection(host_name, int(port), timeout=timeout)
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace").strip()
        conn.close()
        return body if resp.status == 200 else None
    except (OSError, http.client.HTTPException):
        return None


# -- the bot's database, read-only ----------------------------------------------------------------


class Db:
    """Read-only queries on the bot's SQLite file while the bot runs (WAL: readers never block it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        conn.row_factory = sqlite3.Row
        return conn

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        for _ in range(50):
            try:
                conn = self._connect()
                try:
                    return [dict(r) for r in conn.execute(sql, params).fetchall()]
                finally:
                    conn.close()
            except sqlite3.OperationalError as exc:  # not created yet, or busy for a moment
                last = exc
                time.sleep(0.05)
        raise last

    def row(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        found = self.rows(sql, params)
        return found[0] if found else None

    def deploy(self, deploy_id: int) -> dict[str, Any] | None:
        return self.row("SELECT * FROM deploys WHERE id = ?", (deploy_id,))

    def last_deploy_id(self) -> int:
        r = self.row("SELECT max(id) AS id FROM deploys")
        return int(r["id"] or 0) if r else 0

    def steps(self, deploy_id: int) -> list[dict[str, Any]]:
        return self.rows("SELECT * FROM steps WHERE deploy_id = ? ORDER BY id", (deploy_id,))

    def outbox_pending(self) -> int:
        r = self.row("SELECT count(*) AS n FROM outbox WHERE sent_at IS NULL")
        return int(r["n"]) if r else 0

    def wait(self, predicate: Callable[[], Any], timeout: float, interval: float = 0.02, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(interval)

    def wait_status(self, deploy_id: int, statuses: Sequence[str], timeout: float = 60.0) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            d = self.deploy(deploy_id)
            return d if d and d["status"] in statuses else None

        return self.wait(done, timeout, what=f"deploy #{deploy_id} to be {'/'.join(statuses)}")


def iso_to_epoch(text: str | None) -> float | None:
    if not text:
        return None
    import datetime as dt

    return dt.datetime.fromisoformat(text).timestamp()


if __name__ == "__main__":
    print(machine())
    print("(benchmarks/common.py holds helpers; run bench_window_http.py, bench_deploy.py or zero_downtime.py)")
