"""The controller never causes the outage: one door for traffic, recovery that never guesses,
no deploy stuck `running`, and "live" only when the public address answers (issue 9).

Against the fake platform, with a Ticker for the monotonic clock, so waiting loops run at once."""

from __future__ import annotations

import datetime as dt
import sqlite3
import subprocess
import sys
import time

import pytest

from commands.recovery import recover_all
from commands.rollback import rollback
from platforms.base import Health, PlatformError
from storage import deploys as rows
from tests.harness import BASE_CONFIG, ENGINEER, FAKE_SERVICE, FakeClock
from tests.test_pipeline import AFTER_SCHOOL, deploy_and_approve, killed_at, make  # noqa: F401 (make is a fixture)


def moves(fake) -> list[tuple]:  # noqa: ANN001
    return [c for c in fake.calls if c[0] in ("shift", "stop", "start")]


# -- never route to nothing, never guess ----------------------------------------------------------


def test_recovery_never_sets_every_weight_to_zero_when_no_slot_proves_healthy(make):
    d, fake, _ = make()
    deploy_id = killed_at(d, fake, "health")
    fake.fail["health"] = "down"  # neither blue nor green answers 200, at any of the probes
    before = dict(fake.weights)
    recover_all(d)
    assert fake.weights == before == {"blue": 100, "green": 0}
    assert not [c for c in fake.calls if c[0] == "shift"]
    assert rows.get(d.store, deploy_id)["status"] == "needs_attention"
    text = d.notify.text()
    assert "needs attention" in text and "no slot that proves healthy" in text and "weights blue=100,green=0" in text


def test_one_slow_probe_of_blue_does_not_count_as_dead_in_recovery(make):
    d, fake, _ = make()
    deploy_id = killed_at(d, fake, "smoke")
    original = fake.health
    seen = []

    def health(slot):  # noqa: ANN001
        seen.append(slot)
        if slot == "blue" and seen.count("blue") == 1:
            return Health(False, None, "timed out after 2 s")  # one slow answer
        return original(slot)

    fake.health = health
    assert recover_all(d) == [(deploy_id, "rolled back to blue")]
    assert fake.weights == {"blue": 100, "green": 0} and not fake.running["green"]


def test_a_router_that_does_not_answer_is_never_read_as_a_first_deploy(make):
    d, fake, _ = make()
    fake.router_up = False  # the driver reports weights 0/0 with router_up=False
    result = deploy_and_approve(d)
    assert result["status"] == "failed"
    assert "does not answer" in result["outcome"]
    assert moves(fake) == []  # nothing started in the serving slot, nothing shifted or stopped
    assert fake.running["blue"] and fake.versions["blue"] == "v1"


def test_weights_split_outside_a_canary_fail_the_deploy_before_anything_moves(make):
    d, fake, _ = make()
    fake.start("green", "v0")
    fake.shift({"blue": 50, "green": 50})
    fake.calls.clear()
    result = deploy_and_approve(d)
    assert result["status"] == "failed" and "split" in result["outcome"]
    assert moves(fake) == []


def test_a_router_routing_nowhere_while_a_version_is_live_is_not_a_first_deploy(make):
    d, fake, _ = make()
    fake.weights = {"blue": 0, "green": 0}  # someone zeroed the router by hand; v1 is live in the store
    result = deploy_and_approve(d)
    assert result["status"] == "failed" and "no slot" in result["outcome"]
    assert moves(fake) == []


def test_recovery_with_the_router_down_leaves_it_alone_and_asks_for_a_person(make):
    d, fake, _ = make()
    deploy_id = killed_at(d, fake, "shift", {"blue": 0, "green": 100})
    fake.router_up = False
    fake.calls.clear()
    recover_all(d)
    assert rows.get(d.store, deploy_id)["status"] == "needs_attention"
    assert not [c for c in fake.calls if c[0] in ("shift", "stop")]
    assert "not answering" in d.notify.text()


def test_a_failed_bake_of_a_first_deploy_leaves_it_serving_and_asks_for_a_person(make):
    base = BASE_CONFIG.replace('bake_time = "0s"', 'bake_time = "5s"', 1)
    d, fake, _ = make(live=None, base=base)
    fake.health_after_shift_fails = True
    result = deploy_and_approve(d)
    assert result["status"] == "needs_attention"
    assert fake.weights["blue"] == 100  # the only version there is keeps serving: never 0/0
    assert "needs attention" in d.notify.text()


# -- the door ---------------------------------------------------------------------------------------


def test_the_door_refuses_to_route_onto_a_slot_that_runs_another_version(make):
    d, fake, _ = make()
    fake.start("green", "v9")
    with pytest.raises(PlatformError, match="runs v9, not v2"):
        d.traffic.route("web", "production", to="green", version="v2", owner=None)
    assert fake.weights == {"blue": 100, "green": 0}


def test_the_door_refuses_to_stop_a_serving_slot_or_another_version(make):
    d, fake, _ = make()
    with pytest.raises(PlatformError, match="carries traffic"):
        d.traffic.stop("web", "production", "blue", "v1", owner=None)
    fake.start("green", "v3")
    with pytest.raises(PlatformError, match="runs v3, not v2"):
        d.traffic.stop("web", "production", "green", "v2", owner=None)
    assert fake.running == {"blue": True, "green": True}


def test_retire_never_stops_a_kept_slot_a_rollback_flipped_onto_meanwhile(make):
    clock = FakeClock(AFTER_SCHOOL)
    d, fake, _ = make(clock=clock)
    deployed = deploy_and_approve(d)  # v2 live in green, v1 kept in blue
    clock.advance(minutes=31)
    original_drain = fake.drain
    clicked = []

    def drain(slot, timeout):  # noqa: ANN001 (the retire job drains blue; an engineer clicks Roll back)
        original_drain(slot, timeout)
        if slot == "blue" and not clicked:
            clicked.append(rollback(d, deployed["id"], ENGINEER))

    fake.drain = drain
    d.retire_due()
    assert clicked and clicked[0]["status"] == "succeeded"
    assert fake.weights == {"blue": 100, "green": 0}
    assert fake.running["blue"] and fake.versions["blue"] == "v1"  # the slot that serves was not stopped
    assert ("stop", "blue") not in fake.calls


# -- no deploy stuck running ---------------------------------------------------------------------


def test_an_error_outside_a_step_ends_the_deploy_and_puts_traffic_on_blue(make):
    base = BASE_CONFIG.replace('bake_time = "0s"', 'bake_time = "3s"', 1)
    d, fake, _ = make(base=base)
    cards = d.notify.update_card

    def update_card(deploy_id):  # noqa: ANN001 (outside the step's try: as the store error was)
        row = rows.get(d.store, deploy_id)
        if row["status"] == "running" and [s for s in rows.steps(d.store, deploy_id) if s["name"] == "bake"]:
            raise sqlite3.DatabaseError("disk I/O error")
        cards(deploy_id)

    d.notify.update_card = update_card
    result = deploy_and_approve(d)
    assert result["status"] == "failed" and "the pipeline failed" in result["outcome"]
    assert fake.weights == {"blue": 100, "green": 0} and not fake.running["green"]
    assert rows.holder(d.store, "web", "production") is None  # the service is free again


def test_a_database_locked_by_another_process_during_the_bake_does_not_leave_the_deploy_running(make, tmp_path):
    base = BASE_CONFIG.replace('bake_time = "0s"', 'bake_time = "3s"', 1)
    d, fake, _ = make(base=base)
    d.store.busy_timeout = 0.05  # each statement gives up fast; the retries wait out the lock
    d.store._discard()
    holder: list[subprocess.Popen] = []
    real_sleep = d.sleep
    release = tmp_path / "release"
    script = (
        "import sqlite3, sys, time, pathlib\n"
        f"c = sqlite3.connect({str(d.store.path)!r}, isolation_level=None)\n"
        "c.execute('BEGIN EXCLUSIVE')\n"
        "print('locked', flush=True)\n"
        f"while not pathlib.Path({str(release)!r}).exists(): time.sleep(0.02)\n"
        "c.execute('ROLLBACK')\n"
    )

    def sleep(seconds):  # noqa: ANN001
        real_sleep(seconds)
        if not holder and rows.get(d.store, rows.holder(d.store, "web", "production")["id"])["traffic_at"]:
            p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
            assert p.stdout.readline().strip() == "locked"
            holder.append(p)
        time.sleep(0.01)  # real time passes too, so the other process sees the release

    d.store_waits = []
    original_retrying = d.store.retrying

    def retrying(fn, **kw):  # noqa: ANN001, ANN003 (count the waits, keep the real behaviour)
        def counted():  # noqa: ANN202
            try:
                return fn()
            except sqlite3.OperationalError:
                d.store_waits.append(1)
                if len(d.store_waits) > 3:
                    release.touch()  # the other process lets go after recess waited a few times
                raise
        return original_retrying(counted, **kw)

    d.store.retrying = retrying
    d.sleep = sleep
    try:
        result = deploy_and_approve(d)
    finally:
        release.touch()
        for p in holder:
            p.wait(timeout=10)
    assert holder, "the lock was taken during the bake"
    assert d.store_waits, "recess met the lock and waited it out"
    assert result["status"] == "succeeded"
    assert rows.holder(d.store, "web", "production") is None


def test_the_watchdog_recovers_a_running_deploy_no_pipeline_drives(make):
    d, fake, _ = make()
    orphan = killed_at(d, fake, "migrate")  # its pipeline thread is gone
    d.watch_deploys()
    assert rows.get(d.store, orphan)["status"] == "failed"
    assert fake.weights == {"blue": 100, "green": 0}


def test_the_watchdog_leaves_a_deploy_its_own_pipeline_drives(make):
    d, fake, _ = make()
    deploy_id = killed_at(d, fake, "health")
    d.running_here.add(deploy_id)
    d.watch_deploys()
    assert rows.get(d.store, deploy_id)["status"] == "running"
    assert not [c for c in fake.calls if c[0] in ("shift", "stop")]


def test_a_deploy_past_its_deploy_timeout_is_aborted_with_traffic_on_blue(make):
    clock = FakeClock(AFTER_SCHOOL)
    extra = FAKE_SERVICE.replace('health_timeout = "1s"', 'health_timeout = "2h"')
    base = BASE_CONFIG.replace('canary_pause = "0s"', 'canary_pause = "0s"\ndeploy_timeout = "10m"', 1)
    d, fake, _ = make(clock=clock, extra=extra, base=base)
    fake.fail["health"] = "starting"  # green never gets healthy; health_timeout alone would wait 2 h
    fake.fail["health_slot"] = "green"
    ticker_sleep = d.sleep

    def sleep(seconds):  # noqa: ANN001 (the wall clock moves with the monotonic one)
        ticker_sleep(seconds)
        clock.advance(seconds=seconds)

    d.sleep = sleep
    result = deploy_and_approve(d)
    assert result["status"] == "failed" and "deploy_timeout of 10 min" in result["outcome"]
    assert result["finished_at"] - AFTER_SCHOOL < dt.timedelta(minutes=11)
    assert fake.weights == {"blue": 100, "green": 0} and not fake.running["green"]


def test_health_timeout_counts_from_greens_start_not_the_pipelines(make):
    extra = FAKE_SERVICE.replace('health_timeout = "1s"', 'health_timeout = "60s"')
    d, fake, _ = make(extra=extra)
    original_migrate = fake.migrate

    def slow_migrate(slot, version, env):  # noqa: ANN001 (a migration that takes 50 s)
        d.sleep(50)
        return original_migrate(slot, version, env)

    fake.migrate = slow_migrate
    green_up_at = []
    original_health = fake.health

    def health(slot):  # noqa: ANN001 (green answers 200 from 30 s after its start)
        if slot == "green" and d.monotonic() < green_up_at[0] + 30:
            return Health(False, 503, "warming up")
        return original_health(slot)

    original_start = fake.start

    def start(slot, version):  # noqa: ANN001
        original_start(slot, version)
        green_up_at.append(d.monotonic())

    fake.start, fake.health = start, health
    result = deploy_and_approve(d)
    assert result["status"] == "succeeded", result["outcome"]


# -- "live" only when the public address answers ----------------------------------------------------


def test_live_is_never_said_while_the_public_address_refuses_connections(make):
    d, fake, _ = make()
    fake.probe_public = lambda: Health(False, None, "GET http://127.0.0.1:8080/health: no answer (ConnectError)")
    result = deploy_and_approve(d)
    assert result["status"] == "rolled_back"
    assert "public address" in result["outcome"]
    assert "is live" not in d.notify.text()
    assert fake.weights == {"blue": 100, "green": 0}


def test_a_router_that_dies_during_the_bake_fails_the_bake(make):
    base = BASE_CONFIG.replace('bake_time = "0s"', 'bake_time = "10s"', 1)
    d, fake, _ = make(base=base)
    revived = []

    def probe_public():  # noqa: ANN202
        return Health(False, None, "refused") if not fake.router_up else Health(True, 200)

    def watch_router():  # noqa: ANN202 (the watchdog's revival brings it back with its weights)
        if not fake.router_up:
            fake.router_up = True
            revived.append(dict(fake.weights))
        return None

    fake.probe_public, fake.watch_router = probe_public, watch_router
    ticker_sleep = d.sleep

    def sleep(seconds):  # noqa: ANN001 (HAProxy is SIGKILLed one second into the bake)
        ticker_sleep(seconds)
        row = rows.holder(d.store, "web", "production")
        if row and row["traffic_at"] and not revived and fake.router_up:
            fake.router_up = False

    d.sleep = sleep
    result = deploy_and_approve(d)
    assert result["status"] == "rolled_back" and "router died" in result["outcome"]
    assert revived == [{"blue": 0, "green": 100}]
    assert fake.weights == {"blue": 100, "green": 0}
    assert "is live" not in d.notify.text()


def test_a_smoke_test_that_times_out_takes_its_children_with_it(make, tmp_path):
    pid_file = tmp_path / "child.pid"
    smoke = f"sleep 300 & echo $! > {pid_file}; wait"
    extra = FAKE_SERVICE.replace('health_timeout = "1s"', f'health_timeout = "1s"\nsmoke = "{smoke}"\nsmoke_timeout = "1s"')
    d, fake, _ = make(extra=extra)
    result = deploy_and_approve(d)
    assert result["status"] == "failed" and "process group was killed" in result["outcome"]
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 30
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)
    assert fake.weights == {"blue": 100, "green": 0}


def _alive(pid: int) -> bool:
    from platforms.host import alive

    return alive(pid)


def test_recovery_before_green_started_leaves_a_version_kept_in_greens_slot_alone(make):
    d, fake, _ = make()
    fake.start("green", "v0")  # kept for rollback by an earlier deploy
    deploy_id = d.request(actor=ENGINEER, service="web", version="v2")["id"]
    rows.transition(d.store, deploy_id, "pending", "running", started_at=AFTER_SCHOOL)
    rows.update(d.store, deploy_id, blue_slot="blue", green_slot="green", blue_version="v1")
    rows.start_step(d.store, deploy_id, "start_green")  # killed before v2 started
    assert recover_all(d) == [(deploy_id, "rolled back to blue")]
    assert fake.weights == {"blue": 100, "green": 0}
    assert fake.running["green"] and fake.versions["green"] == "v0"
    assert "still holds v0 from before" in d.notify.text()


def test_after_a_service_was_taken_down_the_next_deploy_is_a_first_deploy(make):
    from storage import audit

    d, fake, _ = make()
    assert rows.live(d.store, "web", "production")["version"] == "v1"
    fake.stop("blue")
    fake.weights = {"blue": 0, "green": 0}  # what `recess down` leaves: no slot, no router
    audit.record(d.store, actor="U0OPERATOR", command="recess down", action="service.down", target="service:web/production",
                 at=d.clock())
    assert rows.live(d.store, "web", "production") is None
    result = deploy_and_approve(d, version="v1")  # the same version again: nothing is live
    assert result["status"] == "succeeded" and result["previous_version"] is None
    assert fake.weights[fake.serving] == 100 and fake.versions[fake.serving] == "v1"
