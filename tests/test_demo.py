"""`make demo` tells the whole story offline: /window, a card, a refused self-approval, an approval,
the steps in the thread, a rollback, and not one failed request; and it leaves nothing running."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def demo() -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, "-m", "demo.run"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_demo_runs_the_whole_story_and_exits_zero(demo):
    assert demo.returncode == 0, demo.stdout + demo.stderr
    out = demo.stdout
    # a) /window, answered ephemerally through the signed HTTP endpoint
    assert "@dana in #eng: /window" in out
    assert "Safe to deploy now" in out
    assert "Deploys are blocked at Wed 2027-03-17 11:00 EDT" in out and "mesa-middle" in out
    # b) v1 serves through HAProxy before the story's deploy
    assert "web v1 is live in production" in out
    assert re.search(r"GET http://127\.0\.0\.1:\d+/version answers v1, through HAProxy", out)
    # c) the card, the refused self-approval, the approval, the steps in the thread
    assert "Deploy #2: web v1 → v2 (production)" in out
    assert "[Approve] [Reject] [Cancel]" in out
    assert "you requested this deploy; another approver must approve it" in out
    assert "Approved by @priya" in out
    steps = [line for line in out.splitlines() if line.startswith("      ↳ ")]
    for step in ("start_green", "health", "smoke", "shift", "bake"):
        assert any(step in line for line in steps), f"no thread reply for {step}"
    assert "card now: " in out and "Succeeded: v2 live in" in out
    # d) the rollback, confirmed, and timed at the public address
    assert "@dana in #eng: /rollback web" in out
    assert "Rolled back: traffic back on v1" in out
    assert re.search(r"v1 answered \d+ ms after the click", out)
    assert "[Undo rollback]" in out
    # e) the count per version, and no failure
    answered = dict(re.findall(r"answered by (v\d)\s+([\d,]+)", out))
    assert int(answered["v1"].replace(",", "")) > 0 and int(answered["v2"].replace(",", "")) > 0
    assert "\n  0 failed" in out
    assert "Traceback" not in demo.stderr


def test_demo_shows_the_dashboard_on_its_own_store(demo):
    out = demo.stdout
    assert "@dana in #eng: /deploy dashboard" in out
    assert "the same link a second time answers 401" in out
    assert re.search(r"/dashboard, what is live: web production v1 .* v2 until", out)
    assert re.search(r"/dashboard/deploys/2: build [^,]+, start_green [^,]+, .*bake", out)
    assert "failure rate 50.0 %" in out  # v2 moved traffic and was rolled back
    assert 'recess_live_info{env="production",service="web",version="v1"} 1.0' in out
    assert re.search(r"App Home for dana: \d+ blocks", out)


def test_demo_leaves_nothing_running_and_no_files(demo):
    out = demo.stdout
    data = re.search(r"data in (\S+)", out).group(1)
    assert not Path(data).exists()
    for port in re.findall(r"(?:portal http://127\.0\.0\.1:|slots blue :|green :)(\d+)", out):
        with socket.socket() as s:
            s.settimeout(0.5)
            assert s.connect_ex(("127.0.0.1", int(port))) != 0, f"something still listens on :{port}"
    assert "Stopped recess, HAProxy, the app processes and the Slack stand-in" in out
