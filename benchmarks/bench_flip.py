"""Benchmark: blue-green weight flips through HAProxy's runtime API under keep-alive load.

Starts HAProxy and two demo app slots (v1, v2) with the `local` platform driver, runs N client
threads that each keep one HTTP/1.1 connection open and ask GET /version in a loop, and flips all
traffic between the slots FLIPS times. Prints the machine, the requests served and failed, the
duration of each `shift()` call, and request latencies.

    .venv/bin/python benchmarks/bench_flip.py [--flips 20] [--clients 20] [--interval 0.25]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import free_port, machine, percentile  # noqa: E402
from commands.config import parse_config  # noqa: E402
from platforms import make_platform  # noqa: E402
from tests.kit.load import Load  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flips", type=int, default=20)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between flips")
    args = parser.parse_args()

    print(machine())
    with tempfile.TemporaryDirectory(prefix="bench-flip-") as tmp:
        cfg = parse_config(
            {"services": {"web": {"platform": "local", "health_path": "/api/v1/health", "local": {
                "listen": f"127.0.0.1:{free_port()}",
                "slots": {"blue": f"127.0.0.1:{free_port()}", "green": f"127.0.0.1:{free_port()}"},
                "run": f"{sys.executable} -m demo.app --port {{port}} --version {{version}}",
            }}}},
            base_dir=Path(tmp),
        )
        site = make_platform(cfg, "web", "production")
        try:
            return run(site, cfg.services["web"].local.listen, args)
        finally:
            site.shutdown()


def run(site, listen: str, args: argparse.Namespace) -> int:  # noqa: ANN001
    site.start("blue", "v1")
    site.start("green", "v2")
    deadline = time.monotonic() + 10
    while not (site.health("blue").ok and site.health("green").ok):
        if time.monotonic() > deadline:
            print("the demo slots did not become healthy", file=sys.stderr)
            return 1
        time.sleep(0.05)
    site.shift({"blue": 100, "green": 0})

    idle_times: list[float] = []
    for i in range(args.flips):
        t0 = time.perf_counter()
        site.shift({"blue": 0, "green": 100} if i % 2 == 0 else {"blue": 100, "green": 0})
        idle_times.append(time.perf_counter() - t0)

    shift_times: list[float] = []
    router_times: list[float] = []
    # The clients run in their own process, so that they do not compete with the timed shift()
    # calls for this process's GIL (the bot does not run 20 clients either).
    with Load(listen, args.clients, process=True, record=True) as load:
        time.sleep(1.0)  # let every client open its connection
        started = time.monotonic()
        for i in range(args.flips):
            target = {"blue": 0, "green": 100} if i % 2 == 0 else {"blue": 100, "green": 0}
            t0 = time.perf_counter()
            site.shift(target)
            shift_times.append(time.perf_counter() - t0)
            router_times.append(site.last_router_call_seconds)
            time.sleep(args.interval)
        time.sleep(0.5)
        elapsed = time.monotonic() - started + 1.0

    result = load.stop()
    latencies = [took for _, took, answer in result.requests if answer is not None]
    failures = [reason for _, reason in result.failures]
    versions = result.by_version
    total = result.total
    ms = 1000

    print(f"load:    {args.clients} keep-alive clients, {args.flips} flips every {args.interval:g} s, "
          f"{elapsed:.1f} s")
    print(f"requests: {total} total, {len(failures)} failed ({total / elapsed:.0f} req/s); "
          f"answered by v1: {versions.get('v1', 0)}, v2: {versions.get('v2', 0)}")
    for failure in sorted(set(failures))[:5]:
        print(f"  failure: {failure} (x{failures.count(failure)})")
    print(f"idle flip (shift() call, no load): median {statistics.median(idle_times) * ms:.2f} ms, "
          f"max {max(idle_times) * ms:.2f} ms")
    print(f"flip (shift() call, incl. verify + persist): median {statistics.median(shift_times) * ms:.2f} ms, "
          f"p10 {percentile(shift_times, 10) * ms:.2f} ms, p90 {percentile(shift_times, 90) * ms:.2f} ms, "
          f"max {max(shift_times) * ms:.2f} ms")
    print(f"flip (runtime API exchange, both weights): median {statistics.median(router_times) * ms:.2f} ms, "
          f"max {max(router_times) * ms:.2f} ms")
    print(f"latency: p50 {percentile(latencies, 50) * ms:.2f} ms, p99 {percentile(latencies, 99) * ms:.2f} ms, "
          f"max {max(latencies) * ms:.1f} ms")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
