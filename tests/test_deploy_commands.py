"""/deploy and /rollback over signed HTTP with the fake Slack: cards, clicks, threads, the queue."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest

from storage import deploys as rows
from tests.fake_platform import FakePlatform
from tests.harness import APPROVER_1, APPROVER_2, ENGINEER, FAKE_SERVICE, FakeClock
from tests.test_window_commands import AFTER_SCHOOL, IN_SCHOOL, reply_text


@pytest.fixture
def deploy_server(server_factory, slack):
    def make(clock=None, live="v1"):  # noqa: ANN001
        srv = server_factory(FAKE_SERVICE, clock=clock or FakeClock(AFTER_SCHOOL))
        srv.fake = FakePlatform(live=live)
        srv.rt.extras["platform_factory"] = lambda cfg, service, env: srv.fake
        if live:
            rows.insert(srv.rt.store, service="web", env="production", version=live, requester=ENGINEER,
                        status="succeeded", traffic_at=dt.datetime(2027, 1, 1, tzinfo=dt.UTC), blue_retired=1)
        return srv

    return make


def card_post(slack, deploy_id: int, store=None):  # noqa: ANN001
    """The card's chat.postMessage call, once recess has stored the card's ts (the thread)."""
    call = slack.wait_for(lambda s: [c for c in s.of("chat.postMessage") if f"#{deploy_id}:" in c.params.get("text", "") and "thread_ts" not in c.params])[0]
    if store is not None:
        deadline = time.monotonic() + 10
        while not (rows.get(store, deploy_id) or {}).get("card_ts") and time.monotonic() < deadline:
            time.sleep(0.01)
    return call


def responses(slack) -> str:  # noqa: ANN001
    return "\n".join(c.params.get("text", "") for c in slack.responses)


def test_deploy_posts_a_request_card_with_approve_and_reject(deploy_server, slack):
    srv = deploy_server()
    resp = srv.command("/deploy", "web v2")
    assert resp.status_code == 200 and "Deploy #2" in reply_text(resp) and "<#C0DEPLOYS>" in reply_text(resp)
    card = card_post(slack, 2, srv.rt.store)
    assert card.params["channel"] == "C0DEPLOYS"
    blocks = json.dumps(card.params["blocks"])
    assert "v1 \\u2192 v2" in blocks or "v1 → v2" in blocks
    assert "deploy_approve" in blocks and "deploy_reject" in blocks and "deploy_cancel" in blocks
    assert "Window: runs now" in blocks
    assert rows.get(srv.rt.store, 2)["card_ts"] == card.answer["ts"]  # the thread is the card Slack posted


def test_self_approval_is_refused_ephemerally_and_changes_nothing(deploy_server, slack):
    srv = deploy_server()
    srv.command("/deploy", "web v2", user=APPROVER_1)
    card_post(slack, 2, srv.rt.store)
    ts = rows.get(srv.rt.store, 2)["card_ts"]
    srv.click("deploy_approve", 2, user=APPROVER_1, message_ts=ts)
    slack.wait_for(lambda s: "another approver" in responses(s))
    assert rows.get(srv.rt.store, 2)["status"] == "pending"
    assert rows.approvers(srv.rt.store, 2) == []


def test_approval_by_another_user_runs_the_deploy_with_threaded_progress(deploy_server, slack):
    srv = deploy_server()
    srv.command("/deploy", "web v2")
    card_post(slack, 2, srv.rt.store)
    ts = rows.get(srv.rt.store, 2)["card_ts"]
    srv.click("deploy_approve", 2, user=APPROVER_1, message_ts=ts)
    slack.wait_for(lambda s: any("is live in production" in t for t in s.texts()))
    assert rows.get(srv.rt.store, 2)["status"] == "succeeded"
    assert srv.fake.weights == {"blue": 0, "green": 100}
    srv.rt.outbox.flush()
    thread = [c for c in slack.of("chat.postMessage") if c.params.get("thread_ts") == ts]
    texts = [c.params["text"] for c in thread]
    for step in ("start_green", "migrate", "health", "smoke", "shift"):
        assert any(f"*{step}*" in t for t in texts), step
    # Start and success are broadcast to the channel too.
    assert sum(1 for c in thread if c.params.get("reply_broadcast")) >= 2
    updates = slack.of("chat.update")
    assert updates and all(u.params["ts"] == ts for u in updates)
    assert "Succeeded" in json.dumps(updates[-1].params["blocks"]) and "rollback_card" in json.dumps(updates[-1].params["blocks"])
    live = [c for c in thread if "is live in production" in c.params["text"]][0]
    assert "rollback_start" in json.dumps(live.params["blocks"])  # the thread carries the button too


def test_double_click_approval_acts_once(deploy_server, slack):
    srv = deploy_server()
    srv.command("/deploy", "web v2")
    card_post(slack, 2, srv.rt.store)
    ts = rows.get(srv.rt.store, 2)["card_ts"]
    srv.click("deploy_approve", 2, user=APPROVER_1, message_ts=ts)
    srv.click("deploy_approve", 2, user=APPROVER_1, message_ts=ts)
    slack.wait_for(lambda s: any("is live in production" in t for t in s.texts()))
    srv.rt.outbox.flush()
    assert len([c for c in srv.fake.calls if c[0] == "start"]) == 1
    assert srv.rt.store.execute("SELECT count(*) FROM audit WHERE action = 'deploy.approve'").fetchone()[0] == 1


def test_click_on_a_card_of_another_deploy_is_refused(deploy_server, slack):
    srv = deploy_server()
    srv.command("/deploy", "web v2")
    card_post(slack, 2, srv.rt.store)
    srv.click("deploy_approve", 2, user=APPROVER_1, message_ts="1700000000.000001")
    slack.wait_for(lambda s: "not deploy #2's card" in responses(s))
    assert rows.get(srv.rt.store, 2)["status"] == "pending"


def test_click_by_someone_not_allowed_is_refused(deploy_server, slack):
    srv = deploy_server()
    srv.command("/deploy", "web v2")
    card_post(slack, 2, srv.rt.store)
    ts = rows.get(srv.rt.store, 2)["card_ts"]
    srv.click("deploy_approve", 2, user="U0STRANGER", message_ts=ts)
    slack.wait_for(lambda s: "only approvers" in responses(s))
    srv.click("deploy_reject", 2, user="U0STRANGER", message_ts=ts)
    slack.wait_for(lambda s: "only approvers or the requester" in responses(s))
    assert rows.get(srv.rt.store, 2)["status"] == "pending"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("gradebook v2", "unknown service"),
        ("web v2 qa", "unknown environment"),
        ("web", "needs a SERVICE and a VERSION"),
        ("web v1", "already live"),
        ("web v2 --canary ten", "percentages"),
        ("web v2 --now", "needs a reason"),
        ("web v2 --fast", "unknown option"),
        ("history a b", "at most one SERVICE"),
    ],
)
def test_bad_deploy_input_gets_an_ephemeral_answer_and_stores_nothing(deploy_server, text, expected):
    srv = deploy_server()
    resp = srv.command("/deploy", text)
    answer = reply_text(resp)
    assert resp.json()["response_type"] == "ephemeral"
    assert expected in answer and "Usage" in answer
    assert srv.rt.store.execute("SELECT count(*) FROM deploys").fetchone()[0] == 1


def test_a_second_deploy_while_one_is_pending_gets_its_own_card(deploy_server, slack):
    srv = deploy_server()
    srv.command("/deploy", "web v2")
    answer = reply_text(srv.command("/deploy", "web v3", user=APPROVER_2))
    assert "Deploy #3" in answer
    card_post(slack, 3, srv.rt.store)
    assert [d["status"] for d in (rows.get(srv.rt.store, 2), rows.get(srv.rt.store, 3))] == ["pending", "pending"]


def test_queued_deploy_starts_when_the_window_opens(deploy_server, slack):
    clock = FakeClock(IN_SCHOOL)
    srv = deploy_server(clock=clock)
    resp = srv.command("/deploy", "web v2")
    assert "Deploy #2" in reply_text(resp)
    card = card_post(slack, 2, srv.rt.store)
    blocks = json.dumps(card.params["blocks"])
    assert "queued until" in blocks
    assert "18:00 EDT" in blocks and "<!date^1805234400^" in blocks  # each school's time, and the viewer's
    srv.click("deploy_approve", 2, user=APPROVER_1, message_ts=rows.get(srv.rt.store, 2)["card_ts"])
    slack.wait_for(lambda s: any("Queued until" in t for t in s.texts()))
    d = rows.get(srv.rt.store, 2)
    assert d["status"] == "queued" and d["queued_until"] == dt.datetime(2027, 3, 16, 22, 0, tzinfo=dt.UTC)
    clock.set(d["queued_until"])
    srv.rt.extras["deployer"].run_due()
    slack.wait_for(lambda s: any("is live in production" in t for t in s.texts()))
    assert rows.get(srv.rt.store, 2)["status"] == "succeeded"


def test_restart_rearms_the_queue_and_starts_an_overdue_deploy(server_factory, deploy_server, slack):
    clock = FakeClock(IN_SCHOOL)
    srv = deploy_server(clock=clock)
    srv.command("/deploy", "web v2")
    card_post(slack, 2, srv.rt.store)
    srv.click("deploy_approve", 2, user=APPROVER_1, message_ts=rows.get(srv.rt.store, 2)["card_ts"])
    slack.wait_for(lambda s: any("Queued until" in t for t in s.texts()))
    srv.stop()
    # The bot was down when the window opened; it comes back at 22:30 UTC.
    clock.set(dt.datetime(2027, 3, 16, 22, 30, tzinfo=dt.UTC))
    fake = srv.fake
    from tests.harness import RecessServer

    again = RecessServer(srv.cfg, slack, clock, platform_factory=lambda cfg, s, e: fake)
    try:
        slack.wait_for(lambda s: any("is live in production" in t for t in s.texts()))
        assert rows.get(again.rt.store, 2)["status"] == "succeeded"
        assert len([c for c in fake.calls if c[0] == "start"]) == 1
    finally:
        again.stop()


def test_deploy_history_lists_the_last_deploys(deploy_server, slack):
    srv = deploy_server()
    srv.command("/deploy", "web v2")
    text = reply_text(srv.command("/deploy", "history web"))
    assert "#2 web *v2* (production)" in text and "pending" in text
    assert "unknown service" in reply_text(srv.command("/deploy", "history gradebook"))


def test_rollback_command_offers_a_confirmed_button_and_the_click_flips_traffic(deploy_server, slack):
    srv = deploy_server()
    srv.command("/deploy", "web v2")
    card_post(slack, 2, srv.rt.store)
    srv.click("deploy_approve", 2, user=APPROVER_1, message_ts=rows.get(srv.rt.store, 2)["card_ts"])
    slack.wait_for(lambda s: any("is live in production" in t for t in s.texts()))
    resp = srv.command("/rollback", "web")
    body = resp.json()
    assert body["response_type"] == "ephemeral"
    blocks = json.dumps(body["blocks"])
    assert "v2 \\u2192 *v1*" in blocks or "v2 → *v1*" in blocks
    assert "rollback_start" in blocks and "confirm" in blocks
    srv.click("rollback_start", 2, user=ENGINEER, message_ts="1.2")
    srv.click("rollback_start", 2, user=ENGINEER, message_ts="1.2")  # clicked twice
    slack.wait_for(lambda s: any("Rolled back: traffic back on v1" in t for t in s.texts()))
    assert srv.fake.weights == {"blue": 100, "green": 0}
    assert srv.rt.store.execute("SELECT count(*) FROM deploys WHERE kind = 'rollback'").fetchone()[0] == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [("gradebook", "unknown service"), ("web qa", "is not deployed to"), ("", "/rollback SERVICE"), ("web", "no previous good version")],
)
def test_bad_rollback_input_gets_an_ephemeral_answer(deploy_server, text, expected):
    srv = deploy_server()
    resp = srv.command("/rollback", text)
    assert expected in reply_text(resp)
    assert srv.rt.store.execute("SELECT count(*) FROM deploys").fetchone()[0] == 1


def test_progress_catches_up_when_slack_answers_429_and_500(deploy_server, slack):
    srv = deploy_server()
    srv.command("/deploy", "web v2")
    card_post(slack, 2, srv.rt.store)
    ts = rows.get(srv.rt.store, 2)["card_ts"]
    slack.fail_next("chat.postMessage", 500, count=4)
    slack.fail_next("chat.update", 429, count=2)
    srv.click("deploy_approve", 2, user=APPROVER_1, message_ts=ts)
    # The deploy itself does not wait for Slack.
    deadline = dt.datetime.now() + dt.timedelta(seconds=10)
    while rows.get(srv.rt.store, 2)["status"] != "succeeded" and dt.datetime.now() < deadline:
        time.sleep(0.02)
    assert rows.get(srv.rt.store, 2)["status"] == "succeeded"
    slack.wait_for(lambda s: any("is live in production" in t for t in s.texts()), timeout=30)
    assert srv.rt.outbox.flush(timeout=30)
    texts = [c.params["text"] for c in slack.of("chat.postMessage") if c.params.get("thread_ts") == ts]
    assert any("*shift*" in t for t in texts)


def test_rollback_is_offered_while_another_deploy_waits_for_approval(deploy_server, slack):
    srv = deploy_server()
    srv.command("/deploy", "web v2")
    card_post(slack, 2, srv.rt.store)
    srv.click("deploy_approve", 2, user=APPROVER_1, message_ts=rows.get(srv.rt.store, 2)["card_ts"])
    slack.wait_for(lambda s: any("is live in production" in t for t in s.texts()))
    srv.command("/deploy", "web v3")  # pending: it does not hold the slots, so it cannot block a rollback
    blocks = json.dumps(srv.command("/rollback", "web").json()["blocks"])
    assert "rollback_start" in blocks and "v2 \\u2192 *v1*" in blocks


def test_the_requesters_reply_links_to_the_card_once_it_is_posted(deploy_server, slack):
    srv = deploy_server()
    srv.command("/deploy", "web v2")
    card_post(slack, 2, srv.rt.store)
    ts = rows.get(srv.rt.store, 2)["card_ts"]
    link = f"https://slack.com/archives/C0DEPLOYS/p{ts.replace('.', '')}"
    slack.wait_for(lambda s: link in responses(s))
