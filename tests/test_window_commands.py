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
        (APPROVER_1, "freeze tomorrow 2027-04-03T00:00-04:00 Bad start", "could not read START"),
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
    assert set(body) == {"at", "safe", "reason", "next_safe_at", "safe_until", "until_reason", "blocked_by"}
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


# -- bounded input (issue 10, finding 7) -----------------------------------------------------------


@pytest.mark.parametrize("text", ["at 9999-12-31T23:59:59", "at 0001-01-01T00:00:00+05:00"])
def test_an_instant_out_of_range_without_an_offset_is_answered_with_usage_not_an_internal_error(server_factory, text):
    srv = server_factory(clock=FakeClock(IN_SCHOOL))
    answer = reply_text(srv.command("/window", text))
    assert "between 1970 and 2500" in answer and "Usage" in answer
    assert "internal error" not in answer and "could not finish" not in answer


def add_freezes(srv, n: int) -> None:  # noqa: ANN001
    for i in range(n):
        text = f"freeze 2027-04-0{i + 1}T00:00-04:00 2027-04-0{i + 2}T00:00-04:00 Freeze {i + 1}"
        assert "added" in reply_text(srv.command("/window", text, user=APPROVER_1))


@pytest.mark.parametrize("given", ["1180591620717411303424", "9223372036854775808", "\u0663", "\uff13", "0", "-3"])
def test_unfreeze_takes_only_an_id_of_ascii_digits_in_range(server_factory, given):
    srv = server_factory(clock=FakeClock(AFTER_SCHOOL))
    add_freezes(srv, 3)
    before = audit_count(srv)
    resp = srv.command("/window", f"unfreeze {given}", user=APPROVER_1)
    answer = reply_text(resp)
    assert "needs one freeze ID" in answer and "Usage" in answer  # "٣" is not freeze #3
    assert freeze_count(srv) == 3 and audit_count(srv) == before


# -- freezes in the forms /window at reads (build item 15) ---------------------------------------

# AFTER_SCHOOL is Tuesday 2027-03-16 22:00 in New York.
TOMORROW_18 = dt.datetime(2027, 3, 17, 22, 0, tzinfo=dt.UTC)  # Wednesday 18:00 EDT
FRIDAY_07 = dt.datetime(2027, 3, 19, 11, 0, tzinfo=dt.UTC)  # Friday 07:00 EDT


@pytest.mark.parametrize("text", [
    "freeze tomorrow 18:00 to friday 07:00 Report cards",
    "freeze tomorrow 18:00 -> friday 07:00 Report cards",
    "freeze tomorrow 18:00 friday 07:00 Report cards",
    'freeze "tomorrow 18:00" "friday 07:00" Report cards',
    "freeze tomorrow 6pm to 07:00 Report cards",
    "freeze 2027-03-17T18:00 2027-03-19T11:00Z Report cards",
])
def test_freeze_accepts_the_time_forms_of_window_at(server_factory, slack, text):
    srv = server_factory(clock=FakeClock(AFTER_SCHOOL))
    slack.user_tz[APPROVER_1] = "America/New_York"
    answer = reply_text(srv.command("/window", text, user=APPROVER_1))
    assert "Freeze #1 added" in answer, answer
    row = srv.rt.store.row("SELECT start, end, reason FROM freezes WHERE id = 1")
    start, end = dt.datetime.fromisoformat(row["start"]), dt.datetime.fromisoformat(row["end"])
    assert start == TOMORROW_18 and row["reason"] == "Report cards"
    # END's bare "07:00" is the next 07:00 after START (Thursday); "friday 07:00" is Friday.
    assert end == (FRIDAY_07 - dt.timedelta(days=1) if "6pm to 07:00" in text else FRIDAY_07)


def test_the_freeze_reply_names_the_id_once_and_shows_slack_dates_for_each_reader(server_factory, slack):
    srv = server_factory(clock=FakeClock(AFTER_SCHOOL))
    slack.user_tz[APPROVER_1] = "America/Chicago"
    resp = srv.command("/window", "freeze tomorrow 18:00 to friday 07:00 Report cards", user=APPROVER_1)
    answer = resp.json()["text"]
    assert answer.count("#1") == 1, answer  # "Freeze #1 added: #1 ..." no more
    start = int(dt.datetime(2027, 3, 17, 23, 0, tzinfo=dt.UTC).timestamp())  # 18:00 in Chicago
    assert f"<!date^{start}^{{date_short_pretty}} {{time}}|Wed 2027-03-17 18:00 CDT>" in answer
    post = slack.wait_for(lambda s: [t for t in s.texts() if "froze deploys" in t])[0]
    assert f"<!date^{start}^{{date_short_pretty}} {{time}}|Wed 2027-03-17 23:00 UTC>" in post  # fallback: UTC
    assert "/window unfreeze 1" in answer


def test_lifting_one_freeze_says_what_still_blocks(server_factory, slack):
    srv = server_factory(clock=FakeClock(AFTER_SCHOOL))
    for text in ("freeze now to friday 07:00 Report cards", "freeze now to thursday 07:00 Database upgrade"):
        assert "added" in reply_text(srv.command("/window", text, user=APPROVER_1))
    answer = reply_text(srv.command("/window", "unfreeze 2", user=APPROVER_1))
    assert "freeze #1 (Report cards)" in answer and "still blocks" in answer
    post = slack.wait_for(lambda s: [t for t in s.texts() if "lifted freeze #2" in t])[0]
    assert "freeze #1 (Report cards)" in post and "still blocks deploys" in post
    assert "follow school hours again" not in post
    srv.command("/window", "unfreeze 1", user=APPROVER_1)
    last = slack.wait_for(lambda s: [t for t in s.texts() if "lifted freeze #1" in t])[0]
    assert "No freeze is in effect now: deploys follow school hours again." in last


def test_the_freeze_list_counts_in_words(server_factory):
    srv = server_factory(clock=FakeClock(AFTER_SCHOOL))
    add_freezes(srv, 1)
    assert "1 freeze," in reply_text(srv.command("/window", "freezes", user=ENGINEER))
    srv.command("/window", "freeze 2027-05-01T00:00-04:00 2027-05-02T00:00-04:00 Another", user=APPROVER_1)
    assert "2 freezes," in reply_text(srv.command("/window", "freezes", user=APPROVER_1))


# -- escaping (finding 6) ---------------------------------------------------------------------------


def test_a_freeze_reason_cannot_ping_the_channel_or_disguise_a_link(server_factory, slack):
    srv = server_factory(clock=FakeClock(AFTER_SCHOOL))
    reason = "<!channel> see <https://evil.example|the recess console> & more"
    srv.command("/window", f"freeze now to friday 07:00 {reason}", user=APPROVER_1)
    post = slack.wait_for(lambda s: [t for t in s.texts() if "froze deploys" in t])[0]
    listed = reply_text(srv.command("/window", "freezes"))
    verdict = reply_text(srv.command("/window"))
    for shown in (post, listed, verdict):
        assert "<!channel>" not in shown and "<https://evil.example" not in shown
        assert "&lt;!channel&gt; see &lt;https://evil.example|the recess console&gt; &amp; more" in shown


# -- ack first (build item 1) -----------------------------------------------------------------------


def test_window_freeze_is_acked_at_once_while_the_store_is_locked_and_answered_after(server_factory, slack):
    from tests.test_store_heals import LockHolder

    srv = server_factory(clock=FakeClock(AFTER_SCHOOL))
    holder = LockHolder(srv.rt.store.path)  # another process holds the write lock
    try:
        resp = srv.command("/window", "freeze now to friday 07:00 Report cards", user=APPROVER_1, late=False)
        assert resp.status_code == 200 and "Working on it" in reply_text(resp)
        assert freeze_count(srv) == 0
        holder.release()
        answered = slack.wait_for(lambda s: [r for r in s.responses if "Freeze #1 added" in r.params.get("text", "")])
        assert answered[0].params["response_type"] == "ephemeral"
        assert freeze_count(srv) == 1
    finally:
        holder.close()
