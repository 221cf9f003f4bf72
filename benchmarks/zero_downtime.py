"""Zero-downtime proof (issue 4): deploy-and-rollback cycles and a crash-recovery matrix under load.

One HAProxy and the demo app (platform `local`) serve a public address. A separate process runs
N keep-alive clients (default 20) that ask GET /version in a loop for the whole run and record
every request. Meanwhile:

1. Cycles. `recess serve` runs as a subprocess (fake Slack in another). K times (default 10):
   a signed `/deploy web vX`, an approval click on the card, the blue-green pipeline, then a
   click on the card's "Roll back" button. Reported: requests and failures, latency during
   switches (requests started within ±250 ms of a flip) and outside them, the traffic-flip time
   (the bot's own measure of its router call, from the shift step and the rollback audit), and
   click-to-100%-previous-version: from sending the click until a probe client polling the public
   address sees only the previous version (also: the last answer the load clients got from the
   rolled-back version).
2. Crash matrix. For each step, `recess serve` runs with RECESS_CRASH_AT=<step> (it SIGKILLs
   itself there) and a config where the environment needs no approval and ignores windows, a
   deploy is requested, the process dies, and `recess serve` is started again on the same
   config and database without the crash point. Measured: the time from that restart until
   traffic is consistent again (weights 100/0, the serving slot healthy and answering at the
   public address with the version the store says is live, and the deploy row in a final state),
   and what recovery decided. The load keeps running through all of it.

    .venv/bin/python benchmarks/zero_downtime.py [--clients 20] [--cycles 10] [--min-requests 50000]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from benchmarks.common import (  # noqa: E402
    APPROVER,
    ENGINEER,
    LA,
    LINCOLN,
    SECRET,
    Db,
    RecessProcess,
    base_config,
    free_port,
    get_text,
    iso_to_epoch,
    machine,
    spread,
    summary,
)
from tests.kit.load import Load  # noqa: E402
from tests.kit.signer import SlackSender  # noqa: E402
from tests.kit.slack import FakeSlackProcess  # noqa: E402

CRASH_STEPS = ("start_green", "migrate", "health", "smoke", "shift", "shift:after", "bake")
FINAL = ("succeeded", "failed", "rolled_back", "cancelled", "rejected")
TARGET_FLIP = 0.005
TARGET_CLICK = 1.0
SWITCH_WINDOW = 0.250

SERVICE = """
[services.web]
platform = "local"
health_path = "/api/v1/health"
health_timeout = "20s"
smoke = {smoke}

[services.web.local]
listen = "127.0.0.1:{listen}"
slots = {{ blue = "127.0.0.1:{blue}", green = "127.0.0.1:{green}" }}
run = "{python} -m demo.app --port {{port}} --version {{version}}"
migrate = "true"
"""


def config(approvals: int, **service: object) -> str:
    return (base_config(LINCOLN, LA, approvals=approvals, respect_windows=False, keep_blue="30m", bake_time="1s",
                        canary_pause="0s") + textwrap.dedent(SERVICE).format(**service))


def write_configs(folder: Path) -> tuple[Path, Path, str]:
    ports = [free_port() for _ in range(3)]
    smoke = json.dumps(f"{sys.executable} -c \"import os, urllib.request; "
                       f"urllib.request.urlopen(os.environ['RECESS_BASE_URL'] + '/api/v1/health', timeout=5)\"")
    common = {"listen": ports[0], "blue": ports[1], "green": ports[2], "python": sys.executable, "smoke": smoke}
    cycles = folder / "recess.toml"
    cycles.write_text(config(approvals=1, **common))
    # Same folder, so the same database and state directory: only the approvals differ.
    crash = folder / "recess-crash.toml"
    crash.write_text(config(approvals=0, **common))
    return cycles, crash, f"127.0.0.1:{ports[0]}"


class Bot:
    """Signed requests to one running `recess serve`, and waits on its database."""

    def __init__(self, server: RecessProcess, slack: FakeSlackProcess, db: Db) -> None:
        self.server, self.db = server, db
        self.sender = SlackSender(server.url, SECRET, response_url=slack.response_url())

    def deploy(self, version: str) -> int:
        try:
            resp = self.sender.command("/deploy", f"web {version}", user=ENGINEER)
        except httpx.RemoteProtocolError:
            # A bot told to crash at start_green can die before its ack leaves (approvals = 0
            # starts the pipeline within the answer budget): the stored request is the answer.
            row = self.db.wait(lambda: self.db.row("SELECT id FROM deploys WHERE version = ?", (version,)), 10,
                               what=f"the request for {version}")
            return int(row["id"])
        status, body = resp.status_code, resp.content
        text = json.loads(body).get("text", "") if body else ""
        if status == 200 and "Working on it" in text:
            # Acked before the answer was ready (a busy machine): the answer follows through
            # respond(); the stored request is what counts here.
            row = self.db.wait(lambda: self.db.row("SELECT id FROM deploys WHERE version = ?", (version,)), 30,
                               what=f"the request for {version}")
            return int(row["id"])
        found = re.search(r"Deploy #(\d+)", text)
        if status != 200 or not found:
            raise RuntimeError(f"/deploy web {version} answered {status}: {text or body!r}")
        return int(found.group(1))

    def card_ts(self, deploy_id: int, timeout: float = 20) -> str:
        return self.db.wait(lambda: (self.db.deploy(deploy_id) or {}).get("card_ts"), timeout, what=f"deploy #{deploy_id}'s card")

    def click(self, action: str, deploy_id: int, user: str) -> float:
        """Sends the click; returns the wall-clock instant just before it was sent."""
        ts = self.card_ts(deploy_id)
        d = self.db.deploy(deploy_id) or {}
        value = f"{deploy_id}:{d['click_token']}" if d.get("click_token") else str(deploy_id)  # as the card carries it
        body = self.sender.action_body(action, value, user=user, message_ts=ts)
        sent = time.time()
        resp = self.sender.send(body)
        if resp.status_code != 200:
            raise RuntimeError(f"click {action} on #{deploy_id} answered {resp.status_code}: {resp.content!r}")
        return sent


def wait_load(load: Load, at_least: int, min_seconds: float, timeout: float = 120) -> None:
    started = time.monotonic()
    while time.monotonic() - started < min_seconds or load.count() < at_least:
        if time.monotonic() - started > timeout:
            return
        time.sleep(0.05)


# -- 1. deploy-and-rollback cycles --------------------------------------------------------------------


def run_cycles(cfg_path: Path, slack: FakeSlackProcess, db: Db, listen: str, load: Load, cycles: int, per_cycle: int,
               tmp: Path) -> dict[str, Any]:
    server = RecessProcess(cfg_path, slack, tmp / "serve-cycles.log")
    out: dict[str, Any] = {"cycles": [], "flips": []}
    try:
        server.wait_ready()
        bot = Bot(server, slack, db)
        base = load.count()
        for k in range(1, cycles + 1):
            version = f"v2.{k}"
            previous = get_text(listen)
            deploy_id = bot.deploy(version)
            bot.click("deploy_approve", deploy_id, APPROVER)
            row = db.wait_status(deploy_id, FINAL, timeout=90)
            if row["status"] != "succeeded":
                raise RuntimeError(f"deploy #{deploy_id} of {version} ended {row['status']}: {row['outcome']}")
            shift = next((s for s in db.steps(deploy_id) if s["name"] == "shift"), {})
            m = re.search(r"router flip ([\d.]+) ms", shift.get("detail", ""))
            deploy_flip = float(m.group(1)) / 1000 if m else float("nan")
            out["flips"].append(iso_to_epoch(row["traffic_at"]))
            time.sleep(1.0)  # a second of traffic on the new version

            probe = Load(listen, clients=1, record=True).start()  # one client, as fast as it can
            time.sleep(0.1)
            clicked = bot.click("rollback_card", deploy_id, ENGINEER)
            deadline = time.monotonic() + 10
            settled = None
            while time.monotonic() < deadline:
                settled = probe.tally().settled_on(previous, clicked)
                if settled is not None and time.time() - settled > 0.3:
                    break
                time.sleep(0.01)
            probe.stop()
            rb = db.wait(lambda deploy_id=deploy_id: db.row(
                "SELECT * FROM deploys WHERE kind = 'rollback' AND rollback_of = ? AND status IN ('succeeded', 'failed')",
                (deploy_id,)), 30, what=f"the rollback of #{deploy_id}")
            audit = db.row("SELECT after FROM audit WHERE action = 'rollback.done' AND target = ? ORDER BY id DESC LIMIT 1",
                           (f"deploy:{deploy_id}",))
            after = json.loads(audit["after"]) if audit and audit["after"] else {}
            out["flips"].append(iso_to_epoch(rb["traffic_at"]))
            out["cycles"].append({
                "k": k, "version": version, "previous": previous, "deploy_id": deploy_id, "rollback_status": rb["status"],
                "deploy_flip": deploy_flip, "rollback_flip": (after.get("flip_ms") or float("nan")) / 1000,
                "bot_click_to_traffic": after.get("click_to_traffic_s"), "clicked": clicked,
                "probe_click_to_previous": (settled - clicked) if settled else None,
                "rollback_traffic_at": iso_to_epoch(rb["traffic_at"]), "outcome": rb["outcome"],
            })
            c = out["cycles"][-1]
            probe_txt = f"{c['probe_click_to_previous'] * 1000:.0f} ms" if c["probe_click_to_previous"] is not None else "never"
            print(f"  cycle {k:2d}: deploy #{deploy_id} {previous} -> {version} (flip {deploy_flip * 1000:.1f} ms); "
                  f"rollback -> {previous}: flip {c['rollback_flip'] * 1000:.2f} ms, probe saw only {previous} {probe_txt} after "
                  f"the click (bot: {c['bot_click_to_traffic']} s); requests so far {load.count() - base:,}")
            wait_load(load, base + k * per_cycle, 1.0)
    finally:
        server.stop()
    out["router_calls"] = router_calls(server.log())
    return out


ROUTER_LINE = re.compile(r"web/production: weights (blue=\d+,green=\d+) \(([\d.]+) ms\)")


def router_calls(log: str) -> list[float]:
    """The HAProxy runtime-API exchanges the bot logged (platforms/local.py: "weights ... (X ms)"):
    the moment traffic actually moves, without shift()'s read-before, verify-after and persist."""
    return [float(m.group(2)) / 1000 for m in ROUTER_LINE.finditer(log)]


# -- 2. the crash-recovery matrix ---------------------------------------------------------------------


def traffic_state(cfg: Any) -> dict[str, Any]:
    from platforms import make_platform

    p = make_platform(cfg, "web", "production")
    t = p.status()
    return {"weights": t.weights, "versions": {s: t.slot(s).version for s in ("blue", "green")},
            "running": {s: t.slot(s).running for s in ("blue", "green")}, "platform": p}


def consistent(cfg: Any, db: Db, deploy_id: int, listen: str) -> dict[str, Any] | None:
    row = db.deploy(deploy_id)
    if not row or row["status"] not in FINAL:
        return None
    st = traffic_state(cfg)
    w = st["weights"]
    serving = [s for s, v in w.items() if v > 0]
    if len(serving) != 1 or w[serving[0]] != 100:
        return None
    slot = serving[0]
    if not st["running"][slot] or not st["platform"].health(slot).ok:
        return None
    live = db.row("SELECT version FROM deploys WHERE status = 'succeeded' AND traffic_at IS NOT NULL "
                  "ORDER BY traffic_at DESC, id DESC LIMIT 1")
    answer = get_text(listen)
    if not live or answer != live["version"] or answer != st["versions"][slot]:
        return None
    other = "green" if slot == "blue" else "blue"
    return {"row": row, "slot": slot, "version": answer, "other": st["versions"][other] if st["running"][other] else None}


def run_crash_matrix(crash_cfg_path: Path, slack: FakeSlackProcess, db: Db, listen: str, tmp: Path) -> list[dict[str, Any]]:
    from commands.config import load_config

    cfg = load_config(crash_cfg_path)
    matrix = []
    for step in CRASH_STEPS:
        version = "v3-" + step.replace(":", "-")
        before = get_text(listen)
        log = tmp / f"serve-crash-{step.replace(':', '-')}.log"
        doomed = RecessProcess(crash_cfg_path, slack, log, crash_at=step)
        doomed.wait_ready()
        deploy_id = Bot(doomed, slack, db).deploy(version)
        code = doomed.wait_exit(timeout=90)
        doomed.stop()
        died = time.monotonic()
        after_crash = traffic_state(cfg)
        row_at_crash = db.deploy(deploy_id)
        pending_at_crash = db.outbox_pending()

        restart_log = tmp / f"serve-restart-{step.replace(':', '-')}.log"
        again = RecessProcess(crash_cfg_path, slack, restart_log)
        try:
            ready = again.wait_ready()
            state = db.wait(lambda deploy_id=deploy_id: consistent(cfg, db, deploy_id, listen), 60, interval=0.01,
                            what=f"consistent traffic after the crash at {step}")
            to_consistent = time.monotonic() - again.spawned
            db.wait(lambda: db.outbox_pending() == 0, 60, interval=0.05, what="the outbox to drain")
            to_outbox = time.monotonic() - again.spawned
            recovered = re.search(rf"recovered deploy {deploy_id} in ([\d.]+) s: (.*)", again.log())
            recovery_flips = router_calls(again.log())
        finally:
            again.stop()
        row = state["row"]
        entry = {
            "step": step, "version": version, "before": before, "deploy_id": deploy_id, "exit": code,
            "down_for": again.spawned - died, "status_at_crash": row_at_crash["status"] if row_at_crash else None,
            "weights_at_crash": after_crash["weights"], "versions_at_crash": after_crash["versions"],
            "pending_at_crash": pending_at_crash, "ready": ready, "to_consistent": to_consistent, "to_outbox": to_outbox,
            "recovery_seconds": float(recovered.group(1)) if recovered else None,
            "recovery_did": recovered.group(2).strip() if recovered else "(no recovery line in the log)",
            "status": row["status"], "outcome": row["outcome"], "serving": state["version"], "slot": state["slot"],
            "other": state["other"], "recovery_flips": recovery_flips,
        }
        matrix.append(entry)
        w = ", ".join(f"{s} {v}" for s, v in entry["weights_at_crash"].items())
        print(f"  {step:12s}: exit {code} (SIGKILL={code == -9}); at the crash: deploy {entry['status_at_crash']}, weights {w}, "
              f"slots {entry['versions_at_crash']}, {pending_at_crash} Slack messages queued")
        print(f"  {'':12s}  restart: /healthz after {ready:.2f} s, consistent after {to_consistent:.2f} s "
              f"(recovery itself {entry['recovery_seconds']} s: {entry['recovery_did']}); outbox drained after {to_outbox:.2f} s")
        print(f"  {'':12s}  final: deploy #{deploy_id} {row['status']} ({row['outcome']}); serving {state['version']} "
              f"from slot {state['slot']}; other slot: {state['other'] or 'stopped'}")
    return matrix


# -- report ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--cycles", type=int, default=10)
    ap.add_argument("--min-requests", type=int, default=50000, help="requests the load must reach during the cycles")
    ap.add_argument("--no-crash", action="store_true", help="skip the crash-recovery matrix")
    ap.add_argument("--keep", action="store_true", help="keep the working folder (configs, database, every log)")
    args = ap.parse_args()
    print(machine())
    print(f"workload: {args.clients} keep-alive clients on the public address; {args.cycles} deploy+rollback cycles through "
          f"`recess serve`'s HTTP endpoint; then the crash matrix over {', '.join(CRASH_STEPS)}")

    from commands.config import load_config
    from platforms import make_platform

    ok = True
    with tempfile.TemporaryDirectory(prefix="zero-downtime-") as tmpdir:
        tmp = Path(tempfile.mkdtemp(prefix="zero-downtime-kept-")) if args.keep else Path(tmpdir)
        if args.keep:
            print(f"working folder (kept): {tmp}")
        cycles_cfg, crash_cfg, listen = write_configs(tmp)
        db = Db(tmp / "recess.db")
        cfg = load_config(cycles_cfg)
        slack = FakeSlackProcess()
        load = None
        try:
            # v1 goes live before the clients start (nothing serves before the first deploy).
            first = RecessProcess(cycles_cfg, slack, tmp / "serve-first.log")
            try:
                first.wait_ready()
                bot = Bot(first, slack, db)
                d1 = bot.deploy("v1")
                bot.click("deploy_approve", d1, APPROVER)
                row = db.wait_status(d1, FINAL, timeout=90)
                assert row["status"] == "succeeded", row
            finally:
                first.stop()  # the bot stops; v1 keeps serving
            load = Load(listen, args.clients, process=True, record=True).start()
            time.sleep(1.0)
            print(f"\n1. {args.cycles} deploy + rollback cycles ({args.clients} clients running)")
            c_start = time.time()
            cyc = run_cycles(cycles_cfg, slack, db, listen, load, args.cycles, -(-args.min_requests // args.cycles), tmp)
            c_end = time.time()
            crash: list[dict[str, Any]] = []
            if not args.no_crash:
                print("\n2. crash-recovery matrix (the same clients keep running)")
                crash = run_crash_matrix(crash_cfg, slack, db, listen, tmp)
            x_end = time.time()
            time.sleep(0.5)
            result = load.stop()
        finally:
            if load is not None:
                load.stop()  # once: a second call returns the same result
            make_platform(cfg, "web", "production").shutdown()
            slack.close()

    # -- numbers ----------------------------------------------------------------------------------
    starts, latencies = result.starts, result.latencies
    in_cycles = [i for i, s in enumerate(starts) if c_start <= s < c_end]
    in_crash = [i for i, s in enumerate(starts) if c_end <= s < x_end]
    failures = result.failures
    fail_cycles = [f for f in failures if c_start <= f[0] < c_end]
    fail_crash = [f for f in failures if c_end <= f[0] < x_end]
    print(f"\nload: {result.total:,} requests in {load.stopped_at - load.started_at:.1f} s, failed {len(failures)}; "
          f"during the cycles {len(in_cycles):,} (failed {len(fail_cycles)}), during the crash matrix {len(in_crash):,} "
          f"(failed {len(fail_crash)}); answers by version: {dict(sorted(result.by_version.items()))}")
    for at, what in failures[:10]:
        print(f"  failure at {at:.3f}: {what}")

    flips = [f for f in cyc["flips"] if f]
    near, far = [], []
    import bisect

    for i in in_cycles:
        s, lat = starts[i], latencies[i]
        j = bisect.bisect_left(flips, s)
        close = any(abs(s - flips[m]) <= SWITCH_WINDOW for m in (j - 1, j) if 0 <= m < len(flips))
        (near if close else far).append(lat)
    crash_lat = [latencies[i] for i in in_crash]
    for label, values in (("within ±250 ms of a flip", near), ("outside the switches", far), ("during the crash matrix", crash_lat)):
        s = summary(values)
        if s["n"]:
            print(f"latency {label:26s}: n {s['n']:>7,}  p50 {s['p50'] * 1000:6.2f} ms  p99 {s['p99'] * 1000:7.2f} ms  "
                  f"max {s['max'] * 1000:7.1f} ms")

    dflips = [c["deploy_flip"] for c in cyc["cycles"]]
    rflips = [c["rollback_flip"] for c in cyc["cycles"]]
    probe = [c["probe_click_to_previous"] for c in cyc["cycles"] if c["probe_click_to_previous"] is not None]
    botc = [c["bot_click_to_traffic"] for c in cyc["cycles"] if c["bot_click_to_traffic"] is not None]
    last_old = []
    for c in cyc["cycles"]:
        end = result.last_answer_of(c["version"], c["clicked"] - 5, c["clicked"] + 5)
        if end is not None:
            last_old.append(max(0.0, end - c["clicked"]))
    router = cyc["router_calls"]
    print(f"traffic flip, HAProxy runtime-API exchange (bot log, {len(router)} flips): {spread(router, 2)}")
    print(f"traffic flip, deploys (shift step detail: whole shift() call): {spread(dflips, 2)}")
    print(f"traffic flip, rollbacks (audit flip_ms: whole shift() call): {spread(rflips, 2)}")
    rec_flips = [x for e in crash for x in e["recovery_flips"]]
    if rec_flips:
        print(f"traffic flip by recovery after a crash (runtime-API exchange): {spread(rec_flips, 2)}")
    print(f"click -> probe sees only the previous version: {spread(probe, 0)}")
    print(f"click -> last answer any client got from the rolled-back version: {spread(last_old, 0)}")
    print(f"click (at the listener) -> flip done, as the bot measured it: {spread(botc, 0, 1000.0)}")

    total_cycles = len(in_cycles)
    all_flips = dflips + rflips
    whole = f"; whole shift() call median {statistics.median(all_flips) * 1000:.2f} ms, max {max(all_flips) * 1000:.2f} ms"
    checks = [
        (f"requests during the cycles >= {args.min_requests:,}", total_cycles >= args.min_requests, f"{total_cycles:,}"),
        ("0 failed requests (whole run)", not failures, str(len(failures))),
        ("traffic flip < 5 ms (runtime-API exchange, median of the cycles' flips)",
         bool(router) and statistics.median(router) < TARGET_FLIP,
         (f"median {statistics.median(router) * 1000:.2f} ms, max {max(router) * 1000:.2f} ms" if router else "not logged") + whole),
        ("click -> 100% previous < 1 s (every cycle)", len(probe) == len(cyc["cycles"]) and max(probe) < TARGET_CLICK,
         f"max {max(probe) * 1000:.0f} ms" if probe else "never"),
    ]
    if crash:
        checks.append(("crash matrix: every step consistent again, one healthy slot",
                       all(e["status"] in FINAL for e in crash), ", ".join(f"{e['step']}={e['status']}" for e in crash)))
        print("\ncrash-recovery matrix:")
        print(f"  {'step killed':12s} | {'exit':>4s} | {'restart->consistent':>19s} | {'recovery':>8s} | deploy status | serving      | recovery did")
        for e in crash:
            rec = f"{e['recovery_seconds']:.3f} s" if e["recovery_seconds"] is not None else "-"
            print(f"  {e['step']:12s} | {e['exit']!s:>4s} | {e['to_consistent']:17.2f} s | {rec:>8s} | {e['status']:13s} | "
                  f"{e['serving']:12s} | {e['recovery_did']}")
        print(f"  restart -> consistent: {spread([e['to_consistent'] for e in crash], 2, 1.0, ' s')}; "
              f"of which recovery itself {spread([e['recovery_seconds'] for e in crash if e['recovery_seconds'] is not None], 3, 1.0, ' s')}")
    print()
    for name, good, value in checks:
        ok = ok and good
        print(f"{'PASS' if good else 'FAIL'}  {name}: {value}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
