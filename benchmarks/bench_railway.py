"""Benchmark (issue 15): the bot's own overhead in a Railway deploy, and GraphQL calls per deploy.

recess runs in-process (tests/harness.py: real uvicorn, signed `/deploy` commands, the fake Slack)
against the schema-validating Railway stand-in (tests/railway/standin.py). Waiting on Railway is
taken out of the measurement with a fake clock: the deployer's and the driver's `sleep` move a
fake monotonic clock and the stand-in's clock by the poll interval (2 s, the configured minimum)
instead of sleeping, so a deployment that Railway would build for `--build` s and start for
`--start` s takes that much *fake* time, and the wall-clock time of the deploy is all recess's
(ack, the store, the outbox, thread lines, the GraphQL round trips to the stand-in, the smoke
command); the time spent waiting for the stand-in's answers (its graphql-core validation of
every request is slow, and a real Railway's latency is not recess's either) is measured and
subtracted. Target: under 1 s. The count of GraphQL requests per deploy is read from the stand-in,
by root field, and the poll spacing from the fake sleeps (never under 2 s).

    .venv/bin/python benchmarks/bench_railway.py [--deploys 10] [--build 30] [--start 30] [--bake 2m]
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine, spread  # noqa: E402
from bot.deploying import deployer_of  # noqa: E402
from commands.config import load_config  # noqa: E402
from platforms.railway import RailwayPlatform  # noqa: E402
from storage import deploys as rows  # noqa: E402
from tests.harness import BASE_CONFIG, ENGINEER, RecessServer, write_config  # noqa: E402
from tests.kit.slack import FakeSlack  # noqa: E402
from tests.railway.standin import PROJECT_TOKEN, RailwayStandIn  # noqa: E402

TARGET_OVERHEAD = 1.0
POLL = 2.0


class FakeTime:
    """Monotonic time that only sleeping moves; every sleep moves Railway's clock too."""

    def __init__(self, railway: RailwayStandIn) -> None:
        self.t = 1000.0
        self.railway = railway
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        with self._lock:
            return self.t

    def sleep(self, s: float) -> None:
        with self._lock:
            self.t += s
            self.sleeps.append(s)
        self.railway.advance(s)
        time.sleep(0)  # let other threads run, as a real sleep would


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--deploys", type=int, default=10)
    ap.add_argument("--build", type=float, default=30.0, help="seconds Railway spends BUILDING (fake time)")
    ap.add_argument("--start", type=float, default=30.0, help="seconds Railway spends DEPLOYING (fake time)")
    ap.add_argument("--bake", default="2m", help="the environment's bake_time")
    args = ap.parse_args()
    print(machine())
    os.environ["RAILWAY_TOKEN"] = PROJECT_TOKEN
    with tempfile.TemporaryDirectory() as tmp, FakeSlack() as slack, \
            RailwayStandIn(build_seconds=args.build, deploy_seconds=args.start) as railway:
        folder = Path(tmp)
        railway.add_service("svc-core", "env-staging", image="ghcr.io/district/core", live="v1")
        base = BASE_CONFIG.replace('keep_blue = "5m"\nbake_time = "0s"', f'keep_blue = "5m"\nbake_time = "{args.bake}"')
        config = write_config(folder, f"""
[services.core]
platform = "railway"
health_path = "/api/v1/health"
health_timeout = "15m"

[services.core.railway]
project_id = "proj-district"
service_id = "svc-core"
environments = {{ production = "env-prod", staging = "env-staging" }}
image = "ghcr.io/district/core"
public_url = "{railway.public_url}"
api_url = "{railway.api_url}"
""", base=base)
        fake = FakeTime(railway)
        srv = RecessServer(load_config(config), slack)
        try:
            srv.rt.extras["platform_factory"] = lambda cfg, service, env: RailwayPlatform(
                service, env, cfg.services[service], cfg.state_dir / f"{service}.{env}", sleep=fake.sleep,
                monotonic=fake.monotonic, poll_interval=POLL)
            deployer = deployer_of(srv.rt)
            deployer.sleep = fake.sleep
            deployer.monotonic = fake.monotonic
            rows.insert(srv.rt.store, service="core", env="staging", version="v1", requester=ENGINEER,
                        status="succeeded", traffic_at=dt.datetime(2020, 1, 1, tzinfo=dt.UTC), blue_retired=1)
            platform = deployer.platform_for("core", "staging")
            walls, overheads, api, calls, fields = [], [], [], [], collections.Counter()
            for n in range(args.deploys):
                version = f"v{n + 2}"
                before = len(railway.calls)
                waited = platform.client.api_seconds + platform.probe_seconds
                started = time.perf_counter()
                srv.command("/deploy", f"core {version} staging")
                deploy_id = n + 2
                while (rows.get(srv.rt.store, deploy_id) or {}).get("status") not in ("succeeded", "failed", "rolled_back"):
                    time.sleep(0.002)
                walls.append(time.perf_counter() - started)
                answers = platform.client.api_seconds + platform.probe_seconds - waited
                api.append(answers)
                overheads.append(walls[-1] - answers)
                status = rows.get(srv.rt.store, deploy_id)["status"]
                if status != "succeeded":
                    print(f"deploy {deploy_id} ended {status}: {rows.get(srv.rt.store, deploy_id)['outcome']}")
                    return 2
                mine = railway.calls[before:]
                calls.append(len(mine))
                for c in mine:
                    fields.update(c["fields"])
            assert railway.refused == [], railway.refused
        finally:
            srv.stop()
    per = {k: v / args.deploys for k, v in sorted(fields.items())}
    print(f"\nRailway deploys against the stand-in: BUILDING {args.build:.0f} s, DEPLOYING {args.start:.0f} s, "
          f"bake_time {args.bake}, poll every {POLL:.0f} s (fake time)")
    print(f"wall time of a Railway deploy (waiting between polls is fake): {spread(walls)}")
    print(f"  of which waiting for the stand-in's answers (GraphQL, public_url): {spread(api)}")
    print(f"bot overhead of a Railway deploy (wall time minus those answers): {spread(overheads)}  "
          f"target < {TARGET_OVERHEAD * 1000:.0f} ms")
    print(f"GraphQL requests per deploy: median {statistics.median(calls):.0f} (min {min(calls)}, max {max(calls)})")
    print("  by root field, per deploy: " + ", ".join(f"{k} {v:g}" for k, v in per.items()))
    print(f"shortest pause between polls: {min(fake.sleeps):.1f} s (never under {POLL:.0f} s)")
    ok = statistics.median(overheads) < TARGET_OVERHEAD and min(fake.sleeps) >= POLL
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
