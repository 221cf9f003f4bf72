"""Fault injection for releases: `recess serve` is SIGKILLed at each step of a three-service
release (and of its rollback), then restarted. Whatever the step, every member ends on one
healthy slot and all members on the same side: all new or all old, never a mix."""

from __future__ import annotations

import signal
import sys

import httpx
import pytest

from commands.config import load_config
from platforms import make_platform
from storage import deploys as rows
from storage.db import Store
from tests.harness import KILLED_BOT_BASE, card_value, free_port, write_config
from tests.kit.load import Load
from tests.kit.serve import Bot, wait_for

pytestmark = pytest.mark.e2e

MEMBERS = ("core", "web", "ai-gateway")

BASE = KILLED_BOT_BASE + """

[releases.k12]
services = ["core", "web", "ai-gateway"]
migrate_first = "core"
"""

SERVICE = """
[services.{name}]
platform = "local"
health_path = "/api/v1/health"
health_timeout = "15s"

[services.{name}.local]
listen = "127.0.0.1:{listen}"
slots = {{ blue = "127.0.0.1:{blue}", green = "127.0.0.1:{green}" }}
run = "{python} -m demo.app --port {{port}} --version {{version}}"
migrate = "true"
"""


@pytest.fixture
def setup(tmp_path, slack):
    text, public = BASE, {}
    for name in MEMBERS:
        listen, blue, green = (free_port() for _ in range(3))
        public[name] = f"http://127.0.0.1:{listen}"
        text += SERVICE.format(name=name, listen=listen, blue=blue, green=green, python=sys.executable)
    config = write_config(tmp_path, "", base=text)
    bots: list[Bot] = []
    yield config, public, bots
    for b in bots:
        b.stop()
    cfg = load_config(config)
    for name in MEMBERS:
        make_platform(cfg, name, "production").shutdown()


def answers(public: str) -> set[str]:
    return {httpx.get(public + "/version").text.strip() for _ in range(10)}


def released(store: Store, parent_id: int, answer: httpx.Response | None = None) -> dict:
    said = f" (/deploy answered {answer.status_code}: {answer.text[:300]})" if answer is not None else ""
    return wait_for(lambda: (rows.get(store, parent_id) or {}).get("status") in ("succeeded", "failed", "rolled_back")
                    and rows.get(store, parent_id), timeout=180, what=f"release #{parent_id} to end{said}")


# (where the bot dies, the version every member serves after recovery, the release's recorded status)
CASES = [
    ("migrate", "v1", "failed"),
    ("start_green", "v1", "failed"),
    ("health", "v1", "failed"),
    ("smoke", "v1", "failed"),
    ("shift", "v1", "failed"),
    ("shift:between", "v1", "failed"),
    ("shift:after", "v2", "succeeded"),
    ("bake", "v2", "succeeded"),
]


@pytest.mark.parametrize(("crash_at", "serving", "status"), CASES)
def test_bot_killed_during_a_release_leaves_every_member_on_the_same_side(setup, slack, crash_at, serving, status):
    config, public, bots = setup
    store = Store(config.parent / "recess.db")
    first = Bot(config, slack.api_url)
    bots.append(first)
    assert released(store, 1, first.sender.command("/deploy", "k12 v1"))["status"] == "succeeded"
    first.stop()

    load = Load(public["web"], clients=2, pause=0.005).start()
    try:
        doomed = Bot(config, slack.api_url, crash_at=crash_at)
        bots.append(doomed)
        try:
            doomed.sender.command("/deploy", "k12 v2")
        except httpx.HTTPError:
            pass  # the bot may die before it answers: the request is stored before the run starts
        wait_for(lambda: doomed.proc.poll() is not None, timeout=90, what="the bot to be killed")
        assert doomed.proc.returncode == -signal.SIGKILL
        assert rows.get(store, 5)["status"] == "running"

        bots.append(Bot(config, slack.api_url))
        final = released(store, 5)
        seen = load.count()
        load.wait_until(lambda t: t.total >= seen + 20, what="answers after the recovery")
    finally:
        load.stop()
    assert final["status"] == status, final["outcome"]
    cfg = load_config(config)
    members = rows.members(store, final)
    assert [m["service"] for m in members] == list(MEMBERS)
    for m in members:
        assert answers(public[m["service"]]) == {serving}, m["service"]
        traffic = make_platform(cfg, m["service"], "production").status()
        assert sorted(traffic.weights.values()) == [0, 100]  # never half-routed
        assert traffic.live_version == serving
        if serving == "v1":
            assert not traffic.slot(m["green_slot"]).running  # every green stopped
        assert m["status"] == status
        assert [s["name"] for s in rows.steps(store, m["id"])].count("start_green") <= 1  # nothing ran twice
    slack.wait_for(lambda s: any("Recovery:" in t for t in s.texts()))
    assert not [t for t in slack.texts() if "Recovery:" in t and t.startswith("*")]  # members are recovered as one
    assert load.failures == []


def test_bot_killed_right_after_the_release_rollback_flip_records_the_rollback(setup, slack):
    config, public, bots = setup
    store = Store(config.parent / "recess.db")
    bot = Bot(config, slack.api_url)
    bots.append(bot)
    assert released(store, 1, bot.sender.command("/deploy", "k12 v1"))["status"] == "succeeded"
    assert released(store, 5, bot.sender.command("/deploy", "k12 v2"))["status"] == "succeeded"
    bot.stop()
    doomed = Bot(config, slack.api_url, crash_at="rollback:after")
    bots.append(doomed)
    doomed.sender.action("rollback_start", card_value(store, 5), user="U0APPROVER1", ephemeral=True)
    wait_for(lambda: doomed.proc.poll() is not None, what="the bot to be killed")
    rollback = rows.get(store, 9)
    assert rollback["kind"] == "rollback" and rollback["status"] == "running"
    bots.append(Bot(config, slack.api_url))
    final = wait_for(lambda: rows.get(store, 9)["status"] != "running" and rows.get(store, 9), what="recovery")
    assert final["status"] == "succeeded", final["outcome"]
    assert rows.get(store, 5)["status"] == "rolled_back"
    for name in MEMBERS:
        assert answers(public[name]) == {"v1"}
        assert rows.live(store, name, "production")["version"] == "v1"
    assert [m["service"] for m in rows.members(store, final)] == list(reversed(MEMBERS))


def test_bot_killed_before_the_release_rollback_flip_changes_nothing_and_keeps_the_previous_versions(setup, slack):
    config, public, bots = setup
    store = Store(config.parent / "recess.db")
    bot = Bot(config, slack.api_url)
    bots.append(bot)
    assert released(store, 1, bot.sender.command("/deploy", "k12 v1"))["status"] == "succeeded"
    assert released(store, 5, bot.sender.command("/deploy", "k12 v2"))["status"] == "succeeded"
    bot.stop()
    doomed = Bot(config, slack.api_url, crash_at="rollback:before")
    bots.append(doomed)
    doomed.sender.action("rollback_start", card_value(store, 5), user="U0APPROVER1", ephemeral=True)
    wait_for(lambda: doomed.proc.poll() is not None, what="the bot to be killed")
    assert rows.get(store, 9)["status"] == "running"
    bots.append(Bot(config, slack.api_url))
    final = wait_for(lambda: rows.get(store, 9)["status"] != "running" and rows.get(store, 9), what="recovery")
    assert final["status"] == "failed" and "nothing changed" in final["outcome"]
    assert rows.get(store, 5)["status"] == "succeeded"
    cfg = load_config(config)
    for m in rows.members(store, rows.get(store, 5)):
        assert answers(public[m["service"]]) == {"v2"}
        kept = make_platform(cfg, m["service"], "production").status().slot(m["blue_slot"])
        assert kept.running and kept.version == "v1"  # still there for a real rollback
