"""The Slack edge under hostile and unlucky traffic, over real HTTP to /slack/events: bounded bodies,
malformed requests that answer 400 or 401 (never 500, never a traceback), no replays (also across a
restart), Slack's retries acted on once, and one home workspace."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import select
import socket
import sqlite3
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot.edge import Workspaces
from commands.config import load_config
from storage import deploys as rows
from tests.fake_platform import FakePlatform
from tests.harness import (
    APPROVER_1,
    BASE_CONFIG,
    ENGINEER,
    FAKE_SERVICE,
    SECRET,
    FakeClock,
    RecessServer,
    write_config,
)
from tests.kit.signer import FORM, SlackSender
from tests.kit.slack import FakeSlack

# Tuesday 2027-03-16 22:00 New York / 19:00 Los Angeles: every school is out.
AFTER_SCHOOL = dt.datetime(2027, 3, 17, 2, 0, tzinfo=dt.UTC)
MiB = 1024 * 1024
HUNDRED_MB = 100 * MiB


class Servers:
    """Starts recess servers on one folder (so one database) and stops each exactly once."""

    def __init__(self, tmp_path: Path, slack: FakeSlack) -> None:
        self.tmp_path, self.slack = tmp_path, slack
        self.running: list[RecessServer] = []

    def start(self, extra: str = FAKE_SERVICE, base: str = BASE_CONFIG) -> RecessServer:
        cfg = load_config(write_config(self.tmp_path, extra, base))
        srv = RecessServer(cfg, self.slack, FakeClock(AFTER_SCHOOL))
        srv.fake = FakePlatform(live="v1")
        srv.rt.extras["platform_factory"] = lambda cfg, service, env: srv.fake
        self.running.append(srv)
        return srv

    def stop(self, srv: RecessServer) -> None:
        self.running.remove(srv)
        srv.stop()

    def close(self) -> None:
        for srv in list(self.running):
            self.stop(srv)


@pytest.fixture
def servers(tmp_path, slack):
    made = Servers(tmp_path, slack)
    yield made
    made.close()


@pytest.fixture
def srv(servers):
    server = servers.start()
    rows.insert(server.rt.store, service="web", env="production", version="v1", requester=ENGINEER,
                status="succeeded", traffic_at=dt.datetime(2027, 1, 1, tzinfo=dt.UTC), blue_retired=1)
    return server


def until(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError("the condition did not hold in time")


def deploy_count(srv: RecessServer, version: str | None = None) -> int:
    if version is None:
        return srv.rt.store.row("SELECT count(*) AS n FROM deploys")["n"]
    return srv.rt.store.row("SELECT count(*) AS n FROM deploys WHERE version = ?", (version,))["n"]


def calls_except_auth(slack: FakeSlack) -> list[str]:
    return [c.method for c in slack.calls if c.method != "auth.test"]


def signed_headers(body: bytes, *, content_type: str = FORM, timestamp: int | None = None) -> dict[str, str]:
    """Slack's headers for any bytes, UTF-8 or not (the signature is over the raw body)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(SECRET.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256).hexdigest()
    return {"Content-Type": content_type, "X-Slack-Request-Timestamp": ts, "X-Slack-Signature": "v0=" + digest}


def stream(port: int, path: str, total: int, *, chunked: bool, headers: dict[str, str] | None = None,
           chunk: int = 64 * 1024) -> tuple[int | str, int, bytes]:
    """POSTs up to `total` bytes (chunked, or with a declared Content-Length), never blocking on a
    send: stops sending as soon as the server answers. Returns (status, or "reset" when the
    connection was reset before an answer could be read; bytes sent; the raw answer)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", framing, *(f"{k}: {v}" for k, v in (headers or {}).items())]
    out = bytearray(("\r\n".join(lines) + "\r\n\r\n").encode())
    block, sent, answer = b"x" * chunk, 0, b""
    try:
        while True:
            want_write = bool(out) or (chunk > 0 and sent < total)  # chunk 0: headers only
            readable, writable, _ = select.select([sock], [sock] if want_write else [], [], 30)
            if readable:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
                head, sep, rest = answer.partition(b"\r\n\r\n")
                length = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
                if sep and length and len(rest) >= length[0]:
                    break
                continue
            if not writable:
                break  # 30 s without an answer or room to send: the caller's assertions say what failed
            if not out:
                out += (f"{chunk:x}\r\n".encode() + block + b"\r\n") if chunked else block
                sent += chunk
                if chunked and sent >= total:
                    out += b"0\r\n\r\n"
            out = out[sock.send(out):]
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server closed with the body unread: its reset can overtake its answer
    finally:
        sock.close()
    status: int | str = int(answer.split(b" ")[1]) if answer.startswith(b"HTTP/1.1 ") else "reset"
    return status, sent, answer


def json_of(answer: bytes) -> dict[str, Any]:
    return json.loads(answer.partition(b"\r\n\r\n")[2])


# -- bounded bodies -------------------------------------------------------------------------------


def test_a_declared_body_over_one_mebibyte_is_refused_413_before_any_of_it_is_read(srv):
    headers = {"Content-Type": "application/json", "X-Slack-Request-Timestamp": str(int(time.time())),
               "X-Slack-Signature": "v0=" + "0" * 64}
    status, sent, answer = stream(srv.port, "/slack/events", HUNDRED_MB, chunked=False, headers=headers, chunk=0)
    assert status == 413 and sent == 0  # the answer came before a single byte of the body
    assert "limit" in json_of(answer)["error"]


def test_a_chunked_body_over_one_mebibyte_is_refused_413_while_it_is_still_being_sent(srv):
    headers = {"Content-Type": "application/json", "X-Slack-Request-Timestamp": str(int(time.time())),
               "X-Slack-Signature": "v0=" + "0" * 64}
    answers = []
    for _ in range(3):  # the 413 itself can be lost to the reset that follows it; one is enough
        status, sent, answer = stream(srv.port, "/slack/events", HUNDRED_MB, chunked=True, headers=headers)
        assert sent < HUNDRED_MB  # refused mid-stream: the server stopped reading near the limit
        assert status in (413, "reset"), answer[:200]
        answers.append(answer)
        if status == 413:
            assert b"connection: close" in answer.lower()
            break
    assert any(a.startswith(b"HTTP/1.1 413") for a in answers)


def test_ofrep_bodies_are_bounded_at_64_kib_for_one_flag_and_1_mib_for_all(srv):
    auth = {"Authorization": f"Bearer {srv.rt.cfg.flags.api_keys[0]}", "Content-Type": "application/json"}
    padded = json.dumps({"context": {"targetingKey": "u1", "pad": "x" * 100_000}}).encode()
    one = srv.http.post("/ofrep/v1/evaluate/flags/portfolio_enabled", content=padded, headers=auth)
    assert one.status_code == 400 and one.json()["errorCode"] == "PARSE_ERROR" and "65536" in one.json()["errorDetails"]
    bulk = srv.http.post("/ofrep/v1/evaluate/flags", content=padded, headers=auth)
    assert bulk.status_code == 200 and bulk.json()["flags"]
    status, sent, answer = stream(srv.port, "/ofrep/v1/evaluate/flags", HUNDRED_MB, chunked=True, headers=auth)
    assert sent < HUNDRED_MB and status in (400, "reset")
    if status == 400:
        assert json_of(answer)["errorCode"] == "PARSE_ERROR"


# -- malformed requests: 400 or 401, one log line, no traceback ----------------------------------


def _no_traceback(caplog) -> None:  # noqa: ANN001
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    refusals = [r for r in caplog.records if r.name == "recess.http" and "refused" in r.getMessage()]
    assert len(refusals) == 1, [r.getMessage() for r in caplog.records]


NOW = "now"  # stands for the current Unix time in the cases below

GARBAGE = {
    "unsigned 0xFF body": (b"\xff", {"X-Slack-Request-Timestamp": NOW, "X-Slack-Signature": "v0=" + "0" * 64}, 401),
    "signed 0xFF body": (b"\xff", "signed", 400),
    "timestamp abc": (b"command=%2Fwindow", {"X-Slack-Request-Timestamp": "abc", "X-Slack-Signature": "v0=" + "0" * 64}, 401),
    "non-ASCII byte in the signature": (b"command=%2Fwindow", {"X-Slack-Request-Timestamp": NOW, "X-Slack-Signature": b"v0=\xe9" + b"0" * 63}, 401),
    "no signature at all": (b"command=%2Fwindow", {}, 401),
    "signed empty body": (b"", "signed", 400),
    "signed broken JSON": (b'{"type": ', "signed", 400),
    "signed form with a broken payload": (b"payload=%7Bnope", "signed", 400),
    "signed JSON array": (b"[1, 2]", "signed", 400),
    "signed deep nesting": (b"[" * 100_000, "signed", 400),
}


@pytest.mark.parametrize("body,headers,status", list(GARBAGE.values()), ids=list(GARBAGE))
def test_garbage_bytes_and_headers_answer_400_or_401_with_one_log_line_and_no_traceback(srv, slack, caplog, body, headers, status):
    caplog.set_level(logging.INFO)
    if headers == "signed":
        sent = signed_headers(body, content_type="application/json" if body.startswith((b"{", b"[")) else FORM)
    else:
        sent = [(k, str(int(time.time())) if v == NOW else v) for k, v in headers.items()]
    resp = srv.http.post("/slack/events", content=body, headers=sent)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]
    _no_traceback(caplog)
    assert calls_except_auth(slack) == []


def click_payload(**changes: Any) -> dict[str, Any]:
    payload = {
        "type": "block_actions", "team": {"id": "T1"}, "user": {"id": APPROVER_1, "team_id": "T1"},
        "api_app_id": "A1", "container": {"type": "message", "message_ts": "1800000001.000100", "channel_id": "C0DEPLOYS"},
        "channel": {"id": "C0DEPLOYS"}, "response_url": "https://hooks.invalid/r",
        "actions": [{"type": "button", "action_id": "deploy_approve", "block_id": "b", "value": "1"}],
    }
    for key, value in changes.items():
        if value is ...:
            payload.pop(key)
        else:
            payload[key] = value
    return payload


def event_payload(**changes: Any) -> dict[str, Any]:
    payload = {"token": "legacy", "team_id": "T1", "api_app_id": "A1", "type": "event_callback", "event_id": "EvBad",
               "event_time": 1, "event": {"type": "app_home_opened", "user": ENGINEER, "channel": "D1", "tab": "home"}}
    for key, value in changes.items():
        if value is ...:
            payload.pop(key)
        else:
            payload[key] = value
    return payload


def form(payload: dict[str, Any]) -> bytes:
    return urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()


WRONG_TYPES = {
    "event_id a list": json.dumps(event_payload(event_id=["Ev1"])).encode(),
    "event a string": json.dumps(event_payload(event="app_home_opened")).encode(),
    "event without a type": json.dumps(event_payload(event={"user": ENGINEER})).encode(),
    "event team_id missing": json.dumps(event_payload(team_id=...)).encode(),
    "authorizations a string": json.dumps(event_payload(authorizations="abc")).encode(),
    "enterprise a number": json.dumps(event_payload(enterprise=5)).encode(),
    "actions a string": form(click_payload(actions="deploy_approve")),
    "actions empty": form(click_payload(actions=[])),
    "an action a string": form(click_payload(actions=["deploy_approve"])),
    "action value a list": form(click_payload(actions=[{"action_id": "deploy_approve", "value": ["1"]}])),
    "user not an object": form(click_payload(user=APPROVER_1)),
    "user without an id": form(click_payload(user={"name": "x"})),
    "team missing": form(click_payload(team=...)),
    "team a number": form(click_payload(team=7)),
    "container a string": form(click_payload(container="message")),
    "message_ts a number": form(click_payload(container={"message_ts": 1800000001, "channel_id": "C0DEPLOYS"})),
    "payload type a number": form(click_payload(type=3)),
    "command without user_id": b"command=%2Fdeploy&text=web+v2&team_id=T1&channel_id=C0ENG",
    "command without a slash": b"command=deploy&text=web+v2&team_id=T1&user_id=U0ENGINEER&channel_id=C0ENG",
}


@pytest.mark.parametrize("body", list(WRONG_TYPES.values()), ids=list(WRONG_TYPES))
def test_signed_payloads_with_wrong_types_answer_400_and_do_nothing(srv, slack, caplog, body):
    caplog.set_level(logging.INFO)
    content_type = "application/json" if body.startswith(b"{") else FORM
    resp = srv.http.post("/slack/events", content=body, headers=signed_headers(body, content_type=content_type))
    assert resp.status_code == 400, resp.text
    assert "malformed" in resp.json()["error"]
    _no_traceback(caplog)
    assert calls_except_auth(slack) == []
    assert rows.approvers(srv.rt.store, 1) == []


# -- replays and Slack's retries ------------------------------------------------------------------


def test_a_replayed_deploy_request_is_refused_401_and_creates_no_second_deploy(srv, slack):
    body = srv.sender.command_body("/deploy", "web v2")
    ts = int(time.time())
    first = srv.sender.send(body, timestamp=ts)
    assert first.status_code == 200
    until(lambda: (rows.get(srv.rt.store, 2) or {}).get("card_ts"))
    card = until(lambda: [m for m in slack.channel_messages("C0DEPLOYS") if m.ts == rows.get(srv.rt.store, 2)["card_ts"]])[0]
    _, cancel = card.button("Cancel")
    srv.sender.action(cancel["action_id"], cancel["value"], user=ENGINEER, message_ts=card.ts)
    until(lambda: rows.get(srv.rt.store, 2)["status"] == "cancelled")  # the first request, cancelled
    replay = srv.sender.send(body, timestamp=ts)
    assert replay.status_code == 401 and "replayed" in replay.json()["error"]
    assert deploy_count(srv, "v2") == 1


def test_a_replay_after_a_restart_on_the_same_database_is_still_refused(servers, srv):
    body = srv.sender.command_body("/deploy", "web v2")
    ts = int(time.time())
    assert srv.sender.send(body, timestamp=ts).status_code == 200
    until(lambda: deploy_count(srv, "v2") == 1)
    servers.stop(srv)
    again = servers.start()
    replay = again.sender.send(body, timestamp=ts)
    assert replay.status_code == 401 and "replayed" in replay.json()["error"]
    # A different request still gets through, and the replay left nothing behind.
    assert again.command("/deploy", "web v3").status_code == 200
    until(lambda: deploy_count(again, "v3") == 1)
    assert deploy_count(again, "v2") == 1


def test_a_slack_retry_of_a_command_is_acknowledged_without_a_second_deploy(srv):
    body = srv.sender.command_body("/deploy", "web v2")
    assert srv.sender.send(body).status_code == 200
    until(lambda: deploy_count(srv, "v2") == 1)
    # Slack's retry: the same body, a new timestamp and signature, and the retry headers.
    retry = srv.sender.send(body, timestamp=int(time.time()) + 1,
                            headers={"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"})
    assert retry.status_code == 200 and retry.content == b""
    assert srv.command("/deploy", "web v3").status_code == 200  # a later request, as a barrier
    until(lambda: deploy_count(srv, "v3") == 1)
    assert deploy_count(srv, "v2") == 1


def test_a_slack_retry_in_the_same_second_is_acknowledged_not_refused(srv, slack):
    """A retry sent at once can carry the very same timestamp, hence the same signature: 200, not 401."""
    body = srv.sender.event_body({"type": "app_home_opened", "user": ENGINEER, "channel": "D1", "tab": "home"}, event_id="EvSame")
    ts = int(time.time())
    assert srv.sender.send(body, "application/json", timestamp=ts).status_code == 200
    retry = srv.sender.send(body, "application/json", timestamp=ts, headers={"X-Slack-Retry-Num": "1"})
    assert retry.status_code == 200


def test_a_slack_retry_of_an_event_after_a_restart_is_still_acted_on_once(servers, srv, slack):
    event = {"type": "app_home_opened", "user": ENGINEER, "channel": "D1", "tab": "home"}
    assert srv.sender.event(event, event_id="EvHome1").status_code == 200
    slack.wait_for(lambda s: s.of("views.publish"))
    servers.stop(srv)
    again = servers.start()
    assert again.sender.event(event, event_id="EvHome1", retry_num=2).status_code == 200
    other = {"type": "app_home_opened", "user": APPROVER_1, "channel": "D2", "tab": "home"}
    assert again.sender.event(other, event_id="EvHome2").status_code == 200  # a barrier
    slack.wait_for(lambda s: [c for c in s.of("views.publish") if c.params.get("user_id") == APPROVER_1])
    assert len([c for c in slack.of("views.publish") if c.params.get("user_id") == ENGINEER]) == 1


# -- one home workspace ---------------------------------------------------------------------------


def sender_from(srv: RecessServer, team: str) -> SlackSender:
    return SlackSender(srv.url, SECRET, response_url=srv.slack.response_url(), team_id=team)


def test_a_command_from_another_workspace_is_refused_and_stores_nothing(srv, slack):
    before = deploy_count(srv)
    resp = sender_from(srv, "T0OTHER").command("/deploy", "web v2")
    assert resp.status_code == 200
    assert resp.json()["response_type"] == "ephemeral" and "installed in" in resp.json()["text"]
    assert srv.command("/deploy", "web v3").status_code == 200  # the home team, as a barrier
    until(lambda: deploy_count(srv, "v3") == 1)
    assert deploy_count(srv) == before + 1 and deploy_count(srv, "v2") == 0


def test_a_click_from_another_workspace_is_refused_and_approves_nothing(srv, slack):
    assert srv.command("/deploy", "web v2").status_code == 200
    until(lambda: (rows.get(srv.rt.store, 2) or {}).get("card_ts"))
    card_ts = rows.get(srv.rt.store, 2)["card_ts"]
    resp = sender_from(srv, "T0OTHER").action("deploy_approve", "2", user=APPROVER_1, message_ts=card_ts)
    assert resp.status_code == 200 and "installed in" in resp.json()["text"]
    assert rows.approvers(srv.rt.store, 2) == [] and rows.get(srv.rt.store, 2)["status"] == "pending"


def test_an_event_from_another_workspace_is_ignored(srv, slack):
    event = {"type": "app_home_opened", "user": ENGINEER, "channel": "D1", "tab": "home"}
    assert sender_from(srv, "T0OTHER").event(event, event_id="EvOther").status_code == 200
    home = {"type": "app_home_opened", "user": APPROVER_1, "channel": "D2", "tab": "home"}
    assert srv.sender.event(home, event_id="EvHome").status_code == 200  # a barrier
    slack.wait_for(lambda s: s.of("views.publish"))
    assert [c.params.get("user_id") for c in slack.of("views.publish")] == [APPROVER_1]


PARTNER = BASE_CONFIG.replace("[access]\n", '[access]\nteams = ["T0PARTNER"]\n')


def test_access_teams_adds_listed_workspaces_to_the_installed_one(servers):
    srv = servers.start(base=PARTNER)
    assert srv.rt.extras["home_team"] == "T1"  # auth.test's answer, at start-up
    assert "installed in" not in srv.command("/window").text
    assert "installed in" not in sender_from(srv, "T0PARTNER").command("/window").text
    assert "installed in" in sender_from(srv, "T0OTHER").command("/window").text


def test_when_auth_test_fails_recess_starts_and_serves_only_access_teams(servers, slack, caplog):
    caplog.set_level(logging.INFO)
    slack.fail_next("auth.test", 500, count=10)
    srv = servers.start(base=PARTNER)
    assert any("auth.test failed" in r.getMessage() for r in caplog.records)
    assert srv.rt.extras["home_team"] is None
    assert "installed in" not in sender_from(srv, "T0PARTNER").command("/window").text
    assert "installed in" in sender_from(srv, "T0OTHER").command("/window").text


def test_with_no_known_workspace_requests_are_served_and_auth_test_is_asked_again():
    answers = iter([RuntimeError("Slack is down"), "T1"])

    def lookup() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    clock = FakeClock(AFTER_SCHOOL)
    workspaces = Workspaces([], lookup, clock=lambda: clock().timestamp(), retry_every=60)
    assert workspaces.home is None
    assert workspaces.serves(["T0OTHER"])  # nothing known: served (the signature still proves Slack sent it)
    clock.advance(seconds=61)
    workspaces.serves(["T0OTHER"])  # asks auth.test again, in the background
    until(lambda: workspaces.home == "T1")
    assert not workspaces.serves(["T0OTHER"]) and workspaces.serves(["T1"])


def test_replays_are_refused_while_another_process_holds_the_database(srv):
    """The replay check never waits on SQLite's write lock: memory answers, and the signature is
    written once the lock is free."""
    body = srv.sender.command_body("/window", "")
    ts = int(time.time())
    signature = srv.sender.headers(body, timestamp=ts)["X-Slack-Signature"]
    other = sqlite3.connect(srv.rt.cfg.database_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        assert srv.sender.send(body, timestamp=ts).status_code == 200
        replay = srv.sender.send(body, timestamp=ts)
        assert replay.status_code == 401 and "replayed" in replay.json()["error"]
    finally:
        other.execute("ROLLBACK")
        other.close()
    until(lambda: srv.rt.store.row("SELECT 1 AS x FROM seen_signatures WHERE signature = ?", (signature,)))


def test_a_command_whose_text_mentions_payload_is_read_as_the_command_it_is(srv):
    answer = srv.command("/deploy", "web payload-v2")
    assert answer.status_code == 200
    assert deploy_count(srv, "payload-v2") == 1


def test_a_click_form_is_still_read_from_its_payload_field(srv):
    assert srv.command("/deploy", "web v2").status_code == 200
    deploy_id = until(lambda: srv.rt.store.row("SELECT id FROM deploys WHERE version = 'v2'"))["id"]
    assert srv.click("deploy_approve", deploy_id, APPROVER_1).status_code == 200
    until(lambda: rows.approvers(srv.rt.store, deploy_id) == [APPROVER_1])
