"""The railway driver against the schema-validating stand-in: every query valid, Railway's
hand-over, rollback, rate limits, retries, errors in words, and the configuration's checks."""

from __future__ import annotations

import logging
import textwrap

import httpx
import pytest

from commands.config import ConfigError, parse_config
from platforms.base import PlatformError
from platforms.railway import OPERATIONS, RailwayClient, RailwayPlatform, version_of
from tests.railway.standin import ACCOUNT_TOKEN, PROJECT_TOKEN, RailwayStandIn, problems

SERVICE = "svc-core"
ENV_ID = "env-prod"


def config(api_url: str, public_url: str, /, extra: str = "", **railway: str) -> dict:
    import tomllib

    keys = {"project_id": '"proj-district"', "service_id": f'"{SERVICE}"',
            "environments": f'{{ production = "{ENV_ID}" }}', "image": '"ghcr.io/district/core"',
            "public_url": f'"{public_url}"', "api_url": f'"{api_url}"'}
    keys.update(railway)
    body = "\n".join(f"{k} = {v}" for k, v in keys.items() if v is not None)
    return tomllib.loads(textwrap.dedent(f"""
        [environments.production]
        [services.core]
        platform = "railway"
        health_path = "/api/v1/health"
        health_timeout = "10m"
        {extra}
        [services.core.railway]
        """) + body)


class Clock:
    """Recess's side of the fake clock: sleeping moves it (and the stand-in's) forward."""

    def __init__(self, railway: RailwayStandIn) -> None:
        self.t = 0.0
        self.railway = railway
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s
        self.railway.advance(s)


@pytest.fixture
def railway(monkeypatch):
    monkeypatch.setenv("RAILWAY_TOKEN", PROJECT_TOKEN)
    with RailwayStandIn(build_seconds=10, deploy_seconds=10) as r:
        r.add_service(SERVICE, ENV_ID, image="ghcr.io/district/core", live="v1")
        yield r


def make(railway, tmp_path, **railway_keys):  # noqa: ANN001, ANN003
    cfg = parse_config(config(railway.api_url, railway.public_url, **railway_keys))
    clock = Clock(railway)
    p = RailwayPlatform("core", "production", cfg.services["core"], tmp_path, sleep=clock.sleep,
                        monotonic=clock.monotonic)
    return p, clock


def test_every_operation_the_driver_sends_is_valid_against_railways_published_schema():
    for op in OPERATIONS:
        assert problems(op) == [], op


def test_the_stand_in_rejects_what_railway_would_reject():
    assert problems("mutation { deploymentRollback(id: \"d1\") { id } }")  # Boolean!: no selection set
    assert problems("query { deployment(id: \"d1\") { nope } }")
    assert problems("query Q($id: String!) { deployment(id: $id) { id } }", {"id": 7})
    assert problems("query Q($id: String!) { deployment(id: $id) { id } }", {"id": "d1"}) == []


def test_status_comes_from_railway_the_serving_deployment_and_its_image_tag(railway, tmp_path):
    p, _ = make(railway, tmp_path)
    traffic = p.status()
    assert traffic.serving == "blue" and traffic.live_version == "v1"
    assert traffic.slot("green").running is False
    assert railway.refused == []


def test_start_sets_the_image_and_deploys_then_health_follows_the_status_to_success(railway, tmp_path):
    p, clock = make(railway, tmp_path)
    p.status()
    p.start("green", "v2")
    inst = railway.instances[(SERVICE, ENV_ID)]
    assert inst.image == "ghcr.io/district/core" and inst.deployments[-1].version == "v2"
    assert "serviceInstanceUpdate" in railway.root_fields() and "serviceInstanceDeployV2" in railway.root_fields()
    assert p.health("green").ok is False  # INITIALIZING
    assert p.status().serving == "blue"  # Railway keeps v1 serving until v2's healthcheck passed
    clock.sleep(25)
    health = p.health("green")
    assert health.ok and "SUCCESS" in health.detail
    traffic = p.status()
    assert traffic.serving == "green" and traffic.live_version == "v2"
    assert traffic.slot("blue").running and traffic.slot("blue").version == "v1"  # retained: can roll back
    assert railway.refused == []


def test_a_failed_deployment_ends_the_wait_and_the_previous_one_keeps_serving(railway, tmp_path):
    p, clock = make(railway, tmp_path)
    p.status()
    railway.fail_next("FAILED")
    p.start("green", "v2")
    clock.sleep(25)
    health = p.health("green")
    assert not health.ok and health.exited and "FAILED" in health.detail
    assert p.status().serving == "blue" and p.status().live_version == "v1"


def test_shift_to_the_serving_deployment_is_railways_hand_over_and_sends_nothing(railway, tmp_path):
    p, clock = make(railway, tmp_path)
    p.status()
    p.start("green", "v2")
    clock.sleep(25)
    before = len(railway.calls)
    p.shift({"green": 100, "blue": 0})
    assert [c["fields"] for c in railway.calls[before:]] == [["serviceInstance", "deployments"]]


def test_shift_back_is_a_deployment_rollback_followed_to_success(railway, tmp_path):
    p, clock = make(railway, tmp_path)
    p.status()
    p.start("green", "v2")
    clock.sleep(25)
    p.shift({"blue": 100, "green": 0})
    assert "deploymentRollback" in railway.root_fields()
    traffic = p.status()
    assert traffic.serving == "blue" and traffic.live_version == "v1"
    assert httpx.get(railway.public_url + "/api/v1/health").json()["version"] == "v1"
    assert all(s >= 2 for s in clock.slept)  # never polls Railway faster than every 2 s


def test_a_rollback_after_retention_passed_is_refused_in_words(railway, tmp_path):
    p, clock = make(railway, tmp_path)
    p.status()
    p.start("green", "v2")
    clock.sleep(25)
    railway.expire_retention()
    assert p.status().slot("blue").running is False
    with pytest.raises(PlatformError, match="no longer retains"):
        p.shift({"blue": 100, "green": 0})


def test_traffic_cannot_be_split(railway, tmp_path):
    p, _ = make(railway, tmp_path)
    with pytest.raises(PlatformError, match="cannot split traffic"):
        p.shift({"blue": 90, "green": 10})


def test_stop_cancels_a_deployment_still_in_progress(railway, tmp_path):
    p, _ = make(railway, tmp_path)
    p.status()
    p.start("green", "v2")
    p.stop("green", "v2")
    assert "deploymentCancel" in railway.root_fields()
    assert railway.status_of(railway.instances[(SERVICE, ENV_ID)].deployments[-1]) == "REMOVED"
    assert p.status().slot("green").running is False


def test_without_an_image_the_version_is_a_commit_sha(railway, tmp_path):
    railway.add_service(SERVICE, ENV_ID, live="0123abc")
    p, clock = make(railway, tmp_path, image=None)
    p.start("green", "89abcde")
    assert railway.calls[-1]["variables"]["commitSha"] == "89abcde"
    assert "serviceInstanceUpdate" not in railway.root_fields()
    clock.sleep(25)
    assert p.status().live_version == "89abcde"


def test_the_pre_deploy_command_is_set_with_the_image(railway, tmp_path):
    p, _ = make(railway, tmp_path, migrate='"bin/migrate"')
    p.start("green", "v2")
    assert railway.instances[(SERVICE, ENV_ID)].pre_deploy == ["bin/migrate"]
    assert "pre-deploy command `bin/migrate`" in p.migration_note("v2")
    p2, _ = make(railway, tmp_path)
    assert p2.migration_note("v2").startswith("skipped")


def test_a_rate_limit_is_waited_out_with_retry_after(railway, tmp_path):
    p, clock = make(railway, tmp_path)
    railway.rate_limit(2, retry_after=30)
    assert p.status().live_version == "v1"
    assert clock.slept == [30, 30]


def test_a_rate_limit_longer_than_five_minutes_fails_in_words(railway, tmp_path):
    p, clock = make(railway, tmp_path)
    railway.rate_limit(1, retry_after=600)
    with pytest.raises(PlatformError, match="rate limit"):
        p.status()
    assert clock.slept == []


def test_ratelimit_remaining_zero_waits_for_the_reset_before_the_next_request():
    answers = [httpx.Response(200, json={"data": {"x": 1}}, headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1045"}),
               httpx.Response(200, json={"data": {"x": 2}})]
    slept = []
    t = [0.0]
    client = RailwayClient("http://railway.test/graphql/v2", token_env="RAILWAY_TOKEN", token_kind="project",
                           transport=httpx.MockTransport(lambda req: answers.pop(0)), sleep=lambda s: slept.append(s),
                           monotonic=lambda: t[0], wall=lambda: 1000.0)
    import os

    os.environ["RAILWAY_TOKEN"] = "x"
    try:
        assert client.execute("query { x }", {}, what="q") == {"x": 1}
        assert client.execute("query { x }", {}, what="q") == {"x": 2}
    finally:
        del os.environ["RAILWAY_TOKEN"]
    assert slept == [45.0]


def test_5xx_and_network_errors_are_retried_with_backoff(railway, tmp_path):
    p, clock = make(railway, tmp_path)
    railway.fail_5xx(3)
    assert p.status().live_version == "v1"
    assert clock.slept == [1.0, 2.0, 4.0]


def test_a_bad_token_is_refused_in_words_and_never_logged(railway, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("RAILWAY_TOKEN", "not-the-token-9f8e7d")
    p, _ = make(railway, tmp_path)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(PlatformError, match="refused the project token in RAILWAY_TOKEN"):
        p.status()
    assert "not-the-token-9f8e7d" not in caplog.text


def test_an_account_token_is_sent_as_bearer(railway, tmp_path, monkeypatch):
    monkeypatch.setenv("RAILWAY_ACCOUNT", ACCOUNT_TOKEN)
    p, _ = make(railway, tmp_path, token_env='"RAILWAY_ACCOUNT"', token_kind='"account"')
    assert p.status().live_version == "v1"
    assert railway.calls[-1]["headers"]["authorization"] == f"Bearer {ACCOUNT_TOKEN}"


def test_an_unset_token_variable_is_named(railway, tmp_path, monkeypatch):
    monkeypatch.delenv("RAILWAY_TOKEN")
    p, _ = make(railway, tmp_path)
    with pytest.raises(PlatformError, match="RAILWAY_TOKEN is not set"):
        p.status()


def test_a_graphql_error_reaches_the_caller_in_railways_words(railway, tmp_path):
    p, _ = make(railway, tmp_path, service_id='"svc-unknown"')
    with pytest.raises(PlatformError, match="ServiceInstance not found"):
        p.status()


def test_version_of_reads_the_image_tag_or_the_commit():
    assert version_of({"meta": {"image": "ghcr.io/district/core:v2.4.1"}}) == "v2.4.1"
    assert version_of({"meta": {"image": "localhost:5000/core"}}) == "latest"
    assert version_of({"meta": {"commitHash": "abc123"}}) == "abc123"
    assert version_of({"meta": None}) is None


@pytest.mark.parametrize(
    ("railway_keys", "expected"),
    [
        ({"project_id": None}, "services.core.railway.project_id: required key is missing"),
        ({"environments": '{ staging = "env-s" }'}, "no Railway environment ID for 'production'"),
        ({"environments": "{}"}, "services.core.railway.environments: expected a Railway environment ID"),
        ({"public_url": '"core.district.example"'}, "services.core.railway.public_url: expected an http"),
        ({"token_kind": '"team"'}, "services.core.railway.token_kind"),
        ({"poll_interval": '"500ms"'}, "services.core.railway.poll_interval: expected 2s or more"),
        ({"image": '"ghcr.io/district/core:v1"'}, "services.core.railway.image: expected an image name without a tag"),
        ({"service_id": '"has spaces"'}, "services.core.railway.service_id: expected a Railway ID"),
    ],
)
def test_bad_railway_keys_are_named(railway_keys, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(".", r"\.")):
        parse_config(config("https://backboard.railway.com/graphql/v2", "https://core.district.example", **railway_keys))


def test_a_railway_service_needs_its_table():
    data = config("https://x.example/graphql/v2", "https://core.district.example")
    del data["services"]["core"]["railway"]
    with pytest.raises(ConfigError, match="platform 'railway' needs a \\[services.NAME.railway\\] table"):
        parse_config(data)


def test_a_railway_service_cannot_be_a_release_member(monkeypatch):
    monkeypatch.setenv("RAILWAY_TOKEN", "railway-project-token")
    data = config("http://127.0.0.1:9/graphql", "http://127.0.0.1:9")
    data["services"]["web"] = {"platform": "command", "command": {"start": "true", "stop": "true", "shift": "true", "status": "true"}}
    data["releases"] = {"k12": {"services": ["core", "web"]}}
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert "releases.k12.services: core runs on Railway" in str(err.value)
