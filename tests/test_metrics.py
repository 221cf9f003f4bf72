"""GET /metrics in Prometheus' text format, and the DORA numbers behind it."""

from __future__ import annotations

import datetime as dt

import pytest
from prometheus_client.parser import text_string_to_metric_families

from commands import dashboard as dash
from commands.config import parse_config
from storage import deploys as rows
from storage.db import Store
from tests.harness import APPROVER_1, ENGINEER, FAKE_SERVICE, FakeClock
from tests.test_deploy_commands import card_post, deploy_server  # noqa: F401 (fixture)
from tests.test_window_commands import AFTER_SCHOOL, IN_SCHOOL

NAMES = ("recess_deploys", "recess_deploy_duration_seconds", "recess_deploy_step_duration_seconds", "recess_rollback_seconds",
         "recess_router_flip_seconds", "recess_live_info", "recess_deploys_in_progress", "recess_window_safe",
         "recess_outbox_pending", "recess_ofrep_requests", "recess_dora_deployment_frequency", "recess_dora_lead_time_seconds",
         "recess_dora_change_failure_rate", "recess_dora_time_to_restore_seconds")


def scrape(srv, **headers) -> dict[str, list]:  # noqa: ANN001, ANN003
    resp = srv.http.get("/metrics", headers=headers)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    return {f.name: f.samples for f in text_string_to_metric_families(resp.text)}


def sample(families: dict[str, list], name: str, suffix: str = "", **labels: str) -> float | None:
    for s in families.get(name, []):
        if s.name == name + suffix and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


def test_metrics_expose_every_listed_name_after_a_real_deploy(deploy_server, slack):  # noqa: F811
    srv = deploy_server()
    srv.command("/deploy", "web v2")
    card_post(slack, 2, srv.rt.store)
    srv.click("deploy_approve", 2, user=APPROVER_1, message_ts=rows.get(srv.rt.store, 2)["card_ts"])
    slack.wait_for(lambda s: any("is live in production" in t for t in s.texts()))
    slack.wait_for(lambda s: rows.get(srv.rt.store, 2)["status"] == "succeeded")
    srv.http.post("/ofrep/v1/evaluate/flags/portfolio_enabled", headers={"Authorization": "Bearer test-key-for-ofrep-0001"},
                  json={"context": {"targetingKey": "u1"}})
    srv.http.post("/ofrep/v1/evaluate/flags/portfolio_enabled", json={"context": {"targetingKey": "u1"}})
    families = scrape(srv)
    for name in NAMES:
        assert name in families, name
    assert sample(families, "recess_deploys", "_total", service="web", env="production", outcome="succeeded") == 2
    assert sample(families, "recess_live_info", service="web", env="production", version="v2") == 1
    assert sample(families, "recess_live_info", service="web", env="production", version="v1") is None
    assert sample(families, "recess_deploy_duration_seconds", "_count", service="web", env="production") == 1
    assert sample(families, "recess_deploy_step_duration_seconds", "_count", step="health") >= 1
    assert sample(families, "recess_router_flip_seconds", "_count") >= 1
    assert sample(families, "recess_ofrep_requests", "_total", status="200") == 1
    assert sample(families, "recess_ofrep_requests", "_total", status="401") == 1
    assert sample(families, "recess_window_safe") == 1
    assert sample(families, "recess_deploys_in_progress") == 0
    assert sample(families, "recess_dora_deployment_frequency", service="all", env="production", days="30") > 0
    # Steps are counted once each, however often Prometheus scrapes.
    assert sample(scrape(srv), "recess_deploy_step_duration_seconds", "_count", step="health") == \
        sample(families, "recess_deploy_step_duration_seconds", "_count", step="health")


def test_window_safe_is_0_in_school_hours(server_factory):
    srv = server_factory(FAKE_SERVICE, clock=FakeClock(IN_SCHOOL))
    assert sample(scrape(srv), "recess_window_safe") == 0


def test_metrics_need_the_bearer_token_when_token_env_is_set(server_factory, monkeypatch):
    monkeypatch.setenv("RECESS_TEST_METRICS_TOKEN", "s3cret-scrape-token")
    srv = server_factory(FAKE_SERVICE + '\n[metrics]\ntoken_env = "RECESS_TEST_METRICS_TOKEN"\n', clock=FakeClock(AFTER_SCHOOL))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-scrape-token"}):
        resp = srv.http.get("/metrics", headers=headers)
        assert resp.status_code == 401 and "RECESS_TEST_METRICS_TOKEN" in resp.json()["error"]
    assert "recess_window_safe" in scrape(srv, Authorization="Bearer s3cret-scrape-token")


def test_metrics_refuse_every_scrape_when_token_env_names_an_unset_variable(server_factory, monkeypatch):
    monkeypatch.delenv("RECESS_TEST_METRICS_UNSET", raising=False)
    srv = server_factory(FAKE_SERVICE + '\n[metrics]\ntoken_env = "RECESS_TEST_METRICS_UNSET"\n', clock=FakeClock(AFTER_SCHOOL))
    assert srv.http.get("/metrics", headers={"Authorization": "Bearer x"}).status_code == 401
    assert srv.http.get("/metrics").status_code == 401


# -- the four keys, computed -----------------------------------------------------------------------


@pytest.fixture
def history(tmp_path):
    cfg = parse_config({"services": {"web": {"platform": "command", "command": {"start": "true", "stop": "true", "shift": "true", "status": "true"}},
                                     "api": {"platform": "command", "command": {"start": "true", "stop": "true", "shift": "true", "status": "true"}}},
                        "environments": {"production": {}, "staging": {}}})
    store = Store(tmp_path / "recess.db")
    now = dt.datetime(2027, 3, 31, 12, 0, tzinfo=dt.UTC)

    def add(service: str, days_ago: float, status: str = "succeeded", *, env: str = "production", kind: str = "deploy",
            lead_h: float | None = None, finished_after_m: float = 5, rollback_of: int | None = None) -> int:
        traffic = now - dt.timedelta(days=days_ago)
        return rows.insert(store, kind=kind, service=service, env=env, version=f"v{days_ago}", requester=ENGINEER,
                           status=status, traffic_at=traffic, started_at=traffic - dt.timedelta(minutes=3),
                           finished_at=traffic + dt.timedelta(minutes=finished_after_m), rollback_of=rollback_of,
                           committed_at=None if lead_h is None else traffic - dt.timedelta(hours=lead_h))

    return cfg, store, now, add


def test_deployment_frequency_counts_successful_production_deploys_per_week(history):
    cfg, store, now, add = history
    for d in (1, 2, 8, 9, 15, 40):
        add("web", d)
    add("web", 3, env="staging")
    add("web", 4, status="failed")
    numbers = dash.dora(cfg, store, now=now, days=30)
    assert len(numbers.frequency.ids) == 5  # 40 days ago is outside; staging and the failure do not count
    assert numbers.frequency.value == pytest.approx(5 / (30 / 7))
    assert sum(v for _, v in numbers.frequency.weekly) == 5


def test_lead_time_is_the_median_from_commit_to_live_of_deploys_that_carry_a_commit_time(history):
    cfg, store, now, add = history
    add("web", 1, lead_h=1)
    add("web", 2, lead_h=3)
    add("web", 3, lead_h=10)
    add("web", 4)  # no committed_at: not counted
    numbers = dash.dora(cfg, store, now=now, days=30)
    assert numbers.lead_time.value == 3 * 3600 and len(numbers.lead_time.ids) == 3


def test_change_failure_rate_and_time_to_restore_follow_rollbacks_and_automatic_ones(history):
    cfg, store, now, add = history
    add("web", 10)
    undone = add("web", 9, status="rolled_back")  # undone by a person: restored at the rollback's switch
    add("web", 9 - 2 / (24 * 60), kind="rollback", rollback_of=undone)  # two minutes later
    failed = add("api", 5, status="failed", finished_after_m=4)  # the pipeline put traffic back 4 min after
    add("api", 4)
    numbers = dash.dora(cfg, store, now=now, days=30)
    assert numbers.changes == 4 and numbers.failures == 2
    assert numbers.failure_rate.value == 0.5 and set(numbers.failure_rate.ids) == {undone, failed}
    assert numbers.restore.value == pytest.approx(3 * 60, abs=1)  # median of 2 min and 4 min
    web = dash.dora(cfg, store, now=now, days=30, service="web")
    assert web.failure_rate.value == 0.5 and web.restore.value == pytest.approx(120, abs=1)
    assert len(web.frequency.ids) == 2  # the undone deploy went live too


def test_dora_refuses_periods_and_services_it_does_not_know(history):
    cfg, store, now, _ = history
    with pytest.raises(dash.DashboardError, match="days"):
        dash.dora(cfg, store, now=now, days=7)
    with pytest.raises(dash.DashboardError, match="'db'"):
        dash.dora(cfg, store, now=now, days=30, service="db")


def test_the_grafana_dashboard_uses_only_metrics_recess_exposes():
    import json
    import re
    from pathlib import Path

    dashboard = json.loads((Path(__file__).resolve().parents[1] / "docs" / "grafana-recess.json").read_text())
    used = {re.sub(r"_(bucket|total|count|sum)$", "", m) for p in dashboard["panels"] for t in p["targets"]
            for m in re.findall(r"recess_[a-z_]+", t["expr"])}
    assert used and used <= set(NAMES), used - set(NAMES)
