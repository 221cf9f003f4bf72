"""A Railway service deployed over signed Slack requests against a running recess, with the
schema-validating Railway stand-in: deploy, failed healthcheck, crash during the bake, rollback by
hand, rate limits, a bad token, and a bot restart in the middle of a deploy.

The stand-in's clock moves `tick` seconds on every GraphQL request, so a deployment advances as
recess polls it and no test waits for Railway's real minutes. In-process servers poll every
50 ms through an injected driver; the restarted `recess serve` process polls every 2 s, as
configured (the minimum).
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import textwrap

import httpx
import pytest

from platforms.railway import RailwayPlatform
from storage import deploys as rows
from tests.harness import BASE_CONFIG, ENGINEER, write_config
from tests.railway.standin import PROJECT_TOKEN, RailwayStandIn
from tests.test_window_commands import reply_text

SERVICE_ID = "svc-core"
STAGING = "env-staging"

SMOKE = """\
import os, sys, httpx
if "RAILWAY_TOKEN" in os.environ:
    sys.exit("smoke: the Railway token reached the smoke test")
if os.path.exists(os.path.join(os.path.dirname(__file__), "smoke-fails")):
    sys.exit("smoke: told to fail")
answer = httpx.get(os.environ["RECESS_BASE_URL"] + "/api/v1/health").json()
sys.exit(0 if answer["version"] == os.environ["RECESS_VERSION"] else f"smoke: public URL runs {answer['version']}")
"""


def service_config(railway: RailwayStandIn, tmp_path, health_timeout: str = "60s") -> str:  # noqa: ANN001
    (tmp_path / "smoke.py").write_text(SMOKE)
    return textwrap.dedent(f"""
        [services.core]
        platform = "railway"
        health_path = "/api/v1/health"
        health_timeout = "{health_timeout}"
        smoke = "{sys.executable} smoke.py"

        [services.core.railway]
        project_id = "proj-district"
        service_id = "{SERVICE_ID}"
        environments = {{ production = "env-prod", staging = "{STAGING}" }}
        image = "ghcr.io/district/core"
        public_url = "{railway.public_url}"
        api_url = "{railway.api_url}"
        """)


def base(bake: str = "0s") -> str:
    return BASE_CONFIG.replace('keep_blue = "5m"\nbake_time = "0s"', f'keep_blue = "5m"\nbake_time = "{bake}"')


@pytest.fixture
def railway(monkeypatch):
    monkeypatch.setenv("RAILWAY_TOKEN", PROJECT_TOKEN)
    with RailwayStandIn(build_seconds=10, deploy_seconds=10, tick=4) as r:
        r.add_service(SERVICE_ID, STAGING, image="ghcr.io/district/core", live="v1")
        yield r


@pytest.fixture
def server(server_factory, railway, tmp_path):
    def make(bake: str = "0s", health_timeout: str = "60s"):  # noqa: ANN202
        srv = server_factory(service_config(railway, tmp_path, health_timeout), base=base(bake))
        srv.rt.extras["platform_factory"] = lambda cfg, service, env: RailwayPlatform(
            service, env, cfg.services[service], cfg.state_dir / f"{service}.{env}", poll_interval=0.05)
        rows.insert(srv.rt.store, service="core", env="staging", version="v1", requester=ENGINEER, status="succeeded",
                    traffic_at=dt.datetime(2020, 1, 1, tzinfo=dt.UTC), blue_retired=1)
        return srv

    return make


def thread(slack) -> str:  # noqa: ANN001
    return "\n".join(slack.texts())


def public_version(railway: RailwayStandIn) -> str:
    return httpx.get(railway.public_url + "/api/v1/health").json()["version"]


def test_a_railway_deploy_sets_the_image_follows_the_deployment_and_says_railway_moved_traffic(server, slack, railway):
    srv = server()
    srv.command("/deploy", "core v2 staging")
    slack.wait_for(lambda s: "*core v2* is live in staging" in thread(s), timeout=60)
    text = thread(slack)
    new = railway.serving(SERVICE_ID, STAGING)
    assert new.version == "v2" and public_version(railway) == "v2"
    assert f"v2 is Railway deployment {new.id}" in text
    assert "Railway moved 100% of traffic to v2 after its healthcheck" in text
    assert "no pre-deploy command" in text  # the migrate step says it was skipped, with a warning
    assert "smoke test passed" in text
    assert railway.refused == []  # every query recess sent was valid against Railway's schema
    assert rows.get(srv.rt.store, 2)["status"] == "succeeded"


def test_a_failed_healthcheck_fails_the_deploy_with_the_deployment_id_and_v1_keeps_serving(server, slack, railway):
    srv = server()
    railway.fail_next("FAILED")
    srv.command("/deploy", "core v2 staging")
    slack.wait_for(lambda s: "deploy #2 of v2 failed" in thread(s), timeout=60)
    failed = railway.instances[(SERVICE_ID, STAGING)].deployments[-1]
    text = thread(slack)
    assert f"Railway deployment {failed.id} FAILED; Railway keeps the previous deployment serving" in text
    assert "traffic stayed on blue (v1)" in text.lower()
    assert public_version(railway) == "v1" and rows.get(srv.rt.store, 2)["status"] == "failed"
    assert "deploymentRollback" not in railway.root_fields()  # nothing to undo: Railway never handed over


def test_a_deployment_still_building_at_health_timeout_is_cancelled_and_v1_keeps_serving(server, slack, railway):
    srv = server(health_timeout="2s")
    railway.tick = 0  # Railway never gets past INITIALIZING
    srv.command("/deploy", "core v2 staging")
    slack.wait_for(lambda s: "deploy #2 of v2 failed" in thread(s), timeout=60)
    stuck = railway.instances[(SERVICE_ID, STAGING)].deployments[-1]
    assert "did not answer 200 within 2.0 s" in thread(slack) and f"Railway deployment {stuck.id} is INITIALIZING" in thread(slack)
    assert "deploymentCancel" in railway.root_fields() and railway.status_of(stuck) == "REMOVED"
    assert public_version(railway) == "v1"


def test_a_crash_during_the_bake_rolls_back_automatically_to_the_retained_deployment(server, slack, railway):
    srv = server(bake="60s")
    srv.command("/deploy", "core v2 staging")
    slack.wait_for(lambda s: any(st["name"] == "bake" for st in rows.steps(srv.rt.store, 2)), timeout=60)
    railway.crash(SERVICE_ID, STAGING)
    slack.wait_for(lambda s: "*automatic rollback* of core v2" in thread(s), timeout=60)
    assert "Railway rolled back to v1 and it answers again" in thread(slack)
    assert "deploymentRollback" in railway.root_fields()
    assert public_version(railway) == "v1"
    assert rows.get(srv.rt.store, 2)["status"] == "rolled_back"
    assert railway.refused == []


def test_a_failing_smoke_test_after_the_hand_over_rolls_back(server, slack, railway, tmp_path):
    srv = server()
    (tmp_path / "smoke-fails").write_text("")
    srv.command("/deploy", "core v2 staging")
    slack.wait_for(lambda s: "deploy #2 of v2 failed" in thread(s), timeout=60)
    assert "smoke test exited 1" in thread(slack)
    assert "Railway rolled back to v1" in thread(slack)
    assert public_version(railway) == "v1"


def test_rollback_by_hand_redeploys_the_retained_deployment_and_reports_seconds(server, slack, railway):
    srv = server()
    srv.command("/deploy", "core v2 staging")
    slack.wait_for(lambda s: "*core v2* is live in staging" in thread(s), timeout=60)
    preview = json.dumps(srv.command("/rollback", "core staging").json()["blocks"])
    assert "Railway still retains v1" in preview and "in seconds" in preview
    srv.click("rollback_start", 2, user=ENGINEER, message_ts="1.2")
    slack.wait_for(lambda s: "Rolled back: v1 answers on" in thread(s), timeout=60)
    assert "s after the click (Railway redeployed its retained deployment)" in thread(slack)
    assert public_version(railway) == "v1"
    assert railway.root_fields().count("deploymentRollback") == 1


def test_after_railways_retention_rollback_is_not_possible_there_and_the_image_is_redeployed_instead(server, slack, railway):
    srv = server()
    srv.command("/deploy", "core v2 staging")
    slack.wait_for(lambda s: "*core v2* is live in staging" in thread(s), timeout=60)
    railway.expire_retention()
    preview = json.dumps(srv.command("/rollback", "core staging").json()["blocks"])
    assert "not possible on Railway any more" in preview
    assert "ghcr.io/district/core:v1 through the pipeline" in preview
    srv.click("rollback_start", 2, user=ENGINEER, message_ts="1.2")
    slack.wait_for(lambda s: "*core v1* is live in staging" in thread(s), timeout=60)
    assert public_version(railway) == "v1"
    assert "deploymentRollback" not in railway.root_fields()  # a fresh deployment of the image, not a rollback
    assert railway.instances[(SERVICE_ID, STAGING)].deployments[-1].meta == {"image": "ghcr.io/district/core:v1"}


def test_a_rate_limited_deploy_waits_and_goes_live(server, slack, railway):
    srv = server()
    railway.rate_limit(3, retry_after=1)
    srv.command("/deploy", "core v2 staging")
    slack.wait_for(lambda s: "*core v2* is live in staging" in thread(s), timeout=60)
    assert railway.root_fields().count("<429>") == 3
    assert "Railway's API rate limit: waiting 1 s, as Railway asked" in thread(slack)
    assert rows.get(srv.rt.store, 2)["status"] == "succeeded"


def test_a_bad_token_fails_the_deploy_in_words_changes_nothing_and_is_never_shown(server, slack, railway, monkeypatch):
    monkeypatch.setenv("RAILWAY_TOKEN", "wrong-token-5a4b3c")
    srv = server()
    srv.command("/deploy", "core v2 staging")
    slack.wait_for(lambda s: "deploy #2 failed before it started" in thread(s), timeout=60)
    assert "Railway refused the project token in RAILWAY_TOKEN" in thread(slack)
    assert "wrong-token-5a4b3c" not in thread(slack)
    assert len(railway.instances[(SERVICE_ID, STAGING)].deployments) == 1  # nothing was deployed
    assert public_version(railway) == "v1"


def test_a_graphql_error_fails_the_deploy_at_its_step_in_railways_words_and_nothing_else_changes(server, slack, railway):
    srv = server()
    railway.refuse("serviceInstanceDeployV2", "You do not have permission to deploy this service")
    srv.command("/deploy", "core v2 staging")
    slack.wait_for(lambda s: "deploy #2 of v2 failed" in thread(s), timeout=60)
    text = thread(slack)
    assert ("*start_green* failed" in text and "Railway answered serviceInstanceDeployV2 with an error: "
            "You do not have permission to deploy this service" in text)
    assert len(railway.instances[(SERVICE_ID, STAGING)].deployments) == 1  # no deployment was made
    assert public_version(railway) == "v1"
    steps = [s["name"] for s in rows.steps(srv.rt.store, 2)]
    assert steps[-1] == "start_green" and "migrate" not in steps


def test_canary_on_railway_is_refused_at_deploy_and_nothing_is_stored(server, slack, railway):
    srv = server()
    text = reply_text(srv.command("/deploy", "core v2 staging --canary 10,50"))
    assert "Railway, which cannot split traffic" in text
    assert rows.get(srv.rt.store, 2) is None


def test_an_unset_token_variable_is_named_at_deploy(server, slack, railway, monkeypatch):
    srv = server()
    monkeypatch.delenv("RAILWAY_TOKEN")
    text = reply_text(srv.command("/deploy", "core v2 staging"))
    assert "RAILWAY_TOKEN (services.core.railway.token_env) is not set" in text
    assert rows.get(srv.rt.store, 2) is None


def test_config_check_names_an_unset_token_variable(railway, tmp_path, monkeypatch):
    config = write_config(tmp_path, service_config(railway, tmp_path))
    env = {k: v for k, v in __import__("os").environ.items() if k != "RAILWAY_TOKEN"}
    ran = subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(config), "config", "check"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert ran.returncode != 0
    assert "services.core.railway.token_env: the variable RAILWAY_TOKEN is not set" in ran.stderr
    ok = subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(config), "config", "check"],
                        capture_output=True, text=True, env={**env, "RAILWAY_TOKEN": PROJECT_TOKEN}, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "services.core.health_timeout is 60 s" in ok.stderr  # a warning: Railway deployments take longer


@pytest.mark.e2e
def test_a_bot_killed_mid_deploy_follows_the_railway_deployment_to_its_end_after_restart(railway, slack, tmp_path):
    from storage.db import Store
    from tests.kit.serve import Bot, wait_for

    config = write_config(tmp_path, service_config(railway, tmp_path), base=base())
    store = Store(config.parent / "recess.db")
    rows.insert(store, service="core", env="staging", version="v1", requester=ENGINEER, status="succeeded",
                traffic_at=dt.datetime(2020, 1, 1, tzinfo=dt.UTC), blue_retired=1)
    railway.tick = 0  # the deployment stays where it is while no one is driving
    bots = [Bot(config, slack.api_url, crash_at="health")]
    try:
        try:
            bots[0].sender.command("/deploy", "core v2 staging", user=ENGINEER)
        except httpx.HTTPError:
            pass  # the bot may die before it answers: the request is stored before the pipeline starts
        wait_for(lambda: bots[0].proc.poll() is not None, what="the bot to be killed at the health step")
        deployment = railway.instances[(SERVICE_ID, STAGING)].deployments[-1]
        assert railway.status_of(deployment) in ("INITIALIZING", "BUILDING")
        assert rows.get(store, 2)["status"] == "running"
        railway.tick = 5  # from now on the deployment advances as recess polls it (every 2 s)
        bots.append(Bot(config, slack.api_url))
        final = wait_for(lambda: (rows.get(store, 2) or {}).get("status") in ("failed", "succeeded", "needs_attention")
                         and rows.get(store, 2), timeout=120, what="recovery to finish the deploy")
    finally:
        for b in bots:
            b.stop()
    assert final["status"] == "succeeded"
    text = thread(slack)
    assert f"Railway deployment {deployment.id} of v2 is still" in text and "following it to its end" in text
    assert "Railway finished the deployment of v2 and moved traffic to it" in text
    assert public_version(railway) == "v2"
    assert railway.root_fields().count("serviceInstanceDeployV2") == 1  # nothing ran twice
    assert railway.refused == []


@pytest.mark.e2e
def test_a_bot_killed_after_asking_railway_to_roll_back_follows_the_rollback_and_says_it_happened(railway, slack, tmp_path):
    from storage.db import Store
    from tests.harness import card_value
    from tests.kit.serve import Bot, wait_for

    config = write_config(tmp_path, service_config(railway, tmp_path), base=base())
    store = Store(config.parent / "recess.db")
    rows.insert(store, service="core", env="staging", version="v1", requester=ENGINEER, status="succeeded",
                traffic_at=dt.datetime(2020, 1, 1, tzinfo=dt.UTC), blue_retired=1)
    bots = [Bot(config, slack.api_url)]
    try:
        bots[0].sender.command("/deploy", "core v2 staging", user=ENGINEER)
        wait_for(lambda: (rows.get(store, 2) or {}).get("status") == "succeeded", timeout=120, what="v2 deployed")
        bots[0].stop()
        bots.append(Bot(config, slack.api_url, crash_at="deploymentRollback:after"))
        railway.tick = 0  # Railway's rollback deployment stays where it is while no one is driving
        try:
            bots[1].sender.action("rollback_start", card_value(store, 2), user=ENGINEER, ephemeral=True)
        except httpx.HTTPError:
            pass  # the bot dies inside the click
        wait_for(lambda: bots[1].proc.poll() is not None, what="the bot to be killed after deploymentRollback")
        rolling = railway.instances[(SERVICE_ID, STAGING)].deployments[-1]
        assert rolling.version == "v1" and railway.status_of(rolling) in ("INITIALIZING", "BUILDING")
        assert rows.get(store, 3)["status"] == "running" and public_version(railway) == "v2"
        railway.tick = 5  # from now on the rollback deployment advances as recess polls it
        bots.append(Bot(config, slack.api_url))
        final = wait_for(lambda: (rows.get(store, 3) or {}).get("status") in ("failed", "succeeded", "needs_attention")
                         and rows.get(store, 3), timeout=120, what="recovery to finish the rollback")
    finally:
        for b in bots:
            b.stop()
    assert final["status"] == "succeeded"
    assert rows.get(store, 2)["status"] == "rolled_back"
    text = thread(slack)
    assert (f"the bot was killed after asking Railway to roll back to v1. Railway's rollback deployment {rolling.id} is"
            in text and "following it to its end" in text)
    assert f"Railway's rollback deployment {rolling.id} finished (SUCCESS) and serves v1" in text
    assert "nothing changed" not in text
    assert public_version(railway) == "v1" and railway.status_of(rolling) == "SUCCESS"
    assert railway.root_fields().count("deploymentRollback") == 1  # nothing ran twice
    assert railway.refused == []


def _rollback_left_running(srv, railway: RailwayStandIn) -> tuple[dict, str]:  # noqa: ANN001
    """A rollback of deploy #2 as a bot killed right after `deploymentRollback` leaves it: the row
    running with its slots, Railway's new deployment made, its ID never read."""
    from bot.deploying import deployer_of

    live = rows.get(srv.rt.store, 2)
    platform = deployer_of(srv.rt).platform_for("core", "staging")
    retained = platform.deployment_in(live["blue_slot"])
    rows.insert(srv.rt.store, kind="rollback", service="core", env="staging", version="v1", previous_version="v2",
                requester=ENGINEER, status="running", rollback_of=2, channel=live["channel"], card_ts=live["card_ts"],
                blue_slot=live["green_slot"], green_slot=live["blue_slot"], blue_version="v2", approvals_needed=0)
    platform.client.execute("mutation R($id: String!) { deploymentRollback(id: $id) }", {"id": retained},
                            what="deploymentRollback")
    return live, retained


def test_a_rollback_deployment_that_fails_after_a_crash_is_reported_failed_and_v1_stays_retained(server, slack, railway):
    from bot.deploying import deployer_of
    from commands.recovery import recover_all

    srv = server()
    srv.command("/deploy", "core v2 staging")
    slack.wait_for(lambda s: "*core v2* is live in staging" in thread(s), timeout=60)
    railway.fail_next("FAILED")
    live, retained = _rollback_left_running(srv, railway)
    failed = railway.instances[(SERVICE_ID, STAGING)].deployments[-1]
    serving = railway.serving(SERVICE_ID, STAGING)
    recover_all(deployer_of(srv.rt))
    said = f"Railway's rollback deployment {failed.id} of v1 ended FAILED; deployment {serving.id} (v2, SUCCESS) serves"
    slack.wait_for(lambda s: said in thread(s), timeout=60)
    final = rows.get(srv.rt.store, 3)
    assert final["status"] == "failed" and said in final["outcome"]
    assert "nothing changed" not in thread(slack)
    assert rows.get(srv.rt.store, 2)["status"] == "succeeded" and public_version(railway) == "v2"
    platform = deployer_of(srv.rt).platform_for("core", "staging")
    assert platform.deployment_in(live["blue_slot"]) == retained  # another click can still roll back to v1
    assert "Railway still retains v1" in json.dumps(srv.command("/rollback", "core staging").json()["blocks"])


def test_needs_attention_on_railway_names_the_deployments_and_railways_way_back_not_haproxy(server, slack, railway):
    from bot.deploying import deployer_of
    from commands.pipeline import end_attention

    srv = server()
    srv.command("/deploy", "core v2 staging")
    slack.wait_for(lambda s: "*core v2* is live in staging" in thread(s), timeout=60)
    live = rows.get(srv.rt.store, 2)
    serving = railway.serving(SERVICE_ID, STAGING)
    row_id = rows.insert(srv.rt.store, service="core", env="staging", version="v3", requester=ENGINEER,
                         status="running", channel=live["channel"], card_ts=live["card_ts"], approvals_needed=0)
    end_attention(deployer_of(srv.rt), rows.get(srv.rt.store, row_id), "recess saw something it cannot explain")
    slack.wait_for(lambda s: "*needs attention*" in thread(s), timeout=30)
    said = next(t for t in slack.texts() if "*needs attention*" in t)
    assert f"Railway shows deployment {serving.id} (v2, SUCCESS) serving" in said
    assert f"Open service {SERVICE_ID} (project proj-district, environment {STAGING}) in Railway's dashboard" in said
    assert "Rollback on that deployment there (Railway's `deploymentRollback`)" in said
    assert "`recess down` does not apply to Railway services" in said
    assert f"closes deploy #{row_id}" in said
    assert "HAProxy" not in said and "both slots" not in said
