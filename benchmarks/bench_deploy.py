"""Benchmark (issue 3): /deploy acks under a burst, the bot's own overhead in a deploy, and a
local deploy under keep-alive load.

(a) 50 concurrent signed `/deploy` commands against `recess serve` (a subprocess, with the fake
    Slack in another): per round, 50 requests for 50 distinct `command`-platform services (they
    stay pending: production needs an approval), the same 50 again (all refused: that version is
    already requested), and 50 for staging (approvals = 0, so 50 pipelines start while the burst is answered).
    Target: every one acked, p99 under 300 ms (over all rounds). The first two are the issue's
    scenario and decide the exit code; the third is a harsher extra that is only reported.
(b) Bot overhead of a deploy = the pipeline's total time minus the time spent waiting on the
    platform: every platform call (start, health probes, shift, status, migrate) is timed by a
    wrapper installed through rt.extras["platform_factory"], the pauses between health polls by a
    wrapped Deployer.sleep, and the smoke command by a wrapped Pipeline.smoke. Measured with an
    in-memory platform (tests/fake_platform.py), the `command` platform (shell hooks), and the
    `local` platform (real demo app processes + HAProxy). Target: under 1 s.
(c) Local deploys under 20 concurrent keep-alive clients (in their own process): 0 failed requests;
    traffic flip (the shift call; HAProxy's runtime-API exchange; the step's "router flip") < 5 ms.

(b) and (c) run recess in-process (tests/harness.py: real HTTP, real uvicorn), because the
wrapper must sit inside the bot.

    .venv/bin/python benchmarks/bench_deploy.py [--rounds 5] [--deploys 5] [--clients 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    SECRET,
    Db,
    RecessProcess,
    burst,
    free_port,
    machine,
    spread,
    summary,
)
from tests.harness import BASE_CONFIG  # noqa: E402
from tests.kit.load import Load  # noqa: E402
from tests.kit.signer import SlackSender  # noqa: E402
from tests.kit.slack import FakeSlack, FakeSlackProcess  # noqa: E402

TARGET_ACK_P99 = 0.300
TARGET_OVERHEAD = 1.0
TARGET_FLIP = 0.005

STATUS_JSON = json.dumps({"weights": {"blue": 100, "green": 0}, "versions": {"blue": "v0", "green": "v1"}})
# A `command` service whose hooks all succeed at once. `status` always shows v0 serving in blue and
# v1 kept in green, so the pipeline (blue = blue, green = green) runs every step for real.
COMMAND_TABLE = f"""
start = "true"
stop = "true"
shift = "true"
migrate = "true"
status = {json.dumps("echo '" + STATUS_JSON + "'")}
"""

# The scenario tests' configuration: two tenants, production (1 approval) and staging (none).
BASE = BASE_CONFIG


# -- (a) a burst of /deploy commands against `recess serve` -----------------------------------------


def part_a(tmp: Path, rounds: int, n: int) -> bool:
    print(f"\n(a) {rounds} rounds x 3 bursts of {n} concurrent signed /deploy commands against `recess serve` (subprocess)")
    services = "".join(
        f"\n[services.svc{i:03d}]\nplatform = \"command\"\nhealth_path = \"/health\"\n"
        f"[services.svc{i:03d}.command]{COMMAND_TABLE}"
        for i in range(rounds * n)
    )
    cfg = tmp / "a" / "recess.toml"
    cfg.parent.mkdir()
    cfg.write_text(textwrap.dedent(BASE) + services)
    db = Db(cfg.parent / "recess.db")
    results: dict[str, list[dict[str, Any]]] = {"pending": [], "refused": [], "starts": []}
    with FakeSlackProcess() as slack:
        server = RecessProcess(cfg, slack, tmp / "a" / "serve.log")
        try:
            boot = server.wait_ready()
            print(f"  config: {rounds * n} command-platform services; recess serve ready {boot:.2f} s after spawn")
            sender = SlackSender(server.url, SECRET, response_url=slack.response_url())
            sender.command("/deploy", "history")  # warm-up, not counted
            for r in range(rounds):
                names = [f"svc{r * n + i:03d}" for i in range(n)]
                for kind, text, expect in (
                    ("pending", "{s} v2 production", "requested"),
                    ("refused", "{s} v2 production", "already requested"),
                    ("starts", "{s} v2 staging", "requested"),
                ):
                    bodies = [sender.command_body("/deploy", text.format(s=s)) for s in names]
                    res = burst(server.url, bodies, sender)
                    texts = [json.loads(b).get("text", "") if b else "" for b in res.bodies]
                    as_expected = sum(1 for t in texts if expect in t)
                    s = summary([x for x in res.latencies if x == x])
                    results[kind].append({"acked": res.acked, "expected": as_expected, "n": n, "raw": res.latencies, **s})
                    print(f"  round {r + 1} {kind:8s}: acked {res.acked}/{n}, answered as expected ({expect!r}) {as_expected}/{n}, "
                          f"p50 {s['p50'] * 1000:6.1f} ms  p99 {s['p99'] * 1000:6.1f} ms  max {s['max'] * 1000:6.1f} ms"
                          + (f"  errors: {res.errors[:2]}" if res.errors else ""))
                    if kind == "refused":
                        time.sleep(0.2)
                # The staging pipelines of this round finish before the next round starts.
                t = time.monotonic()
                marks = ", ".join("?" for _ in names)
                db.wait(lambda names=names, marks=marks: db.row(
                    f"SELECT count(*) AS n FROM deploys WHERE env = 'staging' AND status IN ('succeeded', 'failed')"
                    f" AND service IN ({marks})", names)["n"] == n, 120, what="the staging pipelines")
                outcomes = db.rows("SELECT status, count(*) AS n FROM deploys WHERE env = 'staging' AND service IN "
                                   f"({marks}) GROUP BY status", names)
                steps = db.row("SELECT count(*) AS n FROM steps JOIN deploys ON deploys.id = steps.deploy_id WHERE "
                               f"deploys.env = 'staging' AND steps.status = 'succeeded' AND service IN ({marks})", names)["n"]
                print(f"    the {n} staging pipelines finished {time.monotonic() - t:.1f} s after the burst: "
                      + ", ".join(f"{o['n']} {o['status']}" for o in outcomes) + f" ({steps} steps succeeded in all)")
        finally:
            server.stop()
    ok = True
    for kind, rows in results.items():
        p99s = [x["p99"] for x in rows]
        acked = sum(x["acked"] for x in rows)
        expected = sum(x["expected"] for x in rows)
        total = sum(x["n"] for x in rows)
        pooled = summary([x for r in rows for x in r["raw"] if x == x])
        good = acked == total and expected == total and pooled["p99"] < TARGET_ACK_P99
        # The scenario is distinct services (pending) and refused duplicates; 50 deploys
        # starting at once is a harsher extra, reported but not gated.
        gated = kind != "starts"
        ok = ok and (good or not gated)
        print(f"  {kind:8s}: acked {acked}/{total}, as expected {expected}/{total}; all {total} requests: p50 "
              f"{pooled['p50'] * 1000:.1f} ms, p99 {pooled['p99'] * 1000:.1f} ms, max {pooled['max'] * 1000:.1f} ms; "
              f"per-round p99 median {statistics.median(p99s) * 1000:.1f} ms (range {min(p99s) * 1000:.1f}-{max(p99s) * 1000:.1f}) "
              f"-> {'PASS' if good else 'FAIL'} (all acked, p99 < 300 ms){'' if gated else '; reported, not gated'}")
    return ok


# -- (b)/(c) in-process recess with a timing wrapper around the platform ----------------------------


class TimedPlatform:
    """Forwards to the real platform and records (thread, operation, start, seconds) of every call."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[int, str, float, float]] = []
        self.router_call_seconds: list[float] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                took = time.perf_counter() - started
                self.calls.append((threading.get_ident(), name, started, took))
                if name == "shift" and getattr(self.inner, "last_router_call_seconds", None) is not None:
                    self.router_call_seconds.append(self.inner.last_router_call_seconds)

        return timed


class Instrumented:
    """A harness RecessServer whose deployer's pipeline, sleeps and smoke runs are timed."""

    def __init__(self, srv: Any, platform: TimedPlatform) -> None:
        from commands import pipeline

        self.srv = srv
        self.platform = platform
        self.sleeps: list[tuple[int, float, float]] = []
        self.smokes: list[tuple[int, float, float]] = []
        self.pipelines: list[tuple[int, float, float]] = []  # (deploy id, start, seconds)
        deployer = srv.rt.extras["deployer"]
        real_sleep = deployer.sleep
        real_run = deployer.run_pipeline

        def sleep(seconds: float) -> None:
            t = time.perf_counter()
            real_sleep(seconds)
            self.sleeps.append((threading.get_ident(), t, time.perf_counter() - t))

        def run_pipeline(deploy_id: int) -> None:
            t = time.perf_counter()
            try:
                real_run(deploy_id)
            finally:
                self.pipelines.append((deploy_id, t, time.perf_counter() - t))

        deployer.sleep = sleep
        deployer.run_pipeline = run_pipeline
        real_smoke = pipeline.Pipeline.smoke
        outer = self

        def smoke(self_: Any, green: str) -> str:
            t = time.perf_counter()
            try:
                return real_smoke(self_, green)
            finally:
                outer.smokes.append((threading.get_ident(), t, time.perf_counter() - t))

        pipeline.Pipeline.smoke = smoke
        self._restore = lambda: setattr(pipeline.Pipeline, "smoke", real_smoke)

    def close(self) -> None:
        self._restore()

    def deploy(self, version: str, env: str = "staging", timeout: float = 60) -> dict[str, Any]:
        """Requests the deploy over signed HTTP and waits for its pipeline; returns the timings."""
        from storage import deploys as rows

        before = len(self.pipelines)
        sent = time.perf_counter()
        resp = self.srv.command("/deploy", f"web {version} {env}")
        assert resp.status_code == 200, resp.text
        deadline = time.monotonic() + timeout
        while len(self.pipelines) == before:
            if time.monotonic() > deadline:
                raise TimeoutError(f"deploy of {version} did not finish: {resp.text}")
            time.sleep(0.005)
        deploy_id, start, total = self.pipelines[-1]
        end = start + total
        row = rows.get(self.srv.rt.store, deploy_id)

        def inside(entries: list[tuple]) -> float:
            return sum(e[-1] for e in entries if start <= e[-2] < end)

        platform_calls = [c for c in self.platform.calls if start <= c[2] < end]
        by_op: dict[str, float] = {}
        for _, op, _, took in platform_calls:
            by_op[op] = by_op.get(op, 0.0) + took
        platform_time = sum(by_op.values())
        sleep_time = inside(self.sleeps)
        smoke_time = inside(self.smokes)
        steps = rows.steps(self.srv.rt.store, deploy_id)
        shift_step = next((s for s in steps if s["name"] == "shift"), None)
        shift_calls = [c[3] for c in platform_calls if c[1] == "shift"]
        return {
            "id": deploy_id, "version": version, "status": row["status"], "outcome": row["outcome"],
            "total": total, "request_to_live": end - sent, "platform": platform_time, "sleep": sleep_time,
            "smoke": smoke_time, "overhead": total - platform_time - sleep_time - smoke_time, "by_op": by_op,
            "calls": len(platform_calls),
            "steps": {s["name"]: (s["finished_at"] - s["started_at"]).total_seconds() for s in steps if s["finished_at"]},
            "shift_call": shift_calls[-1] if shift_calls else None,
            "shift_detail": shift_step["detail"] if shift_step else "",
        }


def local_table(listen: int, blue: int, green: int) -> str:
    smoke = (f"{sys.executable} -c \"import os, urllib.request; "
             f"urllib.request.urlopen(os.environ['RECESS_BASE_URL'] + '/api/v1/health', timeout=5)\"")
    return f"""
[services.web]
platform = "local"
environments = ["staging"]
health_path = "/api/v1/health"
health_timeout = "15s"
smoke = {json.dumps(smoke)}

[services.web.local]
listen = "127.0.0.1:{listen}"
slots = {{ blue = "127.0.0.1:{blue}", green = "127.0.0.1:{green}" }}
run = "{sys.executable} -m demo.app --port {{port}} --version {{version}}"
migrate = "true"
"""


def print_deploys(label: str, results: list[dict[str, Any]]) -> None:
    print(f"  {label}: {len(results)} deploys, statuses {sorted({r['status'] for r in results})}")
    for r in results:
        ops = ", ".join(f"{op} {t * 1000:.0f}" for op, t in sorted(r["by_op"].items(), key=lambda kv: -kv[1]))
        print(f"    #{r['id']} {r['version']:>4}: pipeline {r['total'] * 1000:7.1f} ms = platform {r['platform'] * 1000:7.1f} "
              f"({r['calls']} calls: {ops}) + health-poll pauses {r['sleep'] * 1000:5.0f} + smoke {r['smoke'] * 1000:5.1f} "
              f"+ bot {r['overhead'] * 1000:5.1f} ms")
    steps: dict[str, list[float]] = {}
    for r in results:
        for name, took in r["steps"].items():
            steps.setdefault(name, []).append(took)
    print("    steps (steps table, finished - started), median ms: "
          + ", ".join(f"{k} {statistics.median(v) * 1000:.1f}" for k, v in steps.items()))
    print(f"    bot overhead {spread([r['overhead'] for r in results])}; pipeline total {spread([r['total'] for r in results])}; "
          f"request-to-live {spread([r['request_to_live'] for r in results])}")


def part_bc(tmp: Path, deploys: int, clients: int) -> bool:
    from bot.runtime import system_clock
    from commands.config import load_config
    from platforms import make_platform
    from tests.fake_platform import FakePlatform
    from tests.harness import RecessServer, write_config

    ok = True
    print(f"\n(b) bot overhead of a deploy ({deploys} deploys per platform; in-process recess, timing wrapper around the platform)")
    overheads: dict[str, list[float]] = {}
    slack = FakeSlack()
    try:
        # -- in-memory platform ---------------------------------------------------------------
        folder = tmp / "fake"
        folder.mkdir()
        cfg = load_config(write_config(folder, "\n[services.web]\nplatform = \"command\"\nhealth_path = \"/health\"\n"
                                                "[services.web.command]" + COMMAND_TABLE, base=BASE))
        fake = TimedPlatform(FakePlatform(live="v1"))
        srv = RecessServer(cfg, slack, system_clock, platform_factory=lambda c, s, e: fake)
        inst = Instrumented(srv, fake)
        try:
            results = [inst.deploy(f"v{i + 2}") for i in range(deploys)]
        finally:
            inst.close()
            srv.stop()
        print_deploys("in-memory platform (tests/fake_platform.py)", results)
        overheads["fake"] = [r["overhead"] for r in results]

        # -- command platform -----------------------------------------------------------------
        folder = tmp / "command"
        folder.mkdir()
        cfg = load_config(write_config(folder, "\n[services.web]\nplatform = \"command\"\nhealth_path = \"/health\"\n"
                                                "[services.web.command]" + COMMAND_TABLE, base=BASE))
        holder: dict[str, TimedPlatform] = {}

        def command_factory(c: Any, s: str, e: str) -> TimedPlatform:
            holder["p"] = TimedPlatform(make_platform(c, s, e))
            return holder["p"]

        srv = RecessServer(cfg, slack, system_clock, platform_factory=command_factory)
        srv.rt.extras["deployer"].platform_for("web", "staging")  # build it now, so the wrapper exists
        inst = Instrumented(srv, holder["p"])
        try:
            results = [inst.deploy(f"v{i + 2}") for i in range(deploys)]
        finally:
            inst.close()
            srv.stop()
        print_deploys("command platform (shell hooks: true / echo JSON)", results)
        overheads["command"] = [r["overhead"] for r in results]

        # -- local platform: demo app + HAProxy ----------------------------------------------
        folder = tmp / "local"
        folder.mkdir()
        ports = [free_port() for _ in range(3)]
        cfg = load_config(write_config(folder, local_table(*ports), base=BASE))
        listen = f"127.0.0.1:{ports[0]}"
        srv = RecessServer(cfg, slack, system_clock, platform_factory=command_factory)
        srv.rt.extras["deployer"].platform_for("web", "staging")
        inst = Instrumented(srv, holder["p"])
        try:
            first = inst.deploy("v1")  # into the empty service: starts HAProxy too
            idle = [inst.deploy(f"v{i + 2}") for i in range(deploys)]
            print_deploys("local platform, idle (demo app processes + HAProxy; smoke = python urllib GET)", idle)
            print(f"    (first deploy into the empty service, which also starts HAProxy: pipeline {first['total'] * 1000:.0f} ms, "
                  f"bot {first['overhead'] * 1000:.1f} ms)")
            overheads["local"] = [r["overhead"] for r in idle]

            print(f"\n(c) {deploys} local deploys under {clients} concurrent keep-alive clients (GET /version through HAProxy)")
            load = Load(listen, clients, process=True, record=True).start()
            try:
                time.sleep(1.0)
                loaded = []
                for i in range(deploys):
                    loaded.append(inst.deploy(f"v{deploys + 2 + i}"))
                    time.sleep(0.5)
                time.sleep(0.5)
            finally:
                result = load.stop()
            elapsed = load.stopped_at - load.started_at
            print_deploys("local platform under load", loaded)
            overheads["local, under load"] = [r["overhead"] for r in loaded]
            flips = [r["shift_call"] for r in loaded]
            router = holder["p"].router_call_seconds[-deploys:]
            details = [r["shift_detail"] for r in loaded]
            failed = len(result.failures)
            print(f"  requests: {result.total} in {elapsed:.1f} s ({result.total / elapsed:.0f}/s), failed {failed}; "
                  f"answers by version: {dict(sorted(result.by_version.items()))}")
            for at, what in result.failures[:5]:
                print(f"    failure at {at:.3f}: {what}")
            lat = summary(result.latencies)
            print(f"  request latency: p50 {lat['p50'] * 1000:.2f} ms, p99 {lat['p99'] * 1000:.2f} ms, max {lat['max'] * 1000:.1f} ms")
            print(f"  flip, whole shift() call (runtime API + verify + persist): {spread(flips, 2)}")
            print(f"  flip, HAProxy runtime-API exchange alone: {spread(router, 2)}")
            print(f"  shift step details: {details}")
            # Traffic moves during the runtime-API exchange; the rest of shift() reads the weights
            # before, verifies them after and persists them. Both are reported; the exchange is gated.
            good_c = failed == 0 and statistics.median(router) < TARGET_FLIP
            whole = "under" if statistics.median(flips) < TARGET_FLIP else "over"
            print(f"  -> {'PASS' if good_c else 'FAIL'} (target: 0 failed requests, flip < 5 ms: runtime-API exchange median "
                  f"{statistics.median(router) * 1000:.2f} ms, max {max(router) * 1000:.2f} ms; the whole shift() call is "
                  f"{whole} 5 ms at the median, max {max(flips) * 1000:.2f} ms)")
            ok = ok and good_c
        finally:
            inst.close()
            srv.stop()
            make_platform(cfg, "web", "staging").shutdown()
    finally:
        slack.close()

    print("\n(b) summary: bot overhead per deploy = pipeline time - platform calls - health-poll pauses - smoke")
    for label, values in overheads.items():
        good = statistics.median(values) < TARGET_OVERHEAD and max(values) < TARGET_OVERHEAD
        ok = ok and good
        print(f"  {label:18s}: {spread(values)} -> {'PASS' if good else 'FAIL'} (target < 1 s)")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds of (a)")
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--deploys", type=int, default=5, help="deploys per platform in (b) and under load in (c)")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--only", choices=("a", "bc"), help="run one part")
    args = ap.parse_args()
    print(machine())
    os.environ.setdefault("RECESS_LOG_LEVEL", "WARNING")
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        if args.only in (None, "a"):
            ok = part_a(Path(tmp), args.rounds, args.concurrency) and ok
        if args.only in (None, "bc"):
            ok = part_bc(Path(tmp), args.deploys, args.clients) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
