"""Fault injection: `recess serve` is SIGKILLed at each step of a real local deploy, then restarted.

Whatever the step, traffic ends 100% on one healthy slot, the deploy's final state is recorded,
the thread says what recovery did, and nothing runs twice.
"""

from __future__ import annotations

import signal
import sys

import httpx
import pytest

from storage import deploys as rows
from storage.db import Store
from tests.harness import KILLED_BOT_BASE, card_value, free_port, write_config
from tests.kit.load import Load
from tests.kit.serve import Bot, wait_for

pytestmark = pytest.mark.e2e

CONFIG = KILLED_BOT_BASE + """

[services.web]
platform = "local"
health_path = "/api/v1/health"
health_timeout = "15s"

[services.web.local]
listen = "127.0.0.1:{listen}"
slots = {{ blue = "127.0.0.1:{blue}", green = "127.0.0.1:{green}" }}
run = "{python} -m demo.app --port {{port}} --version {{version}}"
"""


@pytest.fixture
def setup(tmp_path, slack):
    ports = [free_port() for _ in range(3)]
    config = write_config(tmp_path, "", base=CONFIG.format(listen=ports[0], blue=ports[1], green=ports[2], python=sys.executable))
    bots: list[Bot] = []
    yield config, f"http://127.0.0.1:{ports[0]}", bots
    for b in bots:
        b.stop()
    from commands.config import load_config
    from platforms import make_platform

    make_platform(load_config(config), "web", "production").shutdown()


# (where the bot dies, the version serving after recovery, the deploy's recorded status)
CASES = [
    ("start_green", "v1", "failed"),
    ("migrate", "v1", "failed"),
    ("health", "v1", "failed"),
    ("smoke", "v1", "failed"),
    ("shift", "v1", "failed"),
    ("shift:after", "v2", "succeeded"),
    ("bake", "v2", "succeeded"),
]


@pytest.mark.parametrize(("crash_at", "serving", "status"), CASES)
def test_bot_killed_during_a_deploy_recovers_to_one_healthy_slot(setup, slack, crash_at, serving, status):
    config, public, bots = setup
    store = Store(config.parent / "recess.db")
    first = Bot(config, slack.api_url)
    bots.append(first)
    first.sender.command("/deploy", "web v1")
    wait_for(lambda: (rows.get(store, 1) or {}).get("status") == "succeeded", what="v1 deployed")
    first.stop()

    load = Load(public, clients=2, pause=0.005).start()
    try:
        doomed = Bot(config, slack.api_url, crash_at=crash_at)
        bots.append(doomed)
        try:
            doomed.sender.command("/deploy", "web v2")
        except httpx.HTTPError:
            pass  # the bot may die before it answers: the request is stored before the pipeline starts
        wait_for(lambda: doomed.proc.poll() is not None, what="the bot to be killed")
        assert doomed.proc.returncode == -signal.SIGKILL
        assert rows.get(store, 2)["status"] == "running"

        bots.append(Bot(config, slack.api_url))
        final = wait_for(lambda: (rows.get(store, 2) or {}).get("status") in ("failed", "succeeded") and rows.get(store, 2),
                         what="recovery to record the outcome")
        answered = load.count()
        load.wait_until(lambda t: t.total >= answered + 20, what="answers after the recovery")
    finally:
        load.stop()
    assert final["status"] == status
    answers = {httpx.get(public + "/version").text.strip() for _ in range(20)}
    assert answers == {serving}
    from commands.config import load_config
    from platforms import make_platform

    traffic = make_platform(load_config(config), "web", "production").status()
    assert sorted(traffic.weights.values()) == [0, 100]  # never half-routed
    assert traffic.live_version == serving
    if serving == "v1":
        assert not traffic.slot(final["green_slot"]).running  # green stopped
    assert [s["name"] for s in rows.steps(store, 2)].count("start_green") <= 1  # nothing ran twice
    slack.wait_for(lambda s: any("Recovery:" in t for t in s.texts()))
    assert load.failures == []


def test_a_version_that_fails_after_the_switch_is_rolled_back_automatically(setup, slack):
    config, public, bots = setup
    store = Store(config.parent / "recess.db")
    bot = Bot(config, slack.api_url)
    bots.append(bot)
    bot.sender.command("/deploy", "web v1")
    wait_for(lambda: (rows.get(store, 1) or {}).get("status") == "succeeded", what="v1 deployed")
    # v2 turns bad 6 s after it starts: time enough to pass health and smoke on a busy machine,
    # and then the bake (12 s) sees it fail.
    config.write_text(config.read_text().replace('bake_time = "1s"', 'bake_time = "12s"'))
    bot.stop()
    bot = Bot(config, slack.api_url)
    bots.append(bot)
    with Load(public, clients=2, pause=0.005) as load:
        bot.sender.command("/deploy", "web v2+fails-after-6")
        final = wait_for(lambda: (rows.get(store, 2) or {}).get("status") in ("rolled_back", "succeeded", "failed") and rows.get(store, 2),
                         timeout=60, what="the bake watch")
        answered = load.count()
        load.wait_until(lambda t: t.total >= answered + 20, what="answers after the rollback")
    assert final["status"] == "rolled_back" and "automatically rolled back" in final["outcome"]
    assert {httpx.get(public + "/version").text.strip() for _ in range(10)} == {"v1"}
    slack.wait_for(lambda s: any("automatic rollback" in t for t in s.texts()))


def test_bot_killed_right_after_the_rollback_flip_records_the_rollback(setup, slack):
    config, public, bots = setup
    store = Store(config.parent / "recess.db")
    bot = Bot(config, slack.api_url)
    bots.append(bot)
    for n, version in ((1, "v1"), (2, "v2")):
        bot.sender.command("/deploy", f"web {version}")
        wait_for(lambda n=n: (rows.get(store, n) or {}).get("status") == "succeeded", what=f"{version} deployed")
    bot.stop()
    doomed = Bot(config, slack.api_url, crash_at="rollback:after")
    bots.append(doomed)
    doomed.sender.action("rollback_start", card_value(store, 2), user="U0APPROVER1", ephemeral=True)
    wait_for(lambda: doomed.proc.poll() is not None, what="the bot to be killed")
    assert rows.get(store, 3)["status"] == "running"
    bots.append(Bot(config, slack.api_url))
    final = wait_for(lambda: rows.get(store, 3)["status"] != "running" and rows.get(store, 3), what="recovery")
    assert final["status"] == "succeeded"
    assert rows.get(store, 2)["status"] == "rolled_back"
    assert rows.live(store, "web", "production")["version"] == "v1"
    assert {httpx.get(public + "/version").text.strip() for _ in range(10)} == {"v1"}


def test_bot_killed_before_the_rollback_flip_changes_nothing(setup, slack):
    config, public, bots = setup
    store = Store(config.parent / "recess.db")
    bot = Bot(config, slack.api_url)
    bots.append(bot)
    for n, version in ((1, "v1"), (2, "v2")):
        bot.sender.command("/deploy", f"web {version}")
        wait_for(lambda n=n: (rows.get(store, n) or {}).get("status") == "succeeded", what=f"{version} deployed")
    # A rollback row left running from before the flip, as a crash would leave it.
    live = rows.get(store, 2)
    rows.insert(store, kind="rollback", service="web", env="production", version="v1", previous_version="v2",
                requester="U0APPROVER1", status="running", rollback_of=2, blue_slot=live["green_slot"],
                green_slot=live["blue_slot"], blue_version="v2")
    bot.stop()
    bots.append(Bot(config, slack.api_url))
    final = wait_for(lambda: rows.get(store, 3)["status"] != "running" and rows.get(store, 3), what="recovery")
    assert final["status"] == "failed" and "nothing changed" in final["outcome"]
    assert {httpx.get(public + "/version").text.strip() for _ in range(10)} == {"v2"}
    from commands.config import load_config
    from platforms import make_platform

    kept = make_platform(load_config(config), "web", "production").status().slot(live["blue_slot"])
    assert kept.running and kept.version == "v1"  # the kept version is still there for a real rollback
