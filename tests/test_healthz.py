"""/healthz tells the truth: 503 naming each cause when the store cannot write, the scheduler is
down, a deploy ran past its deploy_timeout or needs attention, or Slack messages wait too long."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from bot.health import check
from commands.config import load_config
from storage.db import Store, iso, utcnow
from tests.harness import BASE_CONFIG, FakeClock, write_config
from tests.test_store_heals import LockHolder, read_only

NOW = dt.datetime(2027, 3, 16, 22, 0, tzinfo=dt.UTC)


def add_deploy(store: Store, *, status: str, started_at: dt.datetime | None, env: str = "production",
               outcome: str | None = None, updated_at: dt.datetime | None = None) -> int:
    cur = store.execute(
        "INSERT INTO deploys (service, env, version, requester, status, created_at, updated_at, started_at, outcome)"
        " VALUES ('web', ?, 'v2', 'U0ENGINEER', ?, ?, ?, ?, ?)",
        (env, status, iso(NOW), iso(updated_at or NOW), iso(started_at), outcome),
    )
    return cur.lastrowid


def add_unsent(store: Store, created_at: dt.datetime, *, error: str | None = None) -> int:
    cur = store.execute(
        "INSERT INTO outbox (deploy_id, method, payload, created_at, attempts, error) VALUES (7, 'post', '{}', ?, ?, ?)",
        (iso(created_at), 3 if error else 0, error),
    )
    return cur.lastrowid


# -- through real HTTP -------------------------------------------------------------------------------


def test_a_healthy_bot_answers_200_ok_and_really_wrote_its_heartbeat(server_factory):
    srv = server_factory(clock=FakeClock(NOW))
    resp = srv.http.get("/healthz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok", "store": True, "scheduler": True}
    assert srv.rt.store.row("SELECT beat_at FROM health")["beat_at"] == iso(NOW)


def test_healthz_answers_503_while_another_process_holds_the_database(server_factory):
    srv = server_factory(clock=FakeClock(NOW))
    holder = LockHolder(srv.rt.store.path)
    try:
        resp = srv.http.get("/healthz")
    finally:
        holder.release()
        holder.close()
    assert resp.status_code == 503
    body = resp.json()
    assert body["status"] == "unhealthy" and body["store"] is False
    assert len(body["causes"]) == 1
    assert body["causes"][0].startswith("the store cannot write") and "database is locked" in body["causes"][0]
    assert srv.http.get("/healthz").status_code == 200  # and healthy again once it lets go


def test_healthz_answers_503_while_the_database_is_read_only_and_200_after_without_a_restart(server_factory):
    srv = server_factory(clock=FakeClock(NOW))
    # No request before the episode: the thread that answers opens its connection while the file
    # cannot be written, so sqlite opens it read-only, the way finding 8 left every writer.
    # (A connection opened before a `chattr +i` keeps writing the WAL through its open file.)
    with read_only(Path(srv.rt.store.path)):
        resp = srv.http.get("/healthz")
    assert resp.status_code == 503
    assert resp.json()["store"] is False
    assert resp.json()["causes"][0].startswith("the store cannot write")
    assert "readonly" in resp.json()["causes"][0]
    assert srv.http.get("/healthz").json() == {"status": "ok", "store": True, "scheduler": True}


def test_a_deploy_that_needs_attention_makes_healthz_503_and_says_which(server_factory):
    srv = server_factory(clock=FakeClock(NOW))
    deploy = add_deploy(srv.rt.store, status="needs_attention", started_at=NOW - dt.timedelta(minutes=3),
                        outcome="recovery could not tell which slot serves")
    resp = srv.http.get("/healthz")
    assert resp.status_code == 503
    assert resp.json()["causes"] == [
        f"deploy #{deploy} of web to production needs attention since 2027-03-16 22:00 UTC: "
        "recovery could not tell which slot serves"]


def test_slack_messages_waiting_over_5_minutes_make_healthz_503(server_factory):
    srv = server_factory(clock=FakeClock(NOW))
    srv.rt.outbox.stop()  # nothing delivers them: they wait, as when Slack is unreachable
    oldest = add_unsent(srv.rt.store, utcnow() - dt.timedelta(minutes=7, seconds=20), error="ratelimited")
    add_unsent(srv.rt.store, utcnow())
    resp = srv.http.get("/healthz")
    assert resp.status_code == 503
    assert resp.json()["causes"] == [
        f"2 Slack message(s) unsent; the oldest, #{oldest} (deploy #7), has waited 7 min, more than 5 min "
        "after 3 attempt(s), last error: ratelimited"]


def test_a_stopped_scheduler_makes_healthz_503(server_factory):
    srv = server_factory(clock=FakeClock(NOW))
    srv.rt.scheduler.shutdown(wait=False)
    resp = srv.http.get("/healthz")
    assert resp.status_code == 503
    body = resp.json()
    assert body["scheduler"] is False and body["store"] is True
    assert body["causes"] == ["the scheduler is not running: queued deploys and retirements would never start"]


# -- the checks themselves, against a store with no bot around it ------------------------------------


@pytest.fixture
def setup(tmp_path):
    base = BASE_CONFIG.replace("[environments.staging]\n", '[environments.staging]\ndeploy_timeout = "10m"\n')
    cfg = load_config(write_config(tmp_path, "", base=base))
    assert cfg.environments["staging"].deploy_timeout == dt.timedelta(minutes=10)
    store = Store(cfg.database_path)
    yield store, cfg
    store.close()


def test_a_deploy_running_past_its_deploy_timeout_is_named_with_how_long_it_ran(setup):
    store, cfg = setup
    late = add_deploy(store, status="running", started_at=NOW - dt.timedelta(minutes=41, seconds=30))
    add_deploy(store, status="running", started_at=NOW - dt.timedelta(minutes=29))  # within its 30 min
    report = check(store, cfg, now=NOW, scheduler_running=True)
    assert not report.ok
    assert report.causes == [f"deploy #{late} of web to production has run 41 min, past its deploy_timeout of 30 min"]


def test_each_environment_has_its_own_deploy_timeout(setup):
    store, cfg = setup
    staging = add_deploy(store, status="running", started_at=NOW - dt.timedelta(minutes=12), env="staging")
    add_deploy(store, status="running", started_at=NOW - dt.timedelta(minutes=12), env="production")
    report = check(store, cfg, now=NOW, scheduler_running=True)
    assert report.causes == [f"deploy #{staging} of web to staging has run 12 min, past its deploy_timeout of 10 min"]


def test_finished_deploys_and_fresh_messages_are_healthy(setup):
    store, cfg = setup
    add_deploy(store, status="succeeded", started_at=NOW - dt.timedelta(hours=5))
    add_deploy(store, status="failed", started_at=NOW - dt.timedelta(hours=5))
    add_unsent(store, NOW - dt.timedelta(minutes=4, seconds=50))
    report = check(store, cfg, now=NOW, scheduler_running=True, outbox_clock=lambda: NOW)
    assert report.ok and report.causes == []
    assert report.to_json() == {"status": "ok", "store": True, "scheduler": True}


def test_every_cause_is_listed_not_only_the_first(setup):
    store, cfg = setup
    add_deploy(store, status="running", started_at=NOW - dt.timedelta(hours=2))
    add_deploy(store, status="needs_attention", started_at=NOW - dt.timedelta(hours=1))
    add_unsent(store, NOW - dt.timedelta(minutes=6))
    report = check(store, cfg, now=NOW, scheduler_running=False, outbox_clock=lambda: NOW)
    body = report.to_json()
    assert body["status"] == "unhealthy" and body["scheduler"] is False and body["store"] is True
    assert [c.split(" ")[0:2] for c in body["causes"]] == [
        ["the", "scheduler"], ["deploy", "#1"], ["deploy", "#2"], ["1", "Slack"]]
    assert "has run 2 h, past its deploy_timeout of 30 min" in body["causes"][1]
