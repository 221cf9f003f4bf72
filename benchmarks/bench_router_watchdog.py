"""Benchmark (issue 9): the router watchdog. How long is a school's public address down when
its HAProxy dies, with `recess serve` watching it?

v1 is deployed through a real `recess serve` (the `local` platform, a real HAProxy); then, with
keep-alive clients running, HAProxy is SIGKILLed N times. For each kill: the time until the public
address answers 200 again (the watchdog checks every 3 s, then starts HAProxy with its server-state
file), whether it came back on the same version, and the channel line recess posted. Also: the
router's downtime as recess itself reported it ("down for at most ...").

    .venv/bin/python benchmarks/bench_router_watchdog.py [--kills 5]
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import APPROVER, Db, RecessProcess, machine, spread  # noqa: E402
from benchmarks.zero_downtime import FINAL, Bot, write_configs  # noqa: E402
from tests.kit.slack import FakeSlack  # noqa: E402


def answers(listen: str) -> str | None:
    host, port = listen.rsplit(":", 1)
    try:
        conn = http.client.HTTPConnection(host, int(port), timeout=1)
        conn.request("GET", "/version")
        resp = conn.getresponse()
        body = resp.read().decode().strip()
        conn.close()
        return body if resp.status == 200 else None
    except OSError:
        return None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=5)
    args = ap.parse_args()
    print(machine())
    tmp = Path(tempfile.mkdtemp(prefix="recess-bench-watchdog-"))
    cfg_path, _, listen = write_configs(tmp)
    state = tmp / ".recess" / "web.production"
    downs: list[float] = []
    reported: list[float] = []
    same_version = 0
    with FakeSlack() as slack:
        server = RecessProcess(cfg_path, slack, tmp / "serve.log")
        try:
            server.wait_ready()
            db = Db(tmp / "recess.db")
            bot = Bot(server, slack, db)
            d1 = bot.deploy("v1")
            bot.click("deploy_approve", d1, APPROVER)
            assert db.wait_status(d1, FINAL, timeout=90)["status"] == "succeeded"
            for n in range(1, args.kills + 1):
                assert answers(listen) == "v1"
                pid = int((state / "haproxy.pid").read_text().split()[0])
                told_before = sum(1 for t in slack.texts() if "router of *web*" in t)
                killed = time.monotonic()
                os.kill(pid, signal.SIGKILL)
                while answers(listen) is None:
                    if time.monotonic() - killed > 60:
                        raise RuntimeError("the public address did not come back within 60 s")
                    time.sleep(0.01)
                down = time.monotonic() - killed
                downs.append(down)
                same_version += answers(listen) == "v1"
                line = slack.wait_for(lambda s, b=told_before: [t for t in s.texts() if "router of *web*" in t][b:])[0]
                found = re.search(r"down for at most ([\d.]+) s", line)
                if found:
                    reported.append(float(found.group(1)))
                print(f"  kill {n}: public address answered again after {down:.2f} s; recess said: {line[:160]}")
                time.sleep(1.0)
        finally:
            server.stop()
            from commands.config import load_config
            from platforms import make_platform

            make_platform(load_config(cfg_path), "web", "production").shutdown()
    print(f"\npublic address down after a SIGKILL of HAProxy: {spread(downs, 2, 1.0, ' s')}; watchdog period 3 s")
    if reported:
        print(f"recess's own 'down for at most': {spread(reported, 1, 1.0, ' s')}")
    print(f"came back on the version it served (weights from the server-state file): {same_version} / {len(downs)}")
    ok = same_version == len(downs) and max(downs) < 10
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
