"""The outbox's promises, against the fake Slack over real HTTP: it neither stalls nor repeats.

A message Slack refuses for good is dropped with a notice and the rest flow; a deploy waiting out
Slack's rate limit holds up only its own thread; transient errors are retried until they pass,
and for 24 h at most; and a post that reached Slack is never posted again, not after a lost
answer, not after a crash between the post and recording it.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from bot.outbox import Outbox
from bot.slack_client import make_client
from storage import deploys
from storage import outbox as rows
from storage.db import Store
from tests.harness import APPROVER_1, ENGINEER, FakeClock
from tests.kit.slack import FakeSlack
from tests.test_deploy_commands import deploy_server  # noqa: F401 (a fixture)

CHANNEL = "C0DEPLOYS"
Answer = tuple[int, dict[str, Any], dict[str, str]]


class SlackRefuses:
    """Makes the fake Slack answer the calls a rule picks with Slack's error answer instead.

    A rule gets (method, params, post) and returns an answer (status, body, headers) or None;
    `post()` lets the fake do the call for real first, as when Slack posts and the answer is lost.
    """

    def __init__(self, slack: FakeSlack) -> None:
        self.slack = slack
        self.rules: list[Callable[..., Answer | None]] = []
        self.refused: list[tuple[str, dict[str, Any], Answer]] = []
        original = slack.answer

        def answer(method: str, params: dict[str, Any], token: str | None) -> Answer:
            for rule in list(self.rules):
                verdict = rule(method, params, lambda: original(method, params, token))
                if verdict is not None:
                    with slack._cond:
                        self.refused.append((method, params, verdict))
                        slack._cond.notify_all()
                    return verdict
            return original(method, params, token)

        slack.answer = answer

    def count(self, text: str) -> int:
        return sum(1 for _, params, _ in self.refused if params.get("text") == text)


def slack_error(error: str, status: int = 200, **headers: str) -> Answer:
    return status, {"ok": False, "error": error}, headers


def render_card(deploy_id: int) -> tuple[str, list[dict[str, Any]]]:
    text = f"Deploy #{deploy_id}: web v1 → v2"
    return text, [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "the condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "r.db")
    for deploy_id in (3, 4):
        deploys.insert(store, id=deploy_id, service="web", env="production", version="v2", requester=ENGINEER,
                       status="running")
    yield store
    store.close()


@pytest.fixture
def outboxes(store, slack):
    """Outbox(**kw) on the test's store and the fake Slack; each is stopped at the end."""
    made: list[Outbox] = []

    def make(client=None, **kw) -> Outbox:  # noqa: ANN001, ANN003
        outbox = Outbox(store, client or make_client("xoxb-t", slack.api_url), render_card=render_card, **kw)
        made.append(outbox)
        return outbox

    yield make
    for outbox in made:
        outbox.stop()


def card_of(slack: FakeSlack, deploy_id: int):  # noqa: ANN201
    return next(m for m in slack.channel_messages(CHANNEL) if m.text.startswith(f"Deploy #{deploy_id}:"))


def thread_texts(slack: FakeSlack, deploy_id: int) -> list[str]:
    return [m.text for m in slack.replies(card_of(slack, deploy_id))]


def with_cards(outbox: Outbox, slack: FakeSlack) -> None:
    outbox.post_card(3, CHANNEL)
    outbox.post_card(4, CHANNEL)
    outbox.start()
    assert outbox.flush()


# -- refused for good: dropped, told, and the rest flow ------------------------------------------


def test_a_message_slack_keeps_refusing_is_dropped_with_a_channel_notice_and_later_ones_flow(outboxes, slack, store, caplog):
    refuses = SlackRefuses(slack)
    refuses.rules.append(lambda method, params, post: slack_error("restricted_action")
                         if params.get("text") == "migrate: 2 files" else None)
    outbox = outboxes()
    with_cards(outbox, slack)
    caplog.set_level(logging.ERROR, logger="recess.outbox")

    refused = outbox.post(CHANNEL, "migrate: 2 files", deploy_id=3, thread=True)
    outbox.post(CHANNEL, "health: 200 after 1 poll", deploy_id=3, thread=True)
    outbox.post(CHANNEL, "Freeze #1 added")

    assert outbox.flush()
    assert thread_texts(slack, 3) == ["health: 200 after 1 poll"]
    assert "Freeze #1 added" in [m.text for m in slack.channel_messages(CHANNEL)]
    assert refuses.count("migrate: 2 files") == 1  # refused for good is not tried again
    notices = [m.text for m in slack.channel_messages(CHANNEL) if m.text.startswith("recess could not")]
    assert notices == ["recess could not post a message for deploy #3: Slack said restricted_action; see the log"]
    assert rows.get(store, refused)["state"] == "dropped"
    assert any("restricted_action" in r.getMessage() and "migrate: 2 files" in r.getMessage() for r in caplog.records)


def test_a_notice_slack_refuses_too_is_only_logged_not_noticed_again(outboxes, slack, store):
    refuses = SlackRefuses(slack)
    refuses.rules.append(lambda method, params, post: slack_error("ekm_access_denied")
                         if method == "chat.postMessage" and params.get("channel") == "C0LOCKED" else None)
    outbox = outboxes()
    outbox.start()
    outbox.post("C0LOCKED", "Freeze #1 added")
    outbox.post(CHANNEL, "Freeze #1 lifted")

    assert outbox.flush()
    assert [m.text for m in slack.channel_messages(CHANNEL)] == ["Freeze #1 lifted"]
    assert [p.get("text", "")[:25] for _, p, _ in refuses.refused] == ["Freeze #1 added", "recess could not post a m"]
    assert [r["state"] for r in store.rows("SELECT state FROM outbox ORDER BY id")] == ["dropped", "sent", "dropped"]


# -- order per thread, not across deploys ----------------------------------------------------------


def test_a_deploy_whose_thread_gets_429s_does_not_delay_another_deploys_thread(outboxes, slack, store):
    clock = FakeClock(dt.datetime.now(dt.UTC))
    outbox = outboxes(clock=clock)
    with_cards(outbox, slack)
    refuses = SlackRefuses(slack)
    throttled = card_of(slack, 3).ts
    refuses.rules.append(lambda method, params, post: slack_error("ratelimited", 429, **{"Retry-After": "30"})
                         if params.get("thread_ts") == throttled else None)

    first = outbox.post(CHANNEL, "#3 health: ok", deploy_id=3, thread=True)
    outbox.post(CHANNEL, "#3 shift: 100%", deploy_id=3, thread=True)
    outbox.post(CHANNEL, "#4 health: ok", deploy_id=4, thread=True)
    outbox.post(CHANNEL, "#4 shift: 100%", deploy_id=4, thread=True)

    # Deploy #4's thread is told at once, while #3 waits out the 30 s Slack asked for.
    slack.wait_for(lambda s: thread_texts(s, 4) == ["#4 health: ok", "#4 shift: 100%"])
    assert thread_texts(slack, 3) == []
    assert refuses.count("#3 health: ok") == 1 and refuses.count("#3 shift: 100%") == 0  # in order, behind it
    assert rows.get(store, first)["next_at"] == (clock() + dt.timedelta(seconds=30)).isoformat(timespec="microseconds")

    refuses.rules.clear()
    clock.advance(seconds=30)
    outbox.wake()
    slack.wait_for(lambda s: thread_texts(s, 3) == ["#3 health: ok", "#3 shift: 100%"])
    assert outbox.flush()


# -- transient: retried until it passes, for 24 h at most ----------------------------------------------


def test_transient_errors_are_retried_until_they_pass_and_dropped_after_the_cap(outboxes, slack, store):
    clock = FakeClock(dt.datetime.now(dt.UTC))
    outbox = outboxes(clock=clock, give_up_after=dt.timedelta(hours=24))
    refuses = SlackRefuses(slack)
    flaky = iter([slack_error("internal_error", 500), slack_error("service_unavailable")])
    refuses.rules.append(lambda method, params, post: next(flaky, None) if params.get("text") == "#3 health: ok" else None)
    refuses.rules.append(lambda method, params, post: slack_error("service_unavailable", 503)
                         if params.get("text") == "#4 health: ok" else None)
    flaky_row = outbox.post(CHANNEL, "#3 health: ok", deploy_id=3)
    hopeless = outbox.post(CHANNEL, "#4 health: ok", deploy_id=4)
    outbox.start()

    def tried(flaky_times: int, hopeless_times: int) -> None:
        """Waits until the outbox has recorded that many attempts (so the clock may move on)."""
        wait_until(lambda: rows.get(store, flaky_row)["attempts"] == flaky_times
                   and rows.get(store, hopeless)["attempts"] == hopeless_times,
                   what=f"{flaky_times} and {hopeless_times} attempts")

    tried(1, 1)
    clock.advance(hours=23)
    outbox.wake()
    tried(2, 2)
    clock.advance(minutes=30)
    outbox.wake()
    tried(3, 3)
    assert "#3 health: ok" in [m.text for m in slack.channel_messages(CHANNEL)]
    assert refuses.count("#3 health: ok") == 2 and refuses.count("#4 health: ok") == 3
    assert rows.get(store, hopeless)["sent_at"] is None  # 23.5 h: still trying

    clock.advance(hours=1)
    outbox.wake()
    assert outbox.flush()
    texts = [m.text for m in slack.channel_messages(CHANNEL)]
    assert texts.count("#3 health: ok") == 1
    assert "#4 health: ok" not in texts
    assert "recess could not post a message for deploy #4: Slack kept answering service_unavailable for 24 h; see the log" in texts
    assert rows.get(store, hopeless)["state"] == "dropped"


# -- never twice ---------------------------------------------------------------------------------


def test_a_post_slack_kept_although_its_answer_was_a_500_is_not_posted_again(outboxes, slack, store):
    refuses = SlackRefuses(slack)
    lost = [True]

    def answer_lost(method: str, params: dict[str, Any], post: Callable[[], Answer]) -> Answer | None:
        if params.get("text") == "#3 health: ok" and lost:
            lost.clear()
            post()  # Slack posts it, and then its answer is an error
            return slack_error("internal_error", 500)
        return None

    refuses.rules.append(answer_lost)
    outbox = outboxes()
    with_cards(outbox, slack)
    row_id = outbox.post(CHANNEL, "#3 health: ok", deploy_id=3, thread=True)

    assert outbox.flush()
    assert thread_texts(slack, 3) == ["#3 health: ok"]
    assert rows.get(store, row_id)["result_ts"] == slack.replies(card_of(slack, 3))[0].ts
    assert slack.of("conversations.replies")[-1].params["include_all_metadata"] in ("1", "true", True)


class Crash(BaseException):
    """The process dies here: nothing after it runs (not even `except Exception`)."""


def crashing_after_post(slack: FakeSlack, text: str):  # noqa: ANN201
    """A client whose chat.postMessage of `text` reaches Slack, and then the process dies."""
    client = make_client("xoxb-t", slack.api_url)
    post = client.chat_postMessage

    def post_then_die(**kwargs: Any) -> Any:
        answer = post(**kwargs)
        if kwargs.get("text", "").startswith(text):
            raise Crash(text)
        return answer

    client.chat_postMessage = post_then_die
    return client


def run_until_crash(outbox: Outbox, monkeypatch) -> None:  # noqa: ANN001
    """Starts the outbox's sender and waits until it died of a Crash."""
    died = threading.Event()
    monkeypatch.setattr(threading, "excepthook", lambda args: died.set() if args.exc_type is Crash else None)
    outbox.start()
    assert died.wait(10), "the sender did not crash"


def test_a_crash_between_posting_the_card_and_recording_it_does_not_post_it_twice(outboxes, slack, store, monkeypatch):
    doomed = outboxes(crashing_after_post(slack, "Deploy #3:"))
    doomed.post_card(3, CHANNEL)
    run_until_crash(doomed, monkeypatch)
    before_restart = slack.channel_messages(CHANNEL)
    assert [m.text for m in before_restart] == ["Deploy #3: web v1 → v2"]

    # The restarted bot, on the same database.
    again = Outbox(Store(store.path), make_client("xoxb-t", slack.api_url), render_card=render_card)
    again.post(CHANNEL, "#3 approved", deploy_id=3, thread=True)
    again.start()
    try:
        assert again.flush()
    finally:
        again.stop()
    cards = [m for m in slack.channel_messages(CHANNEL) if m.text.startswith("Deploy #3:")]
    assert len(cards) == 1
    assert deploys.get(again.store, 3)["card_ts"] == cards[0].ts  # the card's ts is the thread
    assert [m.text for m in slack.replies(cards[0])] == ["#3 approved"]
    assert len(slack.of("chat.postMessage")) == 2  # the card once, the thread line once


def test_a_crash_after_posting_a_thread_line_does_not_post_it_twice(outboxes, slack, store, monkeypatch):
    first = outboxes()
    with_cards(first, slack)
    first.stop()
    doomed = outboxes(crashing_after_post(slack, "#3 shift"))
    thread_line = doomed.post(CHANNEL, "#3 shift: 100%", deploy_id=3, thread=True)
    run_until_crash(doomed, monkeypatch)
    assert thread_texts(slack, 3) == ["#3 shift: 100%"]

    again = outboxes()
    again.start()
    assert again.flush()
    assert thread_texts(slack, 3) == ["#3 shift: 100%"]
    assert rows.get(store, thread_line)["result_ts"] == slack.replies(card_of(slack, 3))[0].ts
    assert slack.of("conversations.replies"), "the thread was searched, not the channel"


# -- through the running bot: signed /deploy, the runtime's own outbox -----------------------------


def test_a_deploy_card_slack_refuses_is_told_in_the_channel_and_the_bot_keeps_posting(deploy_server, slack):
    refuses = SlackRefuses(slack)
    refuses.rules.append(lambda method, params, post: slack_error("restricted_action")
                         if method == "chat.postMessage" and "Deploy #2:" in params.get("text", "") else None)
    srv = deploy_server()
    srv.command("/deploy", "web v2")
    slack.wait_for(lambda s: any(m.text.startswith("recess could not post a message for deploy #2")
                                 for m in s.channel_messages(CHANNEL)))
    srv.command("/window", "freeze 2027-04-01T00:00-04:00 2027-04-03T00:00-04:00 exams", user=APPROVER_1)
    slack.wait_for(lambda s: any("exams" in m.text for m in s.channel_messages(CHANNEL)))
    assert srv.rt.outbox.flush()
    assert [m.text for m in slack.channel_messages(CHANNEL)][0] == \
        "recess could not post a message for deploy #2: Slack said restricted_action; see the log"
    assert len(refuses.refused) == 1  # the card, once: refused for good
