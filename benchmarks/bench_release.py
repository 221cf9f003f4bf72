"""Releases under load (issue 12): three `local` services released and rolled back as one.

Three services (core, web, ai-gateway), each with its own HAProxy and the demo app, form
`[releases.k12]`. Each public address gets N keep-alive clients (default 20) in a separate process
for the whole run, every request recorded. `recess serve` runs as a subprocess with the fake Slack
in another. K times (default 10): a signed `/deploy k12 v2.K`, an approval click on the release's
card, the release pipeline across the three members, then a click on the card's "Roll back"
button. Reported:

- requests and failed requests over all three addresses (target 0);
- the spread between the first and the last flip of each switch: from the first router command
  sent to the last router's answer (the bot's own measure, in the shift step and the rollback's
  outcome; target under 10 ms);
- click to every member on its previous version: from sending the rollback click until a probe
  client polling each public address sees only the previous version, the slowest member counted
  (target under 1 s).

    .venv/bin/python benchmarks/bench_release.py [--clients 20] [--cycles 10]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    APPROVER,
    ENGINEER,
    SECRET,
    Db,
    RecessProcess,
    base_config,
    free_port,
    get_text,
    machine,
    spread,
)
from tests.kit.load import Load  # noqa: E402
from tests.kit.signer import SlackSender  # noqa: E402
from tests.kit.slack import FakeSlackProcess  # noqa: E402

MEMBERS = ("core", "web", "ai-gateway")
FINAL = ("succeeded", "failed", "rolled_back", "cancelled", "rejected")
SPREAD = re.compile(r"first to last flip ([\d.]+) ms")
SENT = re.compile(r"every command sent within ([\d.]+) ms")
TARGET_SPREAD = 0.010
TARGET_CLICK = 1.0

BASE = base_config(respect_windows=False, keep_blue="30m", bake_time="1s") + """
[releases.k12]
services = ["core", "web", "ai-gateway"]
migrate_first = "core"
"""

SERVICE = """
[services.{name}]
platform = "local"
health_path = "/api/v1/health"
health_timeout = "20s"

[services.{name}.local]
listen = "127.0.0.1:{listen}"
slots = {{ blue = "127.0.0.1:{blue}", green = "127.0.0.1:{green}" }}
run = "{python} -m demo.app --port {{port}} --version {{version}}"
migrate = "true"
"""


class Bot:
    def __init__(self, server: RecessProcess, slack: FakeSlackProcess, db: Db) -> None:
        self.db = db
        self.sender = SlackSender(server.url, SECRET, response_url=slack.response_url())

    def release(self, words: str) -> int:
        before = self.db.last_deploy_id()
        resp = self.sender.command("/deploy", f"k12 {words}", user=ENGINEER)
        if resp.status_code != 200:
            raise RuntimeError(f"/deploy k12 {words} answered {resp.status_code}: {resp.content!r}")
        row = self.db.wait(lambda: self.db.row("SELECT id FROM deploys WHERE id > ? AND kind = 'release' ORDER BY id LIMIT 1",
                                               (before,)), 30, what=f"the request for k12 {words}")
        return int(row["id"])

    def click(self, action: str, deploy_id: int, user: str) -> float:
        ts = self.db.wait(lambda: (self.db.deploy(deploy_id) or {}).get("card_ts"), 30, what=f"#{deploy_id}'s card")
        d = self.db.deploy(deploy_id) or {}
        body = self.sender.action_body(action, f"{deploy_id}:{d['click_token']}", user=user, message_ts=ts)
        sent = time.time()
        resp = self.sender.send(body)
        if resp.status_code != 200:
            raise RuntimeError(f"click {action} on #{deploy_id} answered {resp.status_code}: {resp.content!r}")
        return sent


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20, help="keep-alive clients per service")
    parser.add_argument("--cycles", type=int, default=10)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    tmp = Path(tempfile.mkdtemp(prefix="recess-bench-release-"))
    text, listens = BASE, {}
    for name in MEMBERS:
        listen, blue, green = (free_port() for _ in range(3))
        listens[name] = f"127.0.0.1:{listen}"
        text += SERVICE.format(name=name, listen=listen, blue=blue, green=green, python=sys.executable)
    config = tmp / "recess.toml"
    config.write_text(textwrap.dedent(text))
    db = Db(tmp / "recess.db")
    slack = FakeSlackProcess()
    server = RecessProcess(config, slack, tmp / "serve.log")
    loads: list[Load] = []
    spreads, rollback_spreads, clicks, bot_clicks, sent = [], [], [], [], []
    try:
        server.wait_ready()
        bot = Bot(server, slack, db)
        first = bot.release("v1")
        bot.click("deploy_approve", first, APPROVER)
        row = db.wait_status(first, FINAL, timeout=120)
        if row["status"] != "succeeded":
            raise RuntimeError(f"the first release ended {row['status']}: {row['outcome']}")
        loads = [Load(listens[name], clients=args.clients, process=True, record=True).start() for name in MEMBERS]
        time.sleep(1.0)
        for k in range(1, args.cycles + 1):
            version = f"v2.{k}"
            previous = {name: get_text(listens[name]) for name in MEMBERS}
            parent = bot.release(version)
            bot.click("deploy_approve", parent, APPROVER)
            row = db.wait_status(parent, FINAL, timeout=120)
            if row["status"] != "succeeded":
                raise RuntimeError(f"release #{parent} of {version} ended {row['status']}: {row['outcome']}")
            shift = next((s for s in db.steps(parent) if s["name"] == "shift"), {})
            found = SPREAD.search(shift.get("detail", ""))
            spreads.append(float(found.group(1)) / 1000 if found else float("nan"))
            within = SENT.search(shift.get("detail", ""))
            sent.append(float(within.group(1)) / 1000 if within else float("nan"))
            time.sleep(1.0)  # a second of traffic on the new versions

            probes = {name: Load(listens[name], clients=1, record=True).start() for name in MEMBERS}
            time.sleep(0.1)
            clicked = bot.click("rollback_card", parent, ENGINEER)
            settled: dict[str, float | None] = dict.fromkeys(MEMBERS)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                for name, probe in probes.items():
                    settled[name] = probe.tally().settled_on(previous[name], clicked)
                if all(s is not None and time.time() - s > 0.3 for s in settled.values()):
                    break
                time.sleep(0.01)
            for probe in probes.values():
                probe.stop()
            rb = db.wait(lambda parent=parent: db.row(
                "SELECT * FROM deploys WHERE kind = 'rollback' AND rollback_of = ? AND status IN ('succeeded', 'failed')",
                (parent,)), 30, what=f"the rollback of #{parent}")
            if rb["status"] != "succeeded":
                raise RuntimeError(f"the rollback of #{parent} ended {rb['status']}: {rb['outcome']}")
            found = SPREAD.search(rb["outcome"] or "")
            rollback_spreads.append(float(found.group(1)) / 1000 if found else float("nan"))
            within = SENT.search(rb["outcome"] or "")
            sent.append(float(within.group(1)) / 1000 if within else float("nan"))
            said = re.search(r"([\d.]+) s after the click", rb["outcome"] or "")
            bot_clicks.append(float(said.group(1)) if said else float("nan"))
            slowest = max((s - clicked) if s is not None else float("inf") for s in settled.values())
            clicks.append(slowest)
            total = sum(load.count() for load in loads)
            print(f"  cycle {k:2d}: release #{parent} -> {version}: flips spread {spreads[-1] * 1000:.2f} ms; rollback: "
                  f"spread {rollback_spreads[-1] * 1000:.2f} ms, every member on its previous version "
                  f"{slowest * 1000:.0f} ms after the click (bot: {bot_clicks[-1]} s); requests so far {total:,}")
            time.sleep(0.5)
    finally:
        tallies = [load.stop() for load in loads]
        server.stop()
        slack.close()
        from commands.config import load_config
        from platforms import make_platform

        cfg = load_config(config)
        for name in MEMBERS:
            make_platform(cfg, name, "production").shutdown()
    print(f"load average at the end (1/5/15 min): {load_average()}")
    requests = sum(t.total for t in tallies)
    failed = sum(t.failed for t in tallies)
    print()
    print(f"services: {len(MEMBERS)} local (own HAProxy each), {args.clients} keep-alive clients per service, "
          f"{args.cycles} release + rollback cycles")
    print(f"requests: {requests:,}, failed: {failed} (target 0)")
    for t, name in zip(tallies, MEMBERS, strict=True):
        print(f"  {name}: {t.total:,} requests, {t.failed} failed" + (f": {t.failures[:3]}" if t.failed else ""))
    print(f"release switch, first to last flip: {spread(spreads, 2)} (target < {TARGET_SPREAD * 1000:.0f} ms)")
    print(f"rollback switch, first to last flip: {spread(rollback_spreads, 2)}")
    print(f"  of which the bot's share, first to last command sent (both kinds): {spread(sent, 3)}")
    print(f"click to every member on its previous version (slowest member, probe clients): {spread(clicks, 0)} "
          f"(target < {TARGET_CLICK:.0f} s)")
    print(f"  the bot's own click-to-traffic: {spread(bot_clicks, 3, 1.0, ' s')}")
    ok = failed == 0 and max(spreads + rollback_spreads) < TARGET_SPREAD and max(clicks) < TARGET_CLICK
    print(f"targets met: {ok}")


if __name__ == "__main__":
    main()
