"""bench_docker: the docker platform (Podman here) behind HAProxy, driven through recess's real HTTP
endpoint with signed requests, while keep-alive clients count every answer.

(a) 10 deploy + rollback cycles under 20 keep-alive clients: each deploy builds a new image from
    the test app's context (FROM scratch, busybox httpd), starts it in green, health-checks it and
    flips; then the card's Roll back button is clicked. Targets: 0 failed requests of at least
    50,000; flip (HAProxy's runtime-API exchange) under 5 ms; click to 100 % on the previous
    version under 1 s (from sending the signed click to the router's weights showing it).
(b) Bot overhead of a container deploy: pipeline time minus the time inside platform calls (the
    engine, the build, HAProxy) and health-poll pauses. Target under 1 s.
(c) Build skipped for an existing image: the driver's build() call of a version that exists, and
    the build step of a redeploy through the pipeline. Target under 200 ms.

    .venv/bin/python benchmarks/bench_docker.py [--cycles 10] [--clients 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_deploy import BASE, Instrumented, TimedPlatform, print_deploys  # noqa: E402
from benchmarks.common import free_port, machine, spread, summary  # noqa: E402
from tests.docker import app_context, engine, engine_unavailable, remove_everything  # noqa: E402
from tests.kit.load import Load  # noqa: E402
from tests.kit.slack import FakeSlack  # noqa: E402

TARGET_FLIP = 0.005
TARGET_CLICK = 1.0
TARGET_OVERHEAD = 1.0
TARGET_SKIP = 0.200
MIN_REQUESTS = 50_000


def docker_table(image: str, listen: int, blue: int, green: int) -> str:
    return f"""
[services.web]
platform = "docker"
environments = ["staging"]
health_path = "/health"
health_timeout = "30s"
keep_images = 3

[services.web.docker]
image = "{image}"
port = 8000
listen = "127.0.0.1:{listen}"
slots = {{ blue = "127.0.0.1:{blue}", green = "127.0.0.1:{green}" }}
engine = "{engine()}"
build = {{ context = "app" }}
"""


def wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.002)


def run(tmp: Path, cycles: int, clients: int) -> bool:
    from bot.runtime import system_clock
    from commands.config import load_config
    from platforms import make_platform
    from storage import deploys as rows
    from tests.harness import RecessServer, write_config

    image = f"localhost/recess-bench-{os.getpid()}"
    ports = [free_port() for _ in range(3)]
    app_context(tmp / "app")
    cfg = load_config(write_config(tmp, docker_table(image, *ports), base=BASE))
    listen = f"127.0.0.1:{ports[0]}"
    holder: dict[str, TimedPlatform] = {}

    def factory(c: Any, s: str, e: str) -> TimedPlatform:
        holder["p"] = TimedPlatform(make_platform(c, s, e))
        return holder["p"]

    slack = FakeSlack()
    srv = RecessServer(cfg, slack, system_clock, platform_factory=factory)
    srv.rt.extras["deployer"].platform_for("web", "staging")
    timed = holder["p"]
    inner = timed.inner
    inst = Instrumented(srv, timed)
    ok = True
    try:
        first = inst.deploy("v1", timeout=180)
        assert first["status"] == "succeeded", first["outcome"]
        print(f"first deploy (builds v1, starts HAProxy): pipeline {first['total']:.1f} s, bot {first['overhead'] * 1000:.0f} ms")

        print(f"\n(a) {cycles} deploy + rollback cycles under {clients} keep-alive clients (GET /version through HAProxy)")
        deploys: list[dict[str, Any]] = []
        clicks: list[float] = []
        click_ops: dict[str, list[float]] = {}  # platform calls between a click and its flip
        load = Load(listen, clients, process=True, record=True).start()
        try:
            time.sleep(1.0)
            for i in range(cycles):
                version = f"v{i + 2}"
                before = inner.status()
                previous = before.serving
                result = inst.deploy(version, timeout=180)
                assert result["status"] == "succeeded", result["outcome"]
                deploys.append(result)
                time.sleep(0.5)
                card_ts = rows.get(srv.rt.store, result["id"])["card_ts"]
                srv.rt.outbox.flush()
                card_ts = rows.get(srv.rt.store, result["id"])["card_ts"]
                clicked = time.perf_counter()
                srv.click("rollback_card", result["id"], message_ts=card_ts)
                wait(lambda p=previous: inner.router.weights().get(p) == 100, 10, "the rollback flip")
                flipped = time.perf_counter()
                clicks.append(flipped - clicked)
                for _, op, at, took in timed.calls:
                    if clicked <= at < flipped:
                        click_ops.setdefault(op, []).append(took)
                last = srv.rt.store.row("SELECT id FROM deploys ORDER BY id DESC LIMIT 1")["id"]
                wait(lambda n=last: rows.get(srv.rt.store, n)["status"] not in ("pending", "approved", "running"), 30,
                     "the rollback to end")
                time.sleep(0.5)
            time.sleep(0.5)
        finally:
            tally = load.stop()
        elapsed = load.stopped_at - load.started_at
        flips = timed.router_call_seconds
        print(f"  requests: {tally.total} in {elapsed:.1f} s ({tally.total / elapsed:.0f}/s), failed {tally.failed}; "
              f"answers by version: {dict(sorted(tally.by_version.items(), key=lambda kv: int(kv[0][1:])))}")
        for at, what in tally.failures[:5]:
            print(f"    failure at {at:.3f}: {what}")
        lat = summary(tally.latencies)
        print(f"  request latency: p50 {lat['p50'] * 1000:.2f} ms, p99 {lat['p99'] * 1000:.2f} ms, max {lat['max'] * 1000:.1f} ms")
        print(f"  flip, HAProxy runtime-API exchange ({len(flips)} flips: deploys and rollbacks): {spread(flips, 2)}")
        print(f"  click to 100% on the previous version: {spread(clicks)}")
        print("    platform calls between click and flip, per click (calls, median ms each): " + ", ".join(
            f"{op} {len(v) / len(clicks):.1f} x {statistics.median(v) * 1000:.0f}" for op, v in sorted(click_ops.items())))
        good_a = (tally.failed == 0 and tally.total >= MIN_REQUESTS and statistics.median(flips) < TARGET_FLIP
                  and max(clicks) < TARGET_CLICK)
        print(f"  -> {'PASS' if good_a else 'FAIL'} (0 failed of >= {MIN_REQUESTS:,}; flip median < 5 ms; every click "
              f"< 1 s)")
        ok = ok and good_a

        print("\n(b) bot overhead of a container deploy (pipeline - platform calls - health-poll pauses)")
        print_deploys("docker platform under load (each deploy builds its image)", deploys)
        builds = [r["by_op"].get("build", 0.0) for r in deploys]
        print(f"    build() inside the pipeline: {spread(builds)}")
        overheads = [r["overhead"] for r in deploys]
        good_b = max(overheads) < TARGET_OVERHEAD
        print(f"  -> {'PASS' if good_b else 'FAIL'} (every deploy's bot overhead < 1 s; median "
              f"{statistics.median(overheads) * 1000:.0f} ms)")
        ok = ok and good_b

        print("\n(c) build skipped for an existing image")
        skips = []
        for _ in range(20):
            t = time.perf_counter()
            built = inner.build(deploys[-1]["version"])
            skips.append(time.perf_counter() - t)
            assert built.skipped
        again = deploys[-2]["version"]  # kept: among the newest keep_images
        redeploy = inst.deploy(again, timeout=120)
        step = redeploy["steps"].get("build")
        detail = rows.steps(srv.rt.store, redeploy["id"])[0]["detail"]
        print(f"  driver build() of an existing version (20 calls): {spread(skips)}")
        print(f"  build step of a redeploy of {again} (steps table): {step * 1000:.0f} ms: {detail}")
        good_c = statistics.median(skips) < TARGET_SKIP and step is not None and step < TARGET_SKIP
        print(f"  -> {'PASS' if good_c else 'FAIL'} (< 200 ms)")
        ok = ok and good_c
        print(f"\nengine CLI time over the whole run: {inner.engine_seconds:.1f} s")
    finally:
        inst.close()
        srv.stop()
        slack.close()
        make_platform(cfg, "web", "staging").router.stop()
        remove_everything("web", image)
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=10)
    ap.add_argument("--clients", type=int, default=20)
    args = ap.parse_args()
    print(machine())
    reason = engine_unavailable()
    if reason:
        print(f"skipped: {reason}")
        return 0
    version = os.popen(f"{engine()} --version").read().strip()
    print(f"engine:  {version}")
    os.environ.setdefault("RECESS_LOG_LEVEL", "WARNING")
    with tempfile.TemporaryDirectory(prefix="bench-docker-") as tmp:
        return 0 if run(Path(tmp), args.cycles, args.clients) else 1


if __name__ == "__main__":
    sys.exit(main())
