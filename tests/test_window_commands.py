"""/window over signed HTTP, the window API and CLI contract, and the HTTP edge's refusals."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
import urllib.parse

import pytest

from tests.harness import APPROVER_1, ENGINEER, FakeClock

# Tuesday 2027-03-16 09:30 in New York: school is in session there (and not yet in Los Angeles).
IN_SCHOOL = dt.datetime(2027, 3, 16, 13, 30, tzinfo=dt.UTC)
# Tuesday 2027-03-16 22:00 New York / 19:00 Los Angeles: every school is out.
AFTER_SCHOOL = dt.datetime(2027, 3, 17, 2, 0, tzinfo=dt.UTC)


def reply_text(resp) -> str:  # noqa: ANN001
    body = resp.json()
    parts = [body.get("text", "")]
    for block in body.get("blocks", []):
        if "text" in block and isinstance(block["text"], dict):
            parts.append(block["text"]["text"])
        for el in block.get("elements", []):
            if isinstance(el, dict) and "text" in el:
                parts.append(el["text"] if isinstance(el["text"], str) else el["text"].get("text", ""))
    return "\n".join(parts)


def freeze_count(srv) -> int:  # noqa: ANN001
    return srv.rt.store.execute("SELECT count(*) FROM freezes WHERE lifted_at IS NULL").fetchone()[0]


def audit_count(srv) -> int:  # noqa: ANN001
    return srv.rt.store.execute("SELECT count(*) FROM audit").fetchone()[0]


def test_window_during_school_names_the_school_and_the_next_safe_window(server_factory):
    srv = server_factory(clock=FakeClock(IN_SCHOOL))
    resp = srv.command("/window")
    assert resp.status_code == 200
    body = resp.json()
    assert body["response_type"] == "ephemeral"
    text = reply_text(resp)
    assert "blocked" in text
    assert "lincoln-high" in text and "America/New_York" in text
    # The last school (Los Angeles) ends at 15:00 PDT = 18:00 EDT, shown in the caller's zone.
    assert "Next safe window" in text and "18:00" in text


def test_window_after_the_last_school_day_is_safe(server_factory):
    srv = server_factory(clock=FakeClock(AFTER_SCHOOL))
    text = reply_text(srv.command("/window"))
    assert "Safe to deploy now" in text


def test_window_at_a_future_time_answers_for_that_time(server_factory):
    srv = server_factory(clock=FakeClock(IN_SCHOOL))
    text = reply_text(srv.command("/window", "at 2027-03-20T10:00:00-04:00"))  # a Saturday
    assert "Safe to deploy at" in text
    text = reply_text(srv.command("/window", "at friday 16:00"))  # 16:00 NY: LA still in school
    assert "blocked" in text and "la-elementary" in text


def test_freeze_round_trip_is_stored_audited_and_announced(server_factory, slack):
    srv = server_factory(clock=FakeClock(AFTER_SCHOOL))
    resp = srv.command("/window", "freeze 2027-04-01T00:00-04:00 2027-04-03T00:00-04:00 Report cards", user=APPROVER_1)
    text = reply_text(resp)
    assert "Freeze #1 added" in text
    assert freeze_count(srv) == 1
    slack.wait_for(lambda s: any("Report cards" in t for t in s.texts()))
    post = [c for c in slack.of("chat.postMessage") if "Report cards" in c.params["text"]][0]
    assert post.params["channel"] == "C0DEPLOYS"

    # The freeze blocks deploys at night too, in the API.
    api = srv.http.get("/api/v1/window", params={"at": "2027-04-01T23:00:00-04:00"}).json()
    assert api["safe"] is False
    assert {"kind": "freeze", "id": 1, "reason": "Report cards", "until": "2027-04-03T04:00:00+00:00"} in api["blocked_by"]
    assert "Report cards" in api["reason"]

    assert "Report cards" in reply_text(srv.command("/window", "freezes"))
    assert "lifted" in reply_text(srv.command("/window", "unfreeze 1", user=APPROVER_1))
    assert freeze_count(srv) == 0
    slack.wait_for(lambda s: any("lifted freeze #1" in t for t in s.texts()))
    actions = [r["action"] for r in srv.rt.store.rows("SELECT action FROM audit WHERE target LIKE 'freeze:%' ORDER BY id")]
    assert actions == ["freeze.add", "freeze.lift"]


@pytest.mark.parametrize(
    ("user", "text", "expected"),
    [
        (ENGINEER, "freeze 2027-04-01T00:00-04:00 2027-04-03T00:00-04:00 Testing", "only approvers"),
        (APPROVER_1, "freeze 2027-04-03T00:00-04:00 2027-04-01T00:00-04:00 Backwards", "end after it starts"),
        (APPROVER_1, "freeze 2020-01-01T00:00Z 2020-01-02T00:00Z Long ago", "in the past"),
        (APPROVER_1, "freeze tomorrow 2027-04-03T00:00-04:00 Bad start", "not an ISO 8601 time"),
        (APPROVER_1, "freeze 2027-04-01T00:00-04:00", "needs START, END and a REASON"),
        (APPROVER_1, "unfreeze 42", "no freeze #42"),
        (APPROVER_1, "unfreeze soon", "needs one freeze ID"),
        (ENGINEER, "at someday", "could not read the time"),
        (ENGINEER, "at", "needs a time"),
        (ENGINEER, "lunch", "unknown subcommand"),
        (ENGINEER, 'freeze "unclosed', "check your quotes"),
    ],
)
def test_bad_window_input_gets_a_clear_ephemeral_answer_and_changes_nothing(server_factory, user, text, expected):
    srv = server_factory(clock=FakeClock(AFTER_SCHOOL))
    before = (freeze_count(srv), audit_count(srv))
    resp = srv.command("/window", text, user=user)
    assert resp.status_code == 200
    assert resp.json()["response_type"] == "ephemeral"
    answer = reply_text(resp)
    assert expected in answer
    assert "Usage" in answer
    assert (freeze_count(srv), audit_count(srv)) == before


def test_window_help_shows_usage(server_factory):
    srv = server_factory(clock=FakeClock(AFTER_SCHOOL))
    assert "/window freeze START END REASON" in reply_text(srv.command("/window", "help"))


def test_requests_with_bad_or_stale_signatures_get_401_and_are_not_processed(server_factory, slack):
    srv = server_factory(clock=FakeClock(AFTER_SCHOOL))
    text = "freeze 2027-04-01T00:00-04:00 2027-04-03T00:00-04:00 Sneaky"
    assert srv.sender.command("/window", text, user=APPROVER_1, secret="wrong-secret").status_code == 401
    stale = int(time.time()) - 6 * 60
    assert srv.sender.command("/window", text, user=APPROVER_1, timestamp=stale).status_code == 401
    assert freeze_count(srv) == 0


def test_a_malformed_signed_body_gets_400(server_factory):
    srv = server_factory(clock=FakeClock(AFTER_SCHOOL))
    assert srv.sender.send("payload=%7Bnot-json", "application/x-www-form-urlencoded").status_code == 400
    assert srv.sender.send("{not json", "application/json").status_code == 400
    assert srv.sender.send("", "application/x-www-form-urlencoded").status_code == 400


def test_window_api_matches_the_contract(server_factory):
    srv = server_factory(clock=FakeClock(IN_SCHOOL))
    body = srv.http.get("/api/v1/window", params={"at": "2027-03-16T09:30:00-04:00"}).json()
    assert set(body) == {"at", "safe", "reason", "next_safe_at", "blocked_by"}
    assert body["at"] == "2027-03-16T13:30:00+00:00"
    assert body["safe"] is False
    assert body["next_safe_at"] == "2027-03-16T22:00:00+00:00"  # 15:00 in Los Angeles
    assert {"tenant": "lincoln-high", "kind": "school_hours", "until": "2027-03-16T19:00:00+00:00"} in body["blocked_by"]
    safe = srv.http.get("/api/v1/window", params={"at": "2027-03-20T12:00:00Z"}).json()
    assert safe["safe"] is True and safe["next_safe_at"] == safe["at"] and safe["blocked_by"] == []
    now = srv.http.get("/api/v1/window").json()  # no `at`: the server's (injected) clock
    assert now["at"] == "2027-03-16T13:30:00+00:00"


@pytest.mark.parametrize("bad", ["yesterday", "2027-03-16T09:30:00", "2027-13-01T00:00Z"])
def test_window_api_refuses_a_bad_at_with_400(server_factory, bad):
    srv = server_factory(clock=FakeClock(IN_SCHOOL))
    resp = srv.http.get("/api/v1/window?at=" + urllib.parse.quote(bad))
    assert resp.status_code == 400
    assert "error" in resp.json()


def test_healthz_reports_store_and_scheduler(server_factory):
    srv = server_factory()
    resp = srv.http.get("/healthz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok", "store": True, "scheduler": True}


def test_unknown_routes_answer_json_404(server_factory):
    srv = server_factory()
    resp = srv.http.get("/nope")
    assert resp.status_code == 404 and "error" in resp.json()


def test_window_check_cli_exits_0_when_safe_and_1_when_blocked(tmp_path):
    from tests.harness import write_config

    cfg = write_config(tmp_path)
    env = {**os.environ, "RECESS_CONFIG": str(cfg)}
    cli = [sys.executable, "-m", "bot.cli", "window", "check"]
    blocked = subprocess.run([*cli, "--at", "2027-03-16T09:30:00-04:00"], env=env, capture_output=True, text=True)
    assert blocked.returncode == 1
    assert "lincoln-high" in blocked.stdout and "2027-03-16T22:00:00+00:00" in blocked.stdout
    safe = subprocess.run([*cli, "--at", "2027-03-20T12:00:00Z", "--format", "json"], env=env, capture_output=True, text=True)
    assert safe.returncode == 0
    assert json.loads(safe.stdout)["safe"] is True
    bad = subprocess.run([*cli, "--at", "noon"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "ISO 8601" in bad.stderr


def test_home_tab_is_published_once_even_when_slack_retries_the_event(server_factory, slack):
    srv = server_factory(clock=FakeClock(IN_SCHOOL))
    event = {"type": "app_home_opened", "user": ENGINEER, "channel": "D1", "tab": "home"}
    assert srv.sender.event(event, event_id="EvHome1").status_code == 200
    assert srv.sender.event(event, event_id="EvHome1", retry_num=1).status_code == 200
    slack.wait_for(lambda s: s.of("views.publish"))
    time.sleep(0.3)
    published = slack.of("views.publish")
    assert len(published) == 1
    view = published[0].params["view"]
    view = json.loads(view) if isinstance(view, str) else view
    assert view["type"] == "home"
    assert "Blocked now" in json.dumps(view)


def test_window_answers_without_waiting_out_slacks_rate_limit_on_the_timezone_lookup(server_factory, slack):
    srv = server_factory(clock=FakeClock(IN_SCHOOL))
    slack.fail_next("users.info", 429, count=5)
    resp = srv.command("/window", user="U0NEWCOMER")
    assert resp.status_code == 200 and "blocked" in reply_text(resp)
    # One try before the ack, never a retry after Retry-After (Slack gives up at 3 s).
    assert [c.method for c in slack.calls if c.method.startswith("users.info")] == ["users.info!429"]
    assert "UTC" in reply_text(resp)  # unknown timezone: times are shown in UTC


@pytest.mark.parametrize("far", ["9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z"])
def test_instants_recess_cannot_reason_about_get_400_exit_2_and_usage(server_factory, tmp_path, far):
    srv = server_factory(clock=FakeClock(IN_SCHOOL))
    resp = srv.http.get("/api/v1/window", params={"at": far})
    assert resp.status_code == 400 and "between 1970 and 2500" in resp.json()["error"]
    answer = reply_text(srv.command("/window", f"at {far}"))
    assert "between 1970 and 2500" in answer and "Usage" in answer
    env = {**os.environ, "RECESS_CONFIG": str(srv.cfg.source)}
    cli = subprocess.run([sys.executable, "-m", "bot.cli", "window", "check", "--at", far], env=env, capture_output=True, text=True)
    assert cli.returncode == 2 and "Traceback" not in cli.stderr


def test_freeze_in_the_callers_local_time_is_saved_once_and_answered(server_factory, slack):
    srv = server_factory(clock=FakeClock(AFTER_SCHOOL))
    slack.user_tz[APPROVER_1] = "America/Chicago"
    answer = reply_text(srv.command("/window", "freeze 2027-04-01T00:00 2027-04-03T00:00 Exam week", user=APPROVER_1))
    assert "Freeze #1 added" in answer and "CDT" in answer
    row = srv.rt.store.row("SELECT start FROM freezes WHERE id = 1")
    assert row["start"].startswith("2027-04-01T05:00:00")  # midnight in Chicago, stored in UTC
    assert freeze_count(srv) == 1
