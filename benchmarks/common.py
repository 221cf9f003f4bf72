"""Shared helpers for the benchmarks that drive a whole recess: bench_window_http.py,
bench_deploy.py and zero_downtime.py. Not a benchmark itself (running it prints the machine).

What lives here (the fake Slack, the signed requests and the load come from the test kit,
tests/kit/, so the benchmarks play Slack and the schools exactly as the tests do):
- machine():            platform, CPU model, cores, Python, HAProxy, load average
- stats helpers:        percentile(), summary(), fmt_ms(), spread()
- RecessProcess:        `recess serve` as a subprocess (the test kit's `Serve`) with SLACK_API_URL,
                        SLACK_SIGNING_SECRET, RECESS_CONFIG (and RECESS_CRASH_AT for fault injection)
- burst():              signed Slack requests sent all at once from pre-opened connections
- Db:                   read-only look at the bot's SQLite file (WAL lets us read while it writes)
"""

from __future__ import annotations

import http.client
import json
import os
import platform as host
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.kit.ports import free_port  # noqa: E402, F401 (the benchmarks import it from here)
from tests.kit.serve import Serve  # noqa: E402
from tests.kit.signer import SlackSender  # noqa: E402
from tests.kit.slack import FakeSlackProcess  # noqa: E402

SECRET = "bench-signing-secret"
ENGINEER = "U0ENGINEER"
APPROVER = "U0APPROVER1"
RECESS_BIN = Path(sys.executable).parent / "recess"

LINCOLN = ("lincoln-high", "America/New_York")
LA = ("la-elementary", "America/Los_Angeles")
MESA = ("mesa-middle", "America/Phoenix")


# -- the configuration every benchmark starts from -------------------------------------------------


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int | float) else json.dumps(value)


def base_config(*tenants: tuple[str, str], approvers: Sequence[str] = ("U0APPROVER1", "U0APPROVER2"),
                approvals: int = 1, respect_windows: bool = True, **production: object) -> str:
    """The [bot], [access], [[tenants]] and [environments.production] blocks a benchmark's
    configuration starts with (as tests/harness.py BASE_CONFIG does for the tests): the bot on
    recess.db in the configuration's folder, the given schools (Lincoln High by default), and
    production with `approvals`, `respect_windows` and any further settings (keep_blue="30m", ...).
    A benchmark adds only its own blocks (services, releases, API tokens) after it."""
    lines = ["", "[bot]", 'database = "recess.db"', 'channel = "C0DEPLOYS"', 'state_dir = ".recess"', "",
             "[access]", f"approvers = {json.dumps(list(approvers))}", ""]
    for school, timezone in tenants or (LINCOLN,):
        lines += ["[[tenants]]", f"id = {json.dumps(school)}", f"timezone = {json.dumps(timezone)}", ""]
    settings = {"approvals": approvals, "respect_windows": respect_windows, **production}
    lines += ["[environments.production]", *(f"{key} = {toml_value(value)}" for key, value in settings.items())]
    return "\n".join(lines) + "\n"


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


# -- recess serve as a subprocess -----------------------------------------------------------------


class RecessProcess(Serve):
    """`recess serve` (the installed `recess` script) on a free port, run in the configuration's
    folder; its output (the bot's log) goes to `log_path`. The process itself is the test kit's
    `Serve` (tests/kit/serve.py), so the benchmarks start, kill and read the bot as the tests do."""

    def __init__(self, config: Path, slack: FakeSlackProcess, log_path: Path, *, crash_at: str | None = None,
                 port: int | None = None, extra_env: dict[str, str] | None = None) -> None:
        super().__init__(config, slack.api_url, secret=SECRET, crash_at=crash_at, env=extra_env, log=log_path,
                         port=port, cwd=config.parent, command=(str(RECESS_BIN),), bot_token="xoxb-bench")
        self.ready_at: float | None = None

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Waits for /healthz 200; returns the seconds since the process was spawned."""
        seconds = self.wait_healthy(timeout, poll=0.02)
        self.ready_at = self.spawned + seconds
        return seconds


# -- a burst of signed Slack requests ------------------------------------------------------------------------


class BurstResult:
    def __init__(self, statuses: list[int], bodies: list[bytes], latencies: list[float], errors: list[str]) -> None:
        self.statuses, self.bodies, self.latencies, self.errors = statuses, bodies, latencies, errors

    @property
    def acked(self) -> int:
        return sum(1 for s, b in zip(self.statuses, self.bodies, strict=True) if s == 200 and b)


def burst(base_url: str, bodies: Sequence[str], sender: SlackSender, timeout: float = 10.0) -> BurstResult:
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
    prepared = [(b.encode(), sender.headers(b)) for b in bodies]
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


# -- the public address ---------------------------------------------------------------------------


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
