"""Benchmark: the deploy dashboard with 10,000 deploys and 50 flags in the store.

recess runs in-process (the test harness's server: uvicorn, signed Slack requests, the fake
Slack). The store is seeded with 10,000 deploys of 10 services over the past year (7 steps each,
some failed, rolled back, or carrying a commit time) and 50 flags with tenant overrides. One
signed-in client then asks, one request at a time:

1. `GET /dashboard`: p99 under 100 ms.
2. `GET /dashboard/metrics` (the DORA page, all services, 90 days): under 300 ms.
3. `GET /metrics` (Prometheus): under 50 ms, both while nothing changes (the history's text is
   kept) and when a deploy changed before every scrape (the history is collected again); the
   first scrape, which counts every step, is reported apart.
4. Building the App Home view (bot.listeners.home.home_view), in-process: under 50 ms.

Prints the machine, then the numbers; exits 1 when a target is missed.

    .venv/bin/python benchmarks/bench_dashboard.py [--requests 200]
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, spread, summary  # noqa: E402
from bot.listeners import home  # noqa: E402
from storage.db import iso  # noqa: E402
from tests.harness import APPROVER_1, BASE_CONFIG, FakeClock, start_server  # noqa: E402
from tests.kit.slack import FakeSlack  # noqa: E402

NOW = dt.datetime(2027, 3, 17, 2, 0, tzinfo=dt.UTC)  # after school everywhere
SERVICES = [f"svc{i}" for i in range(10)]
STEPS = ("build", "start_green", "migrate", "health", "smoke", "shift", "bake")


def config() -> tuple[str, str]:
    flags = "".join(f"flag_{i:02d} = {'true' if i % 2 else 'false'}\n" for i in range(48))
    base = BASE_CONFIG.replace("portfolio_enabled = true\n", "portfolio_enabled = true\n" + flags)
    services = "".join(f'\n[services.{s}]\nplatform = "command"\n[services.{s}.command]\n'
                       'start = "true"\nstop = "true"\nshift = "true"\nstatus = "true"\n' for s in SERVICES)
    return base, services + '\n[dashboard]\nhome_refresh = "0s"\n'


def seed(store, n: int = 10_000) -> None:  # noqa: ANN001
    rnd = random.Random(14)
    deploys, steps = [], []
    for i in range(1, n + 1):
        service = SERVICES[i % len(SERVICES)]
        env = "production" if i % 4 else "staging"
        started = NOW - dt.timedelta(days=365) + dt.timedelta(seconds=i * 365 * 86400 / n)
        roll = rnd.random()
        status = "succeeded" if roll < 0.85 else ("failed" if roll < 0.92 else ("rolled_back" if roll < 0.97 else "cancelled"))
        took = dt.timedelta(seconds=rnd.uniform(40, 400))
        traffic = started + took * 0.8 if status != "cancelled" else None
        committed = started - dt.timedelta(hours=rnd.uniform(0.5, 48)) if i % 3 == 0 else None
        deploys.append((i, "deploy", service, env, f"v{i}", f"v{i - 1}", "U0ENGINEER", status, iso(started), iso(started),
                        iso(started), iso(started + took), iso(traffic), iso(committed), 1, "C0DEPLOYS", f"1700000000.{i:06d}"))
        at = started
        for name in STEPS:
            end = at + took / len(STEPS)
            steps.append((i, name, "ok", iso(at), iso(end), ""))
            at = end
    with store.transaction():
        store.db.conn.executemany(
            "INSERT INTO deploys (id, kind, service, env, version, previous_version, requester, status, created_at,"
            " updated_at, started_at, finished_at, traffic_at, committed_at, blue_retired, channel, card_ts)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", deploys)
        store.db.conn.executemany(
            "INSERT INTO steps (deploy_id, name, status, started_at, finished_at, detail) VALUES (?, ?, ?, ?, ?, ?)", steps)
        for i in range(5):
            store.execute("INSERT INTO deploys (kind, service, env, version, requester, status, created_at, updated_at)"
                          " VALUES ('deploy', ?, 'production', ?, 'U0ENGINEER', 'pending', ?, ?)",
                          (SERVICES[i], f"v-next-{i}", iso(NOW), iso(NOW)))


def timed(fn, n: int) -> list[float]:  # noqa: ANN001
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def changed_scrapes(srv, n: int) -> list[float]:  # noqa: ANN001
    """Scrapes with a deploy changed before each (outside the timing), so nothing is kept."""
    out = []
    for i in range(n):
        srv.rt.store.execute("UPDATE deploys SET updated_at = ? WHERE id = 1", (iso(NOW + dt.timedelta(seconds=i)),))
        t = time.perf_counter()
        srv.http.get("/metrics").raise_for_status()
        out.append(time.perf_counter() - t)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    print(machine())
    base, extra = config()
    with FakeSlack() as slack, tempfile.TemporaryDirectory() as tmp:
        srv = start_server(Path(tmp), slack, extra, FakeClock(NOW), base=base)
        try:
            t = time.perf_counter()
            seed(srv.rt.store)
            for i in range(20):  # tenant overrides on some flags
                srv.command("/flag", f"on flag_{i:02d} tenant={'lincoln-high' if i % 2 else 'la-elementary'}", user=APPROVER_1)
            print(f"seeded 10,000 deploys (70,000 steps) and 50 flags in {time.perf_counter() - t:.1f} s")
            client = srv.dashboard_client(APPROVER_1)

            def get(path: str) -> None:
                resp = client.get(path)
                assert resp.status_code == 200, (path, resp.status_code, resp.text[:200])

            first_metrics = timed(lambda: srv.http.get("/metrics").raise_for_status(), 1)[0]
            for path in ("/dashboard", "/dashboard/metrics?days=90"):
                get(path)  # warm templates
            results = {
                "GET /dashboard": (timed(lambda: get("/dashboard"), args.requests), 0.100),
                "GET /dashboard/metrics?days=90": (timed(lambda: get("/dashboard/metrics?days=90"), max(args.requests // 4, 20)), 0.300),
                "GET /dashboard/metrics?days=30": (timed(lambda: get("/dashboard/metrics?days=30"), max(args.requests // 4, 20)), 0.300),
                "GET /metrics": (timed(lambda: srv.http.get("/metrics").raise_for_status(), args.requests), 0.050),
                "GET /metrics, a deploy changed": (changed_scrapes(srv, args.requests), 0.050),
                "App Home view (build)": (timed(lambda: home.home_view(srv.rt, APPROVER_1, "America/New_York"), args.requests), 0.050),
            }
            size = len(srv.http.get("/metrics").content)
        finally:
            srv.stop()
    print(f"\nfirst /metrics scrape (counts all 70,000 steps once): {first_metrics * 1000:.1f} ms; body {size:,} bytes")
    print(f"\n{'what':34} {'p50':>9} {'p90':>9} {'p99':>9} {'max':>9}  target (p99)")
    missed = False
    for what, (values, target) in results.items():
        s = summary(values)
        ok = s["p99"] < target
        missed |= not ok
        print(f"{what:34} {s['p50'] * 1000:8.1f}  {s['p90'] * 1000:8.1f}  {s['p99'] * 1000:8.1f}  {s['max'] * 1000:8.1f}  "
              f"< {target * 1000:.0f} ms {'ok' if ok else 'MISSED'}   ({spread(values)})")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
