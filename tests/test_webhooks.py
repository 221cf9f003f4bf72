"""Signed webhooks out, checked by a receiver in the test that verifies X-Recess-Signature with its
own code: deploy events in order, retries with the same delivery ID, replays refused, Slack never
waiting for a receiver, rollbacks and flag changes."""

from __future__ import annotations

import time

import pytest

from bot.webhooks import sign, verify
from storage import deploys as rows
from tests.kit.receiver import Receiver
from tests.test_api import api_server, auth, wait_status  # noqa: F401 (the fixture)

SECRET = "whsec-for-the-tests-0123456789"
ALL = '["deploy.requested", "deploy.approved", "deploy.started", "deploy.succeeded", "deploy.failed", "deploy.rolled_back", "flag.changed"]'


@pytest.fixture
def receiver(monkeypatch):
    monkeypatch.setenv("RECESS_TEST_WEBHOOK_SECRET", SECRET)
    r = Receiver(SECRET)
    yield r
    r.close()


@pytest.fixture
def hooked(api_server, receiver):
    def make(events: str = ALL):
        return api_server(f"""
[[webhooks]]
url = "{receiver.url}"
events = {events}
secret_env = "RECESS_TEST_WEBHOOK_SECRET"
""")

    return make


def staging_deploy(srv, version: str = "v2") -> dict:  # noqa: ANN001
    resp = srv.http.post("/api/v1/deploys", headers=auth(), json={"service": "web", "version": version, "env": "staging"})
    assert resp.status_code == 202, resp.text
    return resp.json()


def test_deploy_events_arrive_signed_in_order_each_once(hooked, receiver):
    srv = hooked()
    d = staging_deploy(srv)
    wait_status(srv, d["id"], "succeeded")
    flow = ["deploy.requested", "deploy.approved", "deploy.started", "deploy.succeeded"]
    receiver.wait_for(lambda r: r.events(d["id"]) == flow)
    srv.rt.webhooks.observe(d["id"])  # told again: nothing is queued twice
    srv.rt.webhooks.flush()
    assert receiver.events(d["id"]) == flow and receiver.refused == []
    last = receiver.accepted[-1]
    assert last["body"]["event"] == "deploy.succeeded" and last["body"]["deploy"]["status"] == "succeeded"
    assert last["body"]["deploy"]["token"] == "github-actions"
    assert len({a["delivery"] for a in receiver.accepted}) == len(receiver.accepted)
    assert last["headers"]["X-Recess-Signature"].startswith("t=")


def test_only_the_events_a_receiver_asked_for_are_sent(hooked, receiver):
    srv = hooked('["deploy.succeeded"]')
    d = staging_deploy(srv)
    wait_status(srv, d["id"], "succeeded")
    receiver.wait_for(lambda r: r.events(d["id"]) == ["deploy.succeeded"])
    srv.rt.webhooks.flush()
    assert receiver.events() == ["deploy.succeeded"]


def test_a_failing_receiver_gets_the_same_delivery_again(hooked, receiver):
    srv = hooked('["deploy.requested"]')
    receiver.fail_next = [503, 500]
    d = staging_deploy(srv)
    receiver.wait_for(lambda r: r.events(d["id"]) == ["deploy.requested"], timeout=60)
    assert len(receiver.attempts) == 3 and len(set(receiver.attempts)) == 1  # two retries of one delivery


def test_a_refusing_receiver_is_not_retried_and_the_next_event_still_goes(hooked, receiver):
    srv = hooked('["deploy.requested", "deploy.succeeded"]')
    receiver.fail_next = [410]
    d = staging_deploy(srv)
    receiver.wait_for(lambda r: r.events(d["id"]) == ["deploy.succeeded"])
    assert len(receiver.attempts) == 2
    dropped = srv.rt.store.row("SELECT state, error FROM outbox WHERE method = 'webhook' AND state = 'dropped'")
    assert dropped and "410" in dropped["error"]


def test_a_stuck_receiver_never_holds_up_slack(hooked, receiver, slack):
    srv = hooked()
    receiver.hold.clear()
    d = staging_deploy(srv)
    wait_status(srv, d["id"], "succeeded")
    slack.wait_for(lambda s: any("is live in staging" in t for t in s.texts()))
    assert srv.rt.outbox.flush(timeout=30)  # every Slack message went out while the receiver held its first POST
    assert receiver.events() == []
    receiver.hold.set()
    receiver.wait_for(lambda r: r.events(d["id"])[-1:] == ["deploy.succeeded"])


def test_a_rollback_sends_rolled_back_for_the_deploy_it_undid(hooked, receiver):
    srv = hooked('["deploy.succeeded", "deploy.rolled_back"]')
    d = staging_deploy(srv)
    wait_status(srv, d["id"], "succeeded")
    rb = srv.http.post("/api/v1/services/web/rollback", headers=auth(), json={"env": "staging"}).json()
    wait_status(srv, rb["id"], "succeeded")
    receiver.wait_for(lambda r: r.events(d["id"]) == ["deploy.succeeded", "deploy.rolled_back"])
    receiver.wait_for(lambda r: r.events(rb["id"]) == ["deploy.succeeded"])
    assert rows.get(srv.rt.store, d["id"])["status"] == "rolled_back"


def test_a_failed_deploy_sends_failed(hooked, receiver):
    srv = hooked('["deploy.failed"]')
    srv.fake.fail["start"] = "no such image"
    d = staging_deploy(srv)
    wait_status(srv, d["id"], "failed")
    receiver.wait_for(lambda r: r.events(d["id"]) == ["deploy.failed"])


def test_a_flag_change_is_sent_as_flag_changed(hooked, receiver):
    srv = hooked('["flag.changed"]')
    from tests.harness import APPROVER_1

    resp = srv.command("/flag", "off portfolio_enabled", user=APPROVER_1)
    assert resp.status_code == 200
    receiver.wait_for(lambda r: r.events() == ["flag.changed"])
    flag = receiver.accepted[0]["body"]["flag"]
    assert flag["key"] == "portfolio_enabled" and flag["action"] == "off" and flag["actor"] == APPROVER_1


def test_a_forged_or_replayed_signature_does_not_verify(receiver):
    body = '{"event":"deploy.succeeded"}'
    now = int(time.time())
    assert receiver.valid(sign(SECRET, now, body), body) and verify(SECRET, sign(SECRET, now, body), body, now=now)
    assert not receiver.valid(sign("another secret", now, body), body)
    assert not receiver.valid(sign(SECRET, now, body), body.replace("succeeded", "failed"))
    stale = sign(SECRET, now - 3600, body)  # captured an hour ago and sent again
    assert not receiver.valid(stale, body) and not verify(SECRET, stale, body, now=now)


def test_config_names_the_key_of_a_bad_token_or_webhook(tmp_path):
    from commands.config import ConfigError, parse_config

    cases = [
        ({"api": {"tokens": [{"name": "ci", "token_sha256": "secret-token", "scopes": ["deploy"]}]}},
         "api.tokens[0].token_sha256: expected the token's SHA-256"),
        ({"api": {"tokens": [{"name": "ci", "token_sha256": "a" * 64, "scopes": ["approve"]}]}}, "api.tokens[0].scopes[0]"),
        ({"api": {"tokens": [{"name": "ci", "token_sha256": "a" * 64, "scopes": []}]}}, "api.tokens[0].scopes: expected at least one"),
        ({"api": {"tokens": [{"name": "ci", "token_sha256": "a" * 64, "scopes": ["read"]},
                             {"name": "ci", "token_sha256": "b" * 64, "scopes": ["read"]}]}}, "unique names"),
        ({"webhooks": [{"url": "ftp://x", "events": ["deploy.failed"], "secret_env": "S"}]}, "webhooks[0].url"),
        ({"webhooks": [{"url": "https://x.example", "events": ["deploy.exploded"], "secret_env": "S"}]}, "webhooks[0].events[0]"),
        ({"webhooks": [{"url": "https://x.example", "events": ["deploy.failed"], "secret_env": "no spaces"}]},
         "webhooks[0].secret_env"),
        ({"webhooks": [{"url": "https://x.example", "events": ["deploy.failed"]}]}, "webhooks[0].secret_env: required"),
    ]
    for data, message in cases:
        with pytest.raises(ConfigError) as err:
            parse_config(data)
        assert message in str(err.value), str(err.value)


def test_serve_warns_when_a_webhook_secret_is_not_set(monkeypatch, tmp_path):
    from bot.startup import preflight
    from commands.config import parse_config

    monkeypatch.delenv("RECESS_MISSING_SECRET", raising=False)
    cfg = parse_config({"webhooks": [{"url": "https://ci.example/hook", "events": ["deploy.failed"],
                                      "secret_env": "RECESS_MISSING_SECRET"}]}, base_dir=tmp_path)
    assert any("RECESS_MISSING_SECRET is not set" in w for w in preflight(cfg))


def test_deliveries_waiting_at_a_restart_are_sent_after_it_in_order(api_server, receiver):
    hooks = f"""
[[webhooks]]
url = "{receiver.url}"
events = ["deploy.requested", "deploy.approved", "deploy.started", "deploy.succeeded"]
secret_env = "RECESS_TEST_WEBHOOK_SECRET"
"""
    srv = api_server(hooks)
    receiver.fail_next = [503] * 1000  # down for the whole first life of recess
    d = staging_deploy(srv)
    wait_status(srv, d["id"], "succeeded")
    receiver.wait_for(lambda r: len(r.attempts) >= 1)
    srv.stop()
    assert receiver.events() == []
    receiver.fail_next = []
    again = api_server(hooks, live=None)  # the same database
    receiver.wait_for(lambda r: r.events(d["id"]) == ["deploy.requested", "deploy.approved", "deploy.started",
                                                       "deploy.succeeded"], timeout=60)
    assert again.rt.store.execute("SELECT count(*) FROM outbox WHERE method = 'webhook'").fetchone()[0] == 4
