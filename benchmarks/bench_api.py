"""Benchmark (issue 13): the REST API for CI against `recess serve`.

`recess serve` runs as a subprocess (its own interpreter and GIL) with 50 services, the fake Slack
in a second subprocess, and this process plays the CI jobs:

A. 50 concurrent `POST /api/v1/deploys`, one per service, fired at the same instant from 50
   already-open connections, each with its own Idempotency-Key; every one must be answered 202.
   Repeated for `--rounds` rounds (new versions each round). Target: p99 under 300 ms.
B. `GET /api/v1/deploys/{id}` at `--rate` requests per second (1,000) for `--seconds`, open loop:
   each request has a scheduled send time, and its latency is counted from that time, so a
   server (or client) that falls behind shows up in the numbers instead of slowing the load.
   Target: p99 under 20 ms. The service time (from the actual send) is reported beside it. B
   starts once the outbox has posted A's cards, after 2 s of polls that are not counted.

    .venv/bin/python benchmarks/bench_api.py [--rounds 5] [--rate 1000] [--seconds 10] [--clients 16]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import statistics
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import LA, LINCOLN, Db, RecessProcess, base_config, machine, summary  # noqa: E402
from tests.kit.slack import FakeSlackProcess  # noqa: E402

TOKEN = "recess_bench_token_0123456789abcdef"
SERVICES = 50
TARGET_POST_P99 = 0.300
TARGET_GET_P99 = 0.020

CONFIG = base_config(LINCOLN, LA) + """
[[api.tokens]]
name = "github-actions"
token_sha256 = "{digest}"
scopes = ["deploy", "rollback", "read"]
"""

SERVICE = """
[services.svc{n:02d}]
platform = "command"

[services.svc{n:02d}.command]
start = "true"
stop = "true"
shift = "true"
status = "true"
"""


def connection(port: int) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.connect()
    return conn


def post_burst(port: int, round_no: int) -> tuple[list[float], list[int]]:
    conns = [connection(port) for _ in range(SERVICES)]
    latencies: list[float] = [0.0] * SERVICES
    statuses: list[int] = [0] * SERVICES
    barrier = threading.Barrier(SERVICES)

    def one(i: int) -> None:
        body = json.dumps({"service": f"svc{i:02d}", "version": f"v{round_no}.{i}", "env": "production",
                           "sha": "0123456789abcdef", "requested_by": "bench"})
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json",
                   "Idempotency-Key": f"bench-{round_no}-{i}"}
        barrier.wait()
        t0 = time.perf_counter()
        try:
            conns[i].request("POST", "/api/v1/deploys", body=body, headers=headers)
            resp = conns[i].getresponse()
            resp.read()
            statuses[i] = resp.status
        except OSError:
            statuses[i] = -1
        latencies[i] = time.perf_counter() - t0

    threads = [threading.Thread(target=one, args=(i,)) for i in range(SERVICES)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in conns:
        c.close()
    return latencies, statuses


def get_at_rate(port: int, ids: list[int], rate: float, seconds: float, clients: int) -> dict:
    total = int(rate * seconds)
    start = time.perf_counter() + 0.2
    scheduled_lat: list[float] = []
    service_lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    headers = {"Authorization": f"Bearer {TOKEN}"}

    def worker(w: int) -> None:
        conn = connection(port)
        mine_sched, mine_serv, mine_err = [], [], []
        for k in range(w, total, clients):
            due = start + k / rate
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            t0 = time.perf_counter()
            try:
                conn.request("GET", f"/api/v1/deploys/{ids[k % len(ids)]}", headers=headers)
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    mine_err.append(f"HTTP {resp.status}")
            except OSError as exc:
                mine_err.append(type(exc).__name__)
                conn.close()
                conn = connection(port)
            t1 = time.perf_counter()
            mine_sched.append(t1 - due)
            mine_serv.append(t1 - t0)
        conn.close()
        with lock:
            scheduled_lat.extend(mine_sched)
            service_lat.extend(mine_serv)
            errors.extend(mine_err)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return {"sent": total, "elapsed": elapsed, "achieved": total / elapsed, "scheduled": summary(scheduled_lat),
            "service": summary(service_lat), "errors": errors}


def ms(x: float) -> str:
    return f"{x * 1000:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--get-runs", type=int, default=3)
    args = ap.parse_args()
    print(machine())
    ok = True
    with tempfile.TemporaryDirectory() as tmp_name, FakeSlackProcess() as slack:
        tmp = Path(tmp_name)
        cfg = tmp / "recess.toml"
        digest = hashlib.sha256(TOKEN.encode()).hexdigest()
        cfg.write_text(textwrap.dedent(CONFIG.format(digest=digest)) + "".join(SERVICE.format(n=n) for n in range(SERVICES)))
        server = RecessProcess(cfg, slack, tmp / "serve.log")
        try:
            print(f"recess serve ready {server.wait_ready():.2f} s after spawn, {SERVICES} services")
            warm = connection(server.port)
            warm.request("GET", "/api/v1/services", headers={"Authorization": f"Bearer {TOKEN}"})
            warm.getresponse().read()
            warm.close()
            print(f"\nA. {SERVICES} concurrent POST /api/v1/deploys (distinct services), {args.rounds} rounds")
            print("round  answered  p50 ms  p90 ms  p99 ms  max ms")
            p99s, all_post = [], []
            for r in range(1, args.rounds + 1):
                lat, statuses = post_burst(server.port, r)
                answered = sum(1 for s in statuses if s == 202)
                s = summary(lat)
                p99s.append(s["p99"])
                all_post += lat
                print(f"{r:>5}  {answered:>5}/{SERVICES}  {ms(s['p50']):>6}  {ms(s['p90']):>6}  {ms(s['p99']):>6}  {ms(s['max']):>6}")
                ok &= answered == SERVICES
                time.sleep(0.5)  # the outbox posts the cards in the meantime
            s = summary(all_post)
            print(f"all {len(all_post)}: p50 {ms(s['p50'])} ms, p99 {ms(s['p99'])} ms; per-round p99 median "
                  f"{ms(statistics.median(p99s))} ms (min {ms(min(p99s))}, max {ms(max(p99s))}); target < {ms(TARGET_POST_P99)} ms")
            ok &= statistics.median(p99s) < TARGET_POST_P99

            # The 250 cards are still being posted to the fake Slack (the outbox renders each from the
            # store): series B starts once they are out, and after 2 s of polls not counted.
            drained = time.monotonic()
            Db(tmp / "recess.db").wait(lambda: Db(tmp / "recess.db").outbox_pending() == 0, timeout=300, what="the outbox")
            print(f"\n(the outbox posted the last card {time.monotonic() - drained:.1f} s after round {args.rounds})")
            ids = list(range(1, SERVICES * args.rounds + 1))
            get_at_rate(server.port, ids, args.rate, 2.0, args.clients)
            print(f"\nB. GET /api/v1/deploys/{{id}} at {args.rate:.0f} req/s for {args.seconds:g} s, {args.clients} keep-alive "
                  f"clients, open loop, {args.get_runs} runs")
            print("run  achieved req/s  errors  p50 ms  p90 ms  p99 ms  max ms   (from the scheduled time; service-time p99)")
            get_p99s = []
            for run_no in range(1, args.get_runs + 1):
                res = get_at_rate(server.port, ids, args.rate, args.seconds, args.clients)
                sch, srv = res["scheduled"], res["service"]
                get_p99s.append(sch["p99"])
                print(f"{run_no:>3}  {res['achieved']:>14.0f}  {len(res['errors']):>6}  {ms(sch['p50']):>6}  {ms(sch['p90']):>6}  "
                      f"{ms(sch['p99']):>6}  {ms(sch['max']):>6}   (service p99 {ms(srv['p99'])})")
                ok &= not res["errors"]
            print(f"per-run p99 median {ms(statistics.median(get_p99s))} ms (min {ms(min(get_p99s))}, max "
                  f"{ms(max(get_p99s))}); target < {ms(TARGET_GET_P99)} ms")
            ok &= statistics.median(get_p99s) < TARGET_GET_P99
        finally:
            server.stop()
    print("\nPASS" if ok else "\nFAIL: see the targets above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
