"""`recess deploy --wait`, `recess rollback --wait` and `recess window check --server`, each run as
the real `recess` command against a running recess: exit codes 0, 1, 2 and 3, and retries that
reuse their Idempotency-Key."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bot import ci
from tests.test_api import (  # noqa: F401 (the fixtures)
    CI_TOKEN,
    READ_TOKEN,
    RELEASE_MEMBERS,
    api_server,
    approve_in_slack,
    auth,
    release_api,
)

RECESS = str(Path(sys.executable).parent / "recess")


def environment(srv, token: str = CI_TOKEN, **env: str) -> dict[str, str]:  # noqa: ANN001
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "RECESS_"))}
    environ.update({"RECESS_URL": srv.url, "RECESS_TOKEN": token, **env})
    return environ


def recess(srv, *args: str, token: str = CI_TOKEN, **env: str) -> subprocess.CompletedProcess:  # noqa: ANN001
    return subprocess.run([RECESS, *args], env=environment(srv, token, **env), capture_output=True, text=True, timeout=120)


def test_deploy_wait_exits_0_when_the_version_is_live(api_server):
    srv = api_server()
    run = recess(srv, "deploy", "web", "v2", "--env", "staging", "--wait", "--interval", "0.1", "--sha", "abc1234",
                 GITHUB_ACTOR="octocat")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "web v2 is live in staging" in run.stdout
    assert "  start_green: " in run.stdout and "  shift: " in run.stdout  # one line per step as it moved
    d = srv.http.get("/api/v1/deploys", headers=auth()).json()["deploys"][0]
    assert d["requested_by"] == "octocat" and d["sha"] == "abc1234" and d["status"] == "succeeded"


def test_deploy_wait_exits_1_when_the_deploy_fails(api_server):
    srv = api_server()
    srv.fake.fail["health"] = "503 from /health"
    run = recess(srv, "deploy", "web", "v2", "--env", "staging", "--wait", "--interval", "0.1")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "failed" in run.stdout and "health: failed" in run.stdout


def test_deploy_exits_2_on_usage_and_auth_errors(api_server):
    srv = api_server()
    bad_token = recess(srv, "deploy", "web", "v2", "--wait", token="not-a-token")
    assert bad_token.returncode == 2 and "unknown API token" in bad_token.stderr
    no_scope = recess(srv, "deploy", "web", "v2", "--wait", token=READ_TOKEN)
    assert no_scope.returncode == 2 and "no 'deploy' scope" in no_scope.stderr
    unknown = recess(srv, "deploy", "gradebook", "v2", "--wait")
    assert unknown.returncode == 2 and "unknown service gradebook" in unknown.stderr
    no_token = recess(srv, "deploy", "web", "v2", token="")
    assert no_token.returncode == 2 and "set RECESS_TOKEN" in no_token.stderr
    bad_timeout = recess(srv, "deploy", "web", "v2", "--wait", "--timeout", "soon")
    assert bad_timeout.returncode == 2 and "--timeout" in bad_timeout.stderr
    assert srv.rt.store.execute("SELECT count(*) FROM deploys WHERE version = 'v2'").fetchone()[0] == 0


def test_deploy_wait_exits_3_when_it_times_out_waiting_for_approval(api_server):
    srv = api_server()
    run = recess(srv, "deploy", "web", "v2", "--env", "production", "--wait", "--timeout", "1s", "--interval", "0.2")
    assert run.returncode == 3, run.stdout + run.stderr
    assert "still waits for approval; it keeps its place" in run.stdout
    d = srv.http.get("/api/v1/deploys", headers=auth()).json()["deploys"][0]
    assert d["status"] == "pending"  # nothing was cancelled by the timeout


def test_rerunning_the_same_ci_step_answers_the_same_deploy(api_server):
    srv = api_server()
    env = {"GITHUB_RUN_ID": "4242", "GITHUB_RUN_ATTEMPT": "1"}
    first = recess(srv, "deploy", "web", "v2", **env)
    again = recess(srv, "deploy", "web", "v2", **env)
    assert first.returncode == again.returncode == 0
    assert first.stdout.split(":")[0] == again.stdout.split(":")[0]  # "deploy #N web v2 (production)"
    assert srv.rt.store.execute("SELECT count(*) FROM deploys WHERE version = 'v2'").fetchone()[0] == 1


def test_rollback_wait_exits_0_when_traffic_is_back(api_server):
    srv = api_server()
    assert recess(srv, "deploy", "web", "v2", "--env", "staging", "--wait", "--interval", "0.1").returncode == 0
    run = recess(srv, "rollback", "web", "--env", "staging", "--wait", "--interval", "0.1", "--reason", "smoke failed")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "web v1 is live in staging" in run.stdout
    assert srv.fake.weights == {"blue": 100, "green": 0}
    nothing = recess(srv, "rollback", "web", "--env", "production", "--wait")
    assert nothing.returncode == 1 and "no previous good version" in nothing.stderr


def test_a_lost_answer_is_retried_with_the_same_idempotency_key(api_server):
    """The first POST reaches recess but its answer is lost (a read timeout): the retry carries the
    same key and gets the same deploy, so CI never makes two."""
    srv = api_server()
    seen_keys: list[str] = []
    real = httpx.Client(base_url=srv.url, timeout=10)

    def flaky(request: httpx.Request) -> httpx.Response:
        seen_keys.append(request.headers.get("idempotency-key", ""))
        resp = real.request(request.method, request.url.path, content=request.content, headers=dict(request.headers))
        if len(seen_keys) == 1:
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return httpx.Response(resp.status_code, content=resp.content, headers={"content-type": "application/json"})

    client = ci.Client(srv.url, CI_TOKEN, sleep=lambda s: None)
    client.http = httpx.Client(base_url=srv.url, transport=httpx.MockTransport(flaky),
                               headers={"Authorization": f"Bearer {CI_TOKEN}"})
    status, body = client.call("POST", "/api/v1/deploys", json={"service": "web", "version": "v2"},
                               headers={"Idempotency-Key": "cli-fixed-key"})
    assert status == 200 and body["version"] == "v2"  # the replay of the stored request
    assert seen_keys == ["cli-fixed-key", "cli-fixed-key"]
    assert srv.rt.store.execute("SELECT count(*) FROM deploys WHERE version = 'v2'").fetchone()[0] == 1


def test_window_check_through_the_api_says_until_when_it_is_safe(api_server):
    srv = api_server()  # the clock is after school in every tenant's zone
    run = recess(srv, "window", "check")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "safe at" in run.stdout and "until" in run.stdout and "lincoln-high starts school" in run.stdout
    short = recess(srv, "window", "check", "--for", "400h")
    assert short.returncode == 1 and "less than the 2 weeks" not in short.stdout and "refused: the window closes" in short.stdout
    assert recess(srv, "window", "check", "--for", "30m").returncode == 0
    blocked = recess(srv, "window", "check", "--at", "2027-03-16T09:30:00-04:00")
    assert blocked.returncode == 1 and "blocked at" in blocked.stdout
    bad = recess(srv, "window", "check", "--at", "tuesday")
    assert bad.returncode == 2 and "at:" in bad.stderr


def release_waiting_for_approval(srv, version: str) -> int:  # noqa: ANN001
    """The id of the release of `version` once `recess deploy` has stored it."""
    deadline = time.monotonic() + 60
    while True:
        found = srv.rt.store.row("SELECT id FROM deploys WHERE kind = 'release' AND version = ?", (version,))
        if found:
            return found["id"]
        assert time.monotonic() < deadline, f"no release of {version} was requested"
        time.sleep(0.05)


def test_deploy_wait_of_a_release_name_exits_0_once_every_member_is_live(release_api):
    srv = release_api()
    cli = subprocess.Popen([RECESS, "deploy", "k12", "v2.4.1", "--env", "production", "--wait", "--interval", "0.1"],
                           env=environment(srv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        approve_in_slack(srv, release_waiting_for_approval(srv, "v2.4.1"))
        out, err = cli.communicate(timeout=120)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 0, out + err
    assert "release #" in out and "k12 v2.4.1 is live in production" in out
    for member in RELEASE_MEMBERS:
        assert f"  {member}: v1 -> v2.4.1 (succeeded)" in out
    d = srv.http.get("/api/v1/deploys", headers=auth()).json()["deploys"][0]
    assert d["release"] == "k12" and d["status"] == "succeeded"


def test_deploy_of_named_release_members_requests_only_those(release_api):
    srv = release_api()
    run = recess(srv, "deploy", "k12", "core=v2.4.1", "web=v2.4.0")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "release #" in run.stdout and "core=v2.4.1 web=v2.4.0" in run.stdout and "pending" in run.stdout
    d = srv.http.get("/api/v1/deploys", headers=auth()).json()["deploys"][0]
    assert [(m["service"], m["version"]) for m in d["members"]] == [("core", "v2.4.1"), ("web", "v2.4.0")]
    outside = recess(srv, "deploy", "k12", "core=v3", "lunch=v3")
    assert outside.returncode == 2 and "versions.lunch" in outside.stderr
    mixed = recess(srv, "deploy", "k12", "v3", "core=v3")
    assert mixed.returncode == 2 and "not both" in mixed.stderr


def test_rollback_wait_of_a_release_name_exits_0_when_every_member_is_back(release_api):
    srv = release_api()
    d = srv.http.post("/api/v1/deploys", headers=auth(), json={"release": "k12", "version": "v2"}).json()
    approve_in_slack(srv, d["id"])
    deadline = time.monotonic() + 60
    while srv.http.get(f"/api/v1/deploys/{d['id']}", headers=auth()).json()["status"] != "succeeded":
        assert time.monotonic() < deadline, "the release did not succeed"
        time.sleep(0.05)
    run = recess(srv, "rollback", "k12", "--wait", "--interval", "0.1", "--reason", "smoke failed")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "k12 v1 is live in production" in run.stdout
    assert srv.http.get(f"/api/v1/deploys/{d['id']}", headers=auth()).json()["status"] == "rolled_back"
