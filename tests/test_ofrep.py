"""OFREP over HTTP against a running recess: success shapes, every error code, ETag and 304,
and API-key access. Shapes follow open-feature/protocol's service/openapi.yaml."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from commands.flags import Change, FlagBook, Scope
from tests.harness import APPROVER_1, BASE_CONFIG, start_server
from tests.kit.slack import FakeSlack

AUTH = {"Authorization": "Bearer test-key-for-ofrep-0001"}
ONE = "/ofrep/v1/evaluate/flags/"
BULK = "/ofrep/v1/evaluate/flags"


def set_flag(srv, action: str, key: str, *, tenant: str = "", role: str = "", pct: int | None = None, by: str | None = None) -> None:  # noqa: ANN001
    book = FlagBook.for_store(srv.rt.store)
    wanted = Change(action, key, Scope(tenant, role), pct=pct, by=by, description="test flag" if action == "create" else "")
    book.apply(wanted, actor=APPROVER_1, policy=srv.rt.policy, cfg=srv.rt.cfg, command=f"/flag {action} {key}", now=dt.datetime.now(dt.UTC))


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    slack = FakeSlack()
    server = start_server(tmp_path_factory.mktemp("ofrep"), slack)
    set_flag(server, "create", "gradebook_v2")
    set_flag(server, "on", "gradebook_v2", tenant="lincoln-high")
    set_flag(server, "rollout", "gradebook_v2", role="student", pct=50)
    set_flag(server, "create", "school_rollout")
    set_flag(server, "rollout", "school_rollout", pct=50, by="tenant")
    set_flag(server, "create", "half_users")
    set_flag(server, "rollout", "half_users", pct=50)
    set_flag(server, "create", "killed_one")
    set_flag(server, "on", "killed_one")
    set_flag(server, "kill", "killed_one")
    yield server
    server.stop()
    slack.close()


def post(srv, path: str, body=None, *, headers=None, raw: bytes | None = None):  # noqa: ANN001, ANN202
    content = raw if raw is not None else json.dumps(body).encode()
    return srv.http.post(path, content=content, headers={"Content-Type": "application/json", **(AUTH if headers is None else headers)})


# -- single evaluation --------------------------------------------------------------------------


def test_single_evaluation_answers_value_reason_variant_and_metadata(srv):
    resp = post(srv, ONE + "portfolio_enabled", {"context": {"targetingKey": "u1"}})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/json")
    assert resp.json() == {"key": "portfolio_enabled", "value": True, "reason": "STATIC", "variant": "on", "metadata": {}}


@pytest.mark.parametrize(
    "key, context, value, reason, metadata",
    [
        ("gradebook_v2", {"targetingKey": "u1", "tenant": "lincoln-high", "role": "teacher"}, True, "TARGETING_MATCH", {"scope": "tenant=lincoln-high"}),
        ("gradebook_v2", {"targetingKey": "u1", "tenant": "la-elementary", "role": "teacher"}, False, "STATIC", {}),
        ("killed_one", {"targetingKey": "u1", "tenant": "lincoln-high"}, False, "DISABLED", {}),
        ("ai_safety_v2", {}, False, "STATIC", {}),
    ],
)
def test_reasons_follow_the_evaluation_order(srv, key, context, value, reason, metadata):
    body = post(srv, ONE + key, {"context": context}).json()
    assert (body["value"], body["reason"], body["metadata"]) == (value, reason, metadata)
    assert body["variant"] == ("on" if value else "off")


def test_a_role_rollout_splits_students_with_sticky_answers(srv):
    answers = {}
    for i in range(200):
        ctx = {"targetingKey": f"student-{i}", "tenant": "la-elementary", "role": "student"}
        body = post(srv, ONE + "gradebook_v2", {"context": ctx}).json()
        assert body["reason"] == "SPLIT" and body["metadata"] == {"scope": "role=student", "rollout": 50, "rolloutBy": "user"}
        answers[f"student-{i}"] = body["value"]
    assert 60 < sum(answers.values()) < 140
    again = post(srv, ONE + "gradebook_v2", {"context": {"targetingKey": "student-7", "tenant": "la-elementary", "role": "student"}})
    assert again.json()["value"] == answers["student-7"]


def test_unknown_flag_is_404_flag_not_found(srv):
    resp = post(srv, ONE + "no_such_flag", {"context": {"targetingKey": "u1"}})
    assert resp.status_code == 404
    body = resp.json()
    assert body["key"] == "no_such_flag" and body["errorCode"] == "FLAG_NOT_FOUND" and "no_such_flag" in body["errorDetails"]
    assert post(srv, ONE + "a/b", {"context": {}}).json()["errorCode"] == "FLAG_NOT_FOUND"


@pytest.mark.parametrize(
    "raw, code",
    [
        (b"{not json", "PARSE_ERROR"),
        (b"", "PARSE_ERROR"),
        (b"\xff\xfe", "PARSE_ERROR"),
        (b"[1, 2]", "PARSE_ERROR"),
        (b"[" * 100_000, "PARSE_ERROR"),
        (b"{}", "INVALID_CONTEXT"),
        (b'{"context": null}', "INVALID_CONTEXT"),
        (b'{"context": "u1"}', "INVALID_CONTEXT"),
        (b'{"context": {"targetingKey": 42}}', "INVALID_CONTEXT"),
        (b'{"context": {"targetingKey": "u1", "tenant": ["a"]}}', "INVALID_CONTEXT"),
        (b'{"context": {"targetingKey": "u1", "role": {"x": 1}}}', "INVALID_CONTEXT"),
    ],
)
def test_bad_requests_get_the_protocols_400s_never_a_500(srv, raw, code):
    single = post(srv, ONE + "portfolio_enabled", raw=raw)
    assert single.status_code == 400
    assert single.json()["errorCode"] == code and single.json()["key"] == "portfolio_enabled" and single.json()["errorDetails"]
    bulk = post(srv, BULK, raw=raw)
    assert bulk.status_code == 400 and bulk.json()["errorCode"] == code and bulk.json()["errorDetails"]


def test_an_oversized_body_is_refused_as_a_parse_error(srv):
    resp = post(srv, ONE + "portfolio_enabled", raw=b'{"context": {"pad": "' + b"x" * (2 * 1024 * 1024) + b'"}}')
    assert resp.status_code == 400 and resp.json()["errorCode"] == "PARSE_ERROR"


def test_a_percentage_without_a_targeting_key_is_targeting_key_missing(srv):
    resp = post(srv, ONE + "half_users", {"context": {"tenant": "lincoln-high"}})
    assert resp.status_code == 400
    assert resp.json()["errorCode"] == "TARGETING_KEY_MISSING" and resp.json()["key"] == "half_users"
    by_school = post(srv, ONE + "school_rollout", {"context": {"targetingKey": "u1"}})
    assert by_school.status_code == 400 and "'tenant'" in by_school.json()["errorDetails"]
    assert post(srv, ONE + "school_rollout", {"context": {"tenant": "lincoln-high"}}).status_code == 200


# -- bulk ---------------------------------------------------------------------------------------


def test_bulk_evaluates_every_flag_with_per_flag_errors(srv):
    resp = post(srv, BULK, {"context": {"tenant": "lincoln-high", "role": "teacher"}})
    assert resp.status_code == 200 and resp.headers["etag"].startswith('"')
    flags = {f["key"]: f for f in resp.json()["flags"]}
    assert set(flags) == {"ai_safety_v2", "portfolio_enabled", "gradebook_v2", "school_rollout", "half_users", "killed_one"}
    assert flags["half_users"] == {"key": "half_users", "errorCode": "TARGETING_KEY_MISSING", "errorDetails": flags["half_users"]["errorDetails"]}
    assert flags["gradebook_v2"]["reason"] == "TARGETING_MATCH"
    assert flags["killed_one"]["reason"] == "DISABLED"
    assert all("variant" in f for k, f in flags.items() if k != "half_users")


def test_bulk_etag_covers_context_and_configuration_and_if_none_match_gives_304(srv):
    ctx = {"context": {"targetingKey": "u9", "tenant": "la-elementary"}}
    first = post(srv, BULK, ctx)
    etag = first.headers["etag"]
    assert post(srv, BULK, ctx).headers["etag"] == etag
    # The same context with its keys in another order is the same context.
    assert post(srv, BULK, {"context": {"tenant": "la-elementary", "targetingKey": "u9"}}).headers["etag"] == etag

    cached = post(srv, BULK, ctx, headers={**AUTH, "If-None-Match": etag})
    assert cached.status_code == 304 and cached.content == b"" and cached.headers["etag"] == etag
    assert post(srv, BULK, ctx, headers={**AUTH, "If-None-Match": f'"other", W/{etag}'}).status_code == 304

    other_user = post(srv, BULK, {"context": {"targetingKey": "u10", "tenant": "la-elementary"}})
    assert other_user.headers["etag"] != etag
    assert post(srv, BULK, {"context": {"targetingKey": "u10", "tenant": "la-elementary"}}, headers={**AUTH, "If-None-Match": etag}).status_code == 200

    set_flag(srv, "on", "ai_safety_v2", tenant="la-elementary")
    changed = post(srv, BULK, ctx, headers={**AUTH, "If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    assert {f["key"]: f for f in changed.json()["flags"]}["ai_safety_v2"]["value"] is True


# -- access -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}, {"Authorization": "Basic dGVzdC1rZXk="}, {"Authorization": "test-key-for-ofrep-0001"}],
)
def test_without_a_valid_api_key_the_answer_is_401_without_a_body(srv, headers):
    for path in (ONE + "portfolio_enabled", BULK):
        resp = post(srv, path, {"context": {"targetingKey": "u1"}}, headers=headers)
        assert resp.status_code == 401 and resp.content == b""


@pytest.mark.parametrize("headers", [{"Authorization": "Bearer test-key-for-ofrep-0001"}, {"authorization": "bearer test-key-for-ofrep-0001"}, {"X-API-Key": "test-key-for-ofrep-0001"}])
def test_bearer_and_x_api_key_both_open_ofrep(srv, headers):
    assert post(srv, ONE + "portfolio_enabled", {"context": {}}, headers=headers).status_code == 200


def test_ofrep_is_closed_when_no_api_keys_are_configured(tmp_path):
    slack = FakeSlack()
    base = BASE_CONFIG.replace('api_keys = ["test-key-for-ofrep-0001"]', "api_keys = []")
    server = start_server(tmp_path, slack, base=base)
    try:
        for headers in (AUTH, {"X-API-Key": "test-key-for-ofrep-0001"}, {}):
            assert post(server, ONE + "portfolio_enabled", {"context": {}}, headers=headers).status_code == 401
    finally:
        server.stop()
        slack.close()

