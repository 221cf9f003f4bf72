"""The test kit keeps Slack's contract, so a test that passes against it means something."""

from __future__ import annotations

import itertools
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier

from tests.kit.load import Load
from tests.kit.signer import SlackSender, sign
from tests.kit.slack import FakeSlack, FakeSlackProcess, User

SLACK_DOCUMENTED_BODY = (
    "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
    "&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
    "&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
    "&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)


def test_signing_matches_slacks_documented_example():
    assert sign("8f742231b10e8888abcd99yyyzzz85a5", "1531420618", SLACK_DOCUMENTED_BODY) == (
        "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503")


def test_every_body_the_sender_builds_passes_slacks_own_verifier():
    sender = SlackSender("http://127.0.0.1:9", "s3cret")
    verifier = SignatureVerifier("s3cret")
    for body, kind in ((sender.command_body("/deploy", "web v2"), "application/x-www-form-urlencoded"),
                       (sender.action_body("deploy_approve", "2", user="U1"), "application/x-www-form-urlencoded"),
                       (sender.event_body({"type": "app_home_opened", "user": "U1"}), "application/json")):
        headers = sender.headers(body, kind)
        assert verifier.is_valid_request(body, headers)
        assert not SignatureVerifier("other").is_valid_request(body, headers)


def test_a_click_on_an_ephemeral_message_carries_no_message_as_in_slack():
    sender = SlackSender("http://127.0.0.1:9", "s")
    payload = json.loads(urllib.parse.parse_qs(sender.action_body("x", "1", user="U1", ephemeral=True))["payload"][0])
    assert "message" not in payload and payload["container"]["is_ephemeral"] is True
    shown = json.loads(urllib.parse.parse_qs(sender.action_body("x", "1", user="U1"))["payload"][0])
    assert shown["message"]["ts"] == shown["container"]["message_ts"]


@pytest.fixture
def fake():
    with FakeSlack(token="xoxb-right", users=[User("U1", "dana")], channels={"C1": "deploys"}) as f:
        yield f


def test_fake_slack_answers_with_slacks_errors(fake):
    client = WebClient(token="xoxb-right", base_url=fake.api_url)
    with pytest.raises(SlackApiError) as err:
        WebClient(token="xoxb-wrong", base_url=fake.api_url).auth_test()
    assert err.value.response["error"] == "invalid_auth"
    for call, error in ((lambda: client.chat_postMessage(channel="C9", text="x"), "channel_not_found"),
                        (lambda: client.chat_update(channel="C1", ts="1.2", text="x"), "message_not_found"),
                        (lambda: client.chat_postMessage(channel="C1", text="x", thread_ts="1.2"), "thread_not_found"),
                        (lambda: client.users_info(user="U404"), "user_not_found"),
                        (lambda: client.api_call("conversations.kick"), "unknown_method")):
        with pytest.raises(SlackApiError) as err:
            call()
        assert err.value.response["error"] == error
    assert fake.unanswered == ["conversations.kick"]


def test_fake_slack_keeps_the_channel_with_threads_and_edits(fake):
    client = WebClient(token="xoxb-right", base_url=fake.api_url)
    card = client.chat_postMessage(channel="C1", text="Deploy #1", blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": "hi"}}])
    assert card["ok"] and card["message"]["text"] == "Deploy #1"
    client.chat_postMessage(channel="C1", text="step", thread_ts=card["ts"])
    updated = client.chat_update(channel="C1", ts=card["ts"], text="Deploy #1 approved")
    assert updated["ts"] == card["ts"] and updated["text"] == "Deploy #1 approved"
    [message] = fake.channel_messages("C1")
    assert message.text == "Deploy #1 approved" and message.edits == 1
    assert [m.text for m in fake.replies(message)] == ["step"]
    assert [e.kind for e in fake.events] == ["posted", "replied", "updated"]
    assert client.users_info(user="U1")["user"]["name"] == "dana"


def test_fake_slack_rate_limits_on_request_and_recovers():
    with FakeSlack() as fake:
        fake.fail_next("chat.postMessage", 429)
        client = WebClient(token="xoxb-any", base_url=fake.api_url)
        with pytest.raises(SlackApiError) as err:
            client.chat_postMessage(channel="C1", text="x")
        assert err.value.response.status_code == 429 and err.value.response.headers["Retry-After"] == "1"
        assert client.chat_postMessage(channel="C1", text="x")["ok"]
        assert [c.method for c in fake.calls] == ["chat.postMessage!429", "chat.postMessage"]
        with pytest.raises(SlackApiError) as err:
            WebClient(base_url=fake.api_url).auth_test()
        assert err.value.response["error"] == "not_authed"


def test_response_urls_reach_the_channel_as_slack_delivers_them(fake):
    import httpx

    url = fake.response_url_for("U1", "C1")
    httpx.post(url, json={"text": "only you", "response_type": "ephemeral"})
    httpx.post(url, json={"text": "everyone", "response_type": "in_channel"})
    assert [m.text for m in fake.ephemerals_to("U1")] == ["only you"]
    assert [m.text for m in fake.channel_messages("C1")] == ["everyone"]
    assert len(fake.responses) == 2


def test_fake_slack_in_a_child_process_answers_like_the_in_process_one():
    with FakeSlackProcess() as fake:
        assert WebClient(token="xoxb-any", base_url=fake.api_url).auth_test()["user_id"] == "UBOT"


class _Versions(BaseHTTPRequestHandler):
    """Answers, over and over: v1, v1, v2, then a 503 (on the same kept connection)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        status, body = self.server.next_answer()
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def versions():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Versions)
    server.daemon_threads = True
    lock = threading.Lock()
    answers = itertools.cycle([(200, "v1"), (200, "v1"), (200, "v2"), (503, "busy")])

    def next_answer() -> tuple[int, str]:
        with lock:
            return next(answers)

    server.next_answer = next_answer
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("process", [False, True], ids=["threads", "child-process"])
def test_load_counts_answers_per_version_and_failures_on_kept_connections(versions, process):
    with Load(versions, clients=3, process=process, record=True) as load:
        stopped = threading.Event()
        while load.count() < 40 and not stopped.wait(0.02):
            pass
    result = load.stop()
    assert result.total >= 40 and result.total == len(result.requests)
    assert set(result.by_version) == {"v1", "v2"}
    assert result.failed > 0 and all(reason.startswith("HTTP 503") for _, reason in result.failures)
    assert result.by_version["v1"] > result.by_version["v2"]
    assert result.connections_opened == 3  # a 503 does not cost a client its connection


def test_load_in_this_process_is_readable_while_it_runs(versions):
    with Load(versions, clients=2) as load:
        seen = load.wait_until(lambda t: t.by_version["v2"] >= 5 and t)
        assert seen.ok >= 15
    assert load.total >= seen.total
