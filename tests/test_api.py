"""The REST API over real HTTP against a running recess with the fake Slack: CI deploys approved
by people in Slack, idempotent retries, cancel, rollback, the listings, and every bad input."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import hashlib
import json
import time

import pytest

from storage import deploys as rows
from tests.fake_platform import FakePlatform
from tests.harness import APPROVER_1, ENGINEER, FAKE_SERVICE, FakeClock
from tests.test_deploy_commands import card_post
from tests.test_window_commands import AFTER_SCHOOL

CI_TOKEN = "recess_ci_token_for_tests_0001"
READ_TOKEN = "recess_read_token_for_tests_02"
OTHER_TOKEN = "recess_other_token_for_test_03"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


API_CONFIG = FAKE_SERVICE + f"""
[[api.tokens]]
name = "github-actions"
token_sha256 = "{digest(CI_TOKEN)}"
scopes = ["deploy", "rollback", "read"]

[[api.tokens]]
name = "dashboard"
token_sha256 = "{digest(READ_TOKEN)}"
scopes = ["read"]

[[api.tokens]]
name = "other-ci"
token_sha256 = "{digest(OTHER_TOKEN)}"
scopes = ["deploy", "read"]
"""


def auth(token: str = CI_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def api_server(server_factory, slack):
    """A recess with the web service live at v1 in production on a fake platform, and three tokens."""

    def make(extra: str = "", clock=None, live="v1"):  # noqa: ANN001
        srv = server_factory(API_CONFIG + extra, clock=clock or FakeClock(AFTER_SCHOOL))
        srv.fake = FakePlatform(live=live)
        srv.rt.extras["platform_factory"] = lambda cfg, service, env: srv.fake
        if live:
            for env in ("production", "staging"):
                rows.insert(srv.rt.store, service="web", env=env, version=live, requester=ENGINEER,
                            status="succeeded", traffic_at=dt.datetime(2027, 1, 1, tzinfo=dt.UTC), blue_retired=1)
        return srv

    return make


def wait_status(srv, deploy_id: int, *statuses: str, timeout: float = 30.0) -> dict:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while True:
        body = srv.http.get(f"/api/v1/deploys/{deploy_id}", headers=auth()).json()
        if body["status"] in statuses:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"deploy #{deploy_id} stayed {body['status']}, not {statuses}")
        time.sleep(0.05)


def counts(srv) -> tuple[int, int, int]:  # noqa: ANN001
    one = srv.rt.store.execute
    return (one("SELECT count(*) FROM deploys").fetchone()[0], one("SELECT count(*) FROM audit").fetchone()[0],
            one("SELECT count(*) FROM api_idempotency").fetchone()[0])


def test_ci_deploy_is_approved_in_slack_and_polled_to_succeeded(api_server, slack):
    srv = api_server()
    resp = srv.http.post("/api/v1/deploys", headers=auth(), json={
        "service": "web", "version": "v2.4.1", "env": "production", "sha": "0123abcDEF4567",
        "committed_at": "2027-03-16T20:00:00-04:00", "requested_by": "octocat", "reason": "spring release"})
    assert resp.status_code == 202, resp.text
    d = resp.json()
    assert d["status"] == "pending" and d["token"] == "github-actions" and d["requested_by"] == "octocat"
    assert d["sha"] == "0123abcdef4567" and d["committed_at"] == "2027-03-17T00:00:00+00:00"
    assert d["approvals_needed"] == 1 and d["live_version"] == "v1"
    card = card_post(slack, d["id"], srv.rt.store)
    assert "API token `github-actions` for octocat" in json.dumps(card.params["blocks"])
    assert wait_status(srv, d["id"], "pending")["card_url"].startswith("https://slack.com/archives/C0DEPLOYS/p")
    srv.click("deploy_approve", d["id"], user=APPROVER_1, message_ts=rows.get(srv.rt.store, d["id"])["card_ts"])
    done = wait_status(srv, d["id"], "succeeded", "failed")
    assert done["status"] == "succeeded" and done["live_version"] == "v2.4.1"
    assert [a["user"] for a in done["approvals"]] == [APPROVER_1]
    assert {"start_green", "health", "shift"} <= {s["name"] for s in done["steps"]}
    assert all(s["finished_at"] and s["status"] != "failed" for s in done["steps"])
    audit = srv.rt.store.row("SELECT * FROM audit WHERE action = 'deploy.request'")
    assert audit["actor"] == "api:github-actions" and audit["command"] == "api"
    srv.rt.outbox.flush()
    assert any("Reason given by github-actions: spring release" in t for t in slack.texts())


def test_a_token_never_approves_and_zero_approvals_start_at_once(api_server):
    srv = api_server()
    assert srv.rt.policy.can_approve("api:github-actions", ENGINEER).allowed is False
    resp = srv.http.post("/api/v1/deploys", headers=auth(), json={"service": "web", "version": "v2", "env": "staging"})
    assert resp.status_code == 202
    assert wait_status(srv, resp.json()["id"], "succeeded", "failed")["status"] == "succeeded"


def test_a_retry_with_the_same_idempotency_key_answers_the_same_deploy(api_server):
    srv = api_server()
    body = {"service": "web", "version": "v2", "env": "production"}
    key = {"Idempotency-Key": "run-1234-attempt-1"}
    first = srv.http.post("/api/v1/deploys", headers={**auth(), **key}, json=body)
    again = srv.http.post("/api/v1/deploys", headers={**auth(), **key}, json=dict(reversed(list(body.items()))))
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    other = srv.http.post("/api/v1/deploys", headers={**auth(), **key}, json={**body, "version": "v3"})
    assert other.status_code == 409 and "another body" in other.json()["error"]
    assert srv.rt.store.execute("SELECT count(*) FROM deploys WHERE version IN ('v2', 'v3')").fetchone()[0] == 1
    # Keys belong to their token: another token's same key is a new request.
    theirs = srv.http.post("/api/v1/deploys", headers={**auth(OTHER_TOKEN), **key}, json={**body, "version": "v3"})
    assert theirs.status_code == 202 and theirs.json()["id"] != first.json()["id"]


def test_concurrent_retries_with_one_key_make_one_deploy(api_server):
    srv = api_server()
    body = {"service": "web", "version": "v9", "env": "production"}
    headers = {**auth(), "Idempotency-Key": "same-key"}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: srv.http.post("/api/v1/deploys", headers=headers, json=body), range(8)))
    assert sorted({a.status_code for a in answers}) in ([200, 202], [202])
    assert len({a.json()["id"] for a in answers}) == 1
    assert srv.rt.store.execute("SELECT count(*) FROM deploys WHERE version = 'v9'").fetchone()[0] == 1


def test_a_deploy_of_a_held_service_waits_in_the_queue(api_server):
    srv = api_server()
    import threading

    gate = threading.Event()
    started = srv.fake.start

    def slow_start(slot: str, version: str) -> None:
        gate.wait(30)
        started(slot, version)

    srv.fake.start = slow_start
    first = srv.http.post("/api/v1/deploys", headers=auth(), json={"service": "web", "version": "v2", "env": "staging"})
    wait_status(srv, first.json()["id"], "running")
    second = srv.http.post("/api/v1/deploys", headers=auth(), json={"service": "web", "version": "v3", "env": "staging"})
    assert second.status_code == 202
    assert wait_status(srv, second.json()["id"], "approved")["status"] == "approved"  # waits behind #first
    held = srv.http.get("/api/v1/services", headers=auth()).json()["services"]
    staging = next(s for s in held if s["env"] == "staging")
    assert staging["in_progress"]["status"] in ("running", "approved")
    gate.set()
    assert wait_status(srv, second.json()["id"], "succeeded", "failed")["status"] == "succeeded"
    assert wait_status(srv, first.json()["id"], "succeeded")["status"] == "succeeded"


def test_cancel_takes_back_the_tokens_own_deploy_only(api_server):
    srv = api_server()
    mine = srv.http.post("/api/v1/deploys", headers=auth(), json={"service": "web", "version": "v2"}).json()
    theirs = srv.http.post("/api/v1/deploys", headers=auth(OTHER_TOKEN), json={"service": "web", "version": "v3"}).json()
    refused = srv.http.post(f"/api/v1/deploys/{theirs['id']}/cancel", headers=auth())
    assert refused.status_code == 403 and "only its own" in refused.json()["error"]
    done = srv.http.post(f"/api/v1/deploys/{mine['id']}/cancel", headers=auth())
    assert done.status_code == 200 and done.json()["status"] == "cancelled"
    twice = srv.http.post(f"/api/v1/deploys/{mine['id']}/cancel", headers=auth())
    assert twice.status_code == 409 and "cancelled" in twice.json()["error"]
    assert srv.http.post("/api/v1/deploys/999/cancel", headers=auth()).status_code == 404
    assert srv.http.post(f"/api/v1/deploys/{mine['id']}/cancel", headers=auth(READ_TOKEN)).status_code == 403


def test_rollback_through_the_api_flips_traffic_back(api_server, slack):
    srv = api_server()
    d = srv.http.post("/api/v1/deploys", headers=auth(), json={"service": "web", "version": "v2", "env": "staging"}).json()
    wait_status(srv, d["id"], "succeeded")
    services = srv.http.get("/api/v1/services", headers=auth(READ_TOKEN)).json()["services"]
    staging = next(s for s in services if s["env"] == "staging")
    assert staging["live_version"] == "v2" and staging["kept_version"] == "v1" and staging["kept_until"]
    refused = srv.http.post("/api/v1/services/web/rollback", headers=auth(OTHER_TOKEN), json={"env": "staging"})
    assert refused.status_code == 403 and "rollback" in refused.json()["error"]
    resp = srv.http.post("/api/v1/services/web/rollback", headers=auth(),
                         json={"env": "staging", "reason": "smoke test failed", "requested_by": "octocat"})
    assert resp.status_code == 202, resp.text
    rb = resp.json()
    assert rb["kind"] == "rollback" and rb["version"] == "v1" and rb["rollback_of"] == d["id"]
    assert wait_status(srv, rb["id"], "succeeded")["live_version"] == "v1"
    assert wait_status(srv, d["id"], "rolled_back")["status"] == "rolled_back"
    assert srv.fake.weights == {"blue": 100, "green": 0}
    again = srv.http.post("/api/v1/services/web/rollback", headers=auth(), json={"env": "staging"})
    assert again.status_code == 202 and again.json()["version"] == "v2"  # undoing the rollback, as /rollback does
    audit = srv.rt.store.row("SELECT * FROM audit WHERE action = 'rollback.start' ORDER BY id LIMIT 1")
    assert audit["actor"] == "api:github-actions" and "smoke test failed" in audit["after"]


def test_listing_filters_and_orders_newest_first(api_server):
    srv = api_server()
    for version in ("v2", "v3"):
        srv.http.post("/api/v1/deploys", headers=auth(), json={"service": "web", "version": version})
    listed = srv.http.get("/api/v1/deploys", headers=auth(READ_TOKEN), params={"service": "web", "status": "pending"}).json()
    assert [d["version"] for d in listed["deploys"]] == ["v3", "v2"]
    one = srv.http.get("/api/v1/deploys", headers=auth(READ_TOKEN), params={"limit": "1"}).json()["deploys"]
    assert len(one) == 1 and one[0]["version"] == "v3"


def test_the_openapi_document_describes_every_route_and_the_answers(api_server):
    srv = api_server()
    doc = srv.http.get("/api/v1/openapi.json").json()
    assert doc["openapi"] == "3.1.0"
    assert {"/api/v1/deploys", "/api/v1/deploys/{deploy_id}", "/api/v1/deploys/{deploy_id}/cancel",
            "/api/v1/services/{service}/rollback", "/api/v1/services", "/api/v1/window"} <= set(doc["paths"])
    d = srv.http.post("/api/v1/deploys", headers=auth(), json={"service": "web", "version": "v2"}).json()
    assert set(doc["components"]["schemas"]["Deploy"]["required"]) == set(d)
    assert set(doc["components"]["schemas"]["DeployRequest"]["properties"]) == {
        "service", "release", "version", "versions", "env", "sha", "committed_at", "requested_by", "reason"}
    assert "/api/v1/releases/{release}/rollback" in doc["paths"]
    assert {"release", "members", "release_id"} <= set(doc["components"]["schemas"]["Deploy"]["properties"])
    assert set(doc["components"]["schemas"]["Member"]["properties"]) == {
        "service", "version", "previous_version", "status", "deploy_id"}

    def refs(node):  # noqa: ANN001, ANN202
        if isinstance(node, dict):
            yield from ([node["$ref"]] if "$ref" in node else [])
            for v in node.values():
                yield from refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)

    names = {f"#/components/schemas/{n}" for n in doc["components"]["schemas"]}
    assert set(refs(doc)) <= names  # every reference resolves inside the document
    window = srv.http.get("/api/v1/window").json()
    assert set(window) == set(doc["components"]["schemas"]["Window"]["properties"])


BAD = [
    ({}, {"service": "web", "version": "v2"}, 401, "missing Authorization"),
    ({"Authorization": "Bearer nope"}, {"service": "web", "version": "v2"}, 401, "unknown API token"),
    ({"Authorization": "Basic abc"}, {"service": "web", "version": "v2"}, 401, "Bearer"),
    (auth(READ_TOKEN), {"service": "web", "version": "v2"}, 403, "no 'deploy' scope"),
    (auth(), {"service": "gradebook", "version": "v2"}, 400, "unknown service gradebook"),
    (auth(), {"service": "web", "version": "v2", "env": "qa"}, 400, "unknown environment qa"),
    (auth(), {"service": "web", "version": "v 2"}, 400, "is not a version"),
    (auth(), {"service": "web", "version": "v2", "colour": "red"}, 400, "colour: unknown field"),
    (auth(), {"service": "web", "version": 2}, 400, "version: expected a string, got 2"),
    (auth(), {"service": "web"}, 400, "version: required"),
    (auth(), {"service": "web", "version": "v2", "sha": "xyz"}, 400, "sha: expected a git SHA"),
    (auth(), {"service": "web", "version": "v2", "committed_at": "yesterday"}, 400, "committed_at: expected an ISO 8601"),
    (auth(), {"service": "web", "version": "v2", "committed_at": "2027-03-16T20:00:00"}, 400, "committed_at: expected an ISO 8601 instant with an offset"),
    (auth(), ["web", "v2"], 400, "must be a JSON object"),
    (auth(), "not json", 400, "not valid JSON"),
    (auth(), {"service": "web", "version": "v2", "reason": "x" * 70_000}, 413, "limit"),
    (auth(), {"service": "web", "version": "v1"}, 409, "already live"),
    ({**auth(), "Idempotency-Key": "has space"}, {"service": "web", "version": "v2"}, 400, "Idempotency-Key"),
]


@pytest.mark.parametrize(("headers", "body", "status", "message"), BAD, ids=[b[3] for b in BAD])
def test_bad_input_is_refused_with_a_message_naming_it_and_stores_nothing(api_server, headers, body, status, message):
    srv = api_server()
    before = counts(srv)
    content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    resp = srv.http.post("/api/v1/deploys", headers={**headers, "Content-Type": "application/json"}, content=content)
    assert resp.status_code == status, resp.text
    assert message in resp.json()["error"]
    assert counts(srv) == before


@pytest.mark.parametrize(("path", "headers", "status", "message"), [
    ("/api/v1/deploys/12x", auth(), 400, "id: expected a deploy number"),
    ("/api/v1/deploys/4242", auth(), 404, "does not exist"),
    ("/api/v1/deploys?status=done", auth(), 400, "status: expected one of"),
    ("/api/v1/deploys?limit=0", auth(), 400, "limit"),
    ("/api/v1/deploys?service=gradebook", auth(), 400, "service: unknown service"),
    ("/api/v1/deploys?colour=red", auth(), 400, "colour: unknown query parameter"),
    ("/api/v1/services", {}, 401, "missing Authorization"),
    ("/api/v1/deploys/1", auth(OTHER_TOKEN.replace("3", "4")), 401, "unknown API token"),
])
def test_bad_reads_are_refused_with_a_message(api_server, path, headers, status, message):
    srv = api_server()
    resp = srv.http.get(path, headers=headers)
    assert resp.status_code == status and message in resp.json()["error"]


def test_bad_rollback_input_is_refused(api_server):
    srv = api_server()
    unknown = srv.http.post("/api/v1/services/gradebook/rollback", headers=auth(), json={})
    assert unknown.status_code == 400 and "unknown service gradebook" in unknown.json()["error"]
    nothing = srv.http.post("/api/v1/services/web/rollback", headers=auth(), json={"env": "production"})
    assert nothing.status_code == 409 and "no previous good version" in nothing.json()["error"]
    typed = srv.http.post("/api/v1/services/web/rollback", headers=auth(), json={"env": 3})
    assert typed.status_code == 400 and "env: expected a string" in typed.json()["error"]


def test_a_recess_without_tokens_says_so(server_factory):
    srv = server_factory(FAKE_SERVICE)
    resp = srv.http.post("/api/v1/deploys", headers=auth(), json={"service": "web", "version": "v2"})
    assert resp.status_code == 401 and "no [[api.tokens]]" in resp.json()["error"]
    assert srv.rt.store.execute("SELECT count(*) FROM deploys").fetchone()[0] == 0


def test_an_idempotency_key_is_forgotten_after_30_days(api_server):
    srv = api_server()
    key = {**auth(), "Idempotency-Key": "run-from-last-term"}
    first = srv.http.post("/api/v1/deploys", headers=key, json={"service": "web", "version": "v2"}).json()
    srv.http.post(f"/api/v1/deploys/{first['id']}/cancel", headers=auth())
    srv.rt.store.execute("UPDATE api_idempotency SET created_at = '2026-01-01T00:00:00+00:00'")
    again = srv.http.post("/api/v1/deploys", headers=key, json={"service": "web", "version": "v2"})
    assert again.status_code == 202 and again.json()["id"] != first["id"]
    assert srv.rt.store.execute("SELECT count(*) FROM api_idempotency").fetchone()[0] == 1


# -- releases ([releases.NAME]) over the API ---------------------------------------------------------

RELEASE_API_CONFIG = API_CONFIG.replace(FAKE_SERVICE, "") + "".join(f"""
[services.{name}]
platform = "command"
environments = {envs}

[services.{name}.command]
start = "true"
stop = "true"
shift = "true"
status = "true"
""" for name, envs in (("core", '["production", "staging"]'), ("web", '["production", "staging"]'),
                       ("ai-gateway", '["production"]'), ("lunch", '["production"]'))) + """
[releases.k12]
services = ["core", "web", "ai-gateway"]
migrate_first = "core"
"""
RELEASE_MEMBERS = ("core", "web", "ai-gateway")


@pytest.fixture
def release_api(server_factory):
    """A recess with the release k12 (core, web, ai-gateway; lunch is outside it), every service
    live at v1 in production on its own fake platform, and the three tokens."""

    def make():  # noqa: ANN202
        srv = server_factory(RELEASE_API_CONFIG, clock=FakeClock(AFTER_SCHOOL))
        srv.fakes = {name: FakePlatform(name, live="v1") for name in (*RELEASE_MEMBERS, "lunch")}
        srv.rt.extras["platform_factory"] = lambda cfg, service, env: srv.fakes[service]
        for name in srv.fakes:
            rows.insert(srv.rt.store, service=name, env="production", version="v1", requester=ENGINEER,
                        status="succeeded", traffic_at=dt.datetime(2027, 1, 1, tzinfo=dt.UTC), blue_retired=1)
        return srv

    return make


def serving_version(fake: FakePlatform) -> str | None:
    """The version in the slot that takes all the traffic."""
    serving = [slot for slot, weight in fake.weights.items() if weight == 100]
    return fake.versions[serving[0]] if serving else None


def approve_in_slack(srv, deploy_id: int) -> None:  # noqa: ANN001
    """A person approves on the card, with a signed click as Slack sends it (once the card is posted)."""
    srv.rt.outbox.flush()
    deadline = time.monotonic() + 30
    while not rows.get(srv.rt.store, deploy_id)["card_ts"]:
        assert time.monotonic() < deadline, f"deploy #{deploy_id}'s card was never posted"
        time.sleep(0.05)
    resp = srv.click("deploy_approve", deploy_id, user=APPROVER_1, message_ts=rows.get(srv.rt.store, deploy_id)["card_ts"])
    assert resp.status_code == 200, resp.text


def test_a_release_requested_through_the_api_is_approved_in_slack_and_polled_to_succeeded_with_its_members(release_api, slack):
    srv = release_api()
    resp = srv.http.post("/api/v1/deploys", headers={**auth(), "Idempotency-Key": "release-1"}, json={
        "release": "k12", "version": "v2.4.1", "env": "production", "requested_by": "octocat", "sha": "abc1234"})
    assert resp.status_code == 202, resp.text
    d = resp.json()
    assert d["release"] == "k12" and d["service"] == "k12" and d["kind"] == "deploy" and d["status"] == "pending"
    assert d["token"] == "github-actions" and d["requested_by"] == "octocat" and d["sha"] == "abc1234"
    assert d["members"] == [{"service": s, "version": "v2.4.1", "previous_version": "v1", "status": "pending",
                             "deploy_id": None} for s in RELEASE_MEMBERS]
    # A retry with the same key answers the same release; nothing more is stored.
    again = srv.http.post("/api/v1/deploys", headers={**auth(), "Idempotency-Key": "release-1"}, json={
        "release": "k12", "version": "v2.4.1", "env": "production", "requested_by": "octocat", "sha": "abc1234"})
    assert again.status_code == 200 and again.json()["id"] == d["id"]
    assert srv.rt.store.execute("SELECT count(*) FROM deploys WHERE kind = 'release'").fetchone()[0] == 1
    audit = srv.rt.store.row("SELECT * FROM audit WHERE action = 'release.request'")
    assert audit["actor"] == "api:github-actions" and audit["command"] == "api"

    approve_in_slack(srv, d["id"])
    done = wait_status(srv, d["id"], "succeeded", "failed")
    assert done["status"] == "succeeded", done["outcome"]
    assert [a["user"] for a in done["approvals"]] == [APPROVER_1]
    assert [(m["service"], m["version"], m["previous_version"], m["status"]) for m in done["members"]] == [
        (s, "v2.4.1", "v1", "succeeded") for s in RELEASE_MEMBERS]
    member_ids = [m["deploy_id"] for m in done["members"]]
    assert all(member_ids) and d["id"] not in member_ids
    assert {s: serving_version(srv.fakes[s]) for s in RELEASE_MEMBERS} == dict.fromkeys(RELEASE_MEMBERS, "v2.4.1")
    assert srv.fakes["lunch"].calls == []
    # A member answers the release it belongs to.
    member = srv.http.get(f"/api/v1/deploys/{member_ids[0]}", headers=auth()).json()
    assert member["release_id"] == d["id"] and member["service"] == "core" and member["live_version"] == "v2.4.1"
    assert "members" not in member and "release" not in member
    # The listing shows the release as one item; ?service= names a member to see its row.
    listed = srv.http.get("/api/v1/deploys", headers=auth()).json()["deploys"]
    assert [x["id"] for x in listed if x["version"] == "v2.4.1"] == [d["id"]]
    core = srv.http.get("/api/v1/deploys?service=core", headers=auth()).json()["deploys"]
    assert core[0]["id"] == member_ids[0] and core[0]["release_id"] == d["id"]
    by_release = srv.http.get("/api/v1/deploys?service=k12", headers=auth()).json()["deploys"]
    assert [x["id"] for x in by_release] == [d["id"]]


def test_a_release_of_named_members_deploys_only_those(release_api):
    srv = release_api()
    resp = srv.http.post("/api/v1/deploys", headers=auth(), json={
        "release": "k12", "versions": {"core": "v2.4.1", "web": "v2.4.0"}, "env": "production"})
    assert resp.status_code == 202, resp.text
    d = resp.json()
    assert d["version"] == "core=v2.4.1 web=v2.4.0"
    assert [(m["service"], m["version"]) for m in d["members"]] == [("core", "v2.4.1"), ("web", "v2.4.0")]
    approve_in_slack(srv, d["id"])
    done = wait_status(srv, d["id"], "succeeded", "failed")
    assert done["status"] == "succeeded", done["outcome"]
    assert [m["status"] for m in done["members"]] == ["succeeded", "succeeded"]
    assert (serving_version(srv.fakes["core"]), serving_version(srv.fakes["web"])) == ("v2.4.1", "v2.4.0")
    assert serving_version(srv.fakes["ai-gateway"]) == "v1"  # not named: left as it was


BAD_RELEASE = [
    ({"release": "k13", "version": "v2"}, "release: unknown release k13 (known: k12)"),
    ({"release": "k12", "versions": {"core": "v2", "gradebook": "v2"}}, "versions.gradebook: gradebook is not a member of release k12"),
    ({"release": "k12", "versions": {"core": "v2", "lunch": "v2"}}, "versions.lunch: lunch is not a member of release k12"),
    ({"release": "k12", "version": "v2", "env": "staging"}, "env: release k12 cannot deploy to staging: its member ai-gateway"),
    ({"release": "k12", "versions": {"core": "v2"}, "env": "moon"}, "env: unknown environment moon"),
    ({"release": "k12", "version": "v2;rm"}, "version: v2;rm is not a version"),
    ({"release": "k12", "versions": {"core": "v2;rm"}}, "versions.core: v2;rm is not a version"),
    ({"release": "k12", "versions": {"core": ""}}, "versions.core: core= names no version"),
    ({"release": "k12", "versions": {"core": 2}}, "versions.core: expected a string, got 2"),
    ({"release": "k12", "versions": {}}, "versions: name at least one member of release k12"),
    ({"release": "k12"}, "version: a release takes exactly one of version"),
    ({"release": "k12", "version": "v2", "versions": {"core": "v2"}}, "version: a release takes exactly one of version"),
    ({"service": "web", "release": "k12", "version": "v2"}, "service: give exactly one of service and release"),
    ({"version": "v2"}, "service: required (or release"),
    ({"service": "web", "versions": {"web": "v2"}}, "versions: only a release takes versions"),
    ({"service": "k12", "version": "v2"}, "service: k12 is a release, not a service"),
]


@pytest.mark.parametrize(("body", "message"), BAD_RELEASE, ids=[b[1][:40] for b in BAD_RELEASE])
def test_bad_release_bodies_are_refused_with_400_naming_the_field_and_store_nothing(release_api, body, message):
    srv = release_api()
    before = counts(srv)
    resp = srv.http.post("/api/v1/deploys", headers={**auth(), "Idempotency-Key": "bad-1"}, json=body)
    assert resp.status_code == 400, resp.text
    assert message in resp.json()["error"], resp.json()
    assert counts(srv) == before


def test_a_release_already_requested_or_already_live_is_a_409_conflict(release_api):
    srv = release_api()
    live = srv.http.post("/api/v1/deploys", headers=auth(), json={"release": "k12", "version": "v1"})
    assert live.status_code == 409 and "nothing to deploy" in live.json()["error"]
    first = srv.http.post("/api/v1/deploys", headers=auth(), json={"release": "k12", "version": "v2"})
    assert first.status_code == 202
    twice = srv.http.post("/api/v1/deploys", headers=auth(), json={"release": "k12", "version": "v2"})
    assert twice.status_code == 409 and f"already requested as deploy #{first.json()['id']}" in twice.json()["error"]


def test_a_release_is_rolled_back_through_the_api_as_rollback_release_does(release_api, slack):
    srv = release_api()
    d = srv.http.post("/api/v1/deploys", headers=auth(), json={"release": "k12", "version": "v2"}).json()
    approve_in_slack(srv, d["id"])
    assert wait_status(srv, d["id"], "succeeded", "failed")["status"] == "succeeded"
    as_service = srv.http.post("/api/v1/services/k12/rollback", headers=auth(), json={})
    assert as_service.status_code == 400 and as_service.json()["release"] == "k12"
    no_scope = srv.http.post("/api/v1/releases/k12/rollback", headers=auth(OTHER_TOKEN), json={})
    assert no_scope.status_code == 403 and "no 'rollback' scope" in no_scope.json()["error"]
    unknown = srv.http.post("/api/v1/releases/k13/rollback", headers=auth(), json={})
    assert unknown.status_code == 400 and "release: unknown release k13" in unknown.json()["error"]

    resp = srv.http.post("/api/v1/releases/k12/rollback", headers=auth(), json={"reason": "gradebook 500s",
                                                                                  "requested_by": "octocat"})
    assert resp.status_code == 202, resp.text
    rb = resp.json()
    assert rb["kind"] == "rollback" and rb["release"] == "k12" and rb["rollback_of"] == d["id"]
    assert rb["requested_by"] == "octocat"
    assert [(m["service"], m["version"], m["previous_version"]) for m in rb["members"]] == [
        (s, "v1", "v2") for s in reversed(RELEASE_MEMBERS)]
    done = wait_status(srv, rb["id"], "succeeded", "failed")
    assert done["status"] == "succeeded", done["outcome"]
    assert {m["status"] for m in done["members"]} == {"succeeded"}
    assert wait_status(srv, d["id"], "rolled_back")["status"] == "rolled_back"
    assert {s: serving_version(srv.fakes[s]) for s in RELEASE_MEMBERS} == dict.fromkeys(RELEASE_MEMBERS, "v1")
    audit = srv.rt.store.row("SELECT * FROM audit WHERE action = 'release.rollback.start'")
    assert audit["actor"] == "api:github-actions" and audit["command"] == "api" and "gradebook 500s" in audit["after"]
    listed = srv.http.get("/api/v1/deploys", headers=auth()).json()["deploys"]
    assert [x["id"] for x in listed[:2]] == [rb["id"], d["id"]]  # the rollback and the release, one item each
