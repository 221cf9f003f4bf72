"""The request card as people expect it (issue 10): buttons that belong to their card, the queue
on the card, Stop, rollback that cannot surprise, migrations stated plainly, typed text inert.
Over signed HTTP to the real /slack/events, with the fake Slack Web API."""

from __future__ import annotations

import json
import threading

from storage import deploys as rows
from tests.harness import APPROVER_1, APPROVER_2, ENGINEER, FAKE_SERVICE, FakeClock, card_value
from tests.test_deploy_commands import card_post, deploy_server, responses  # noqa: F401 (fixture)
from tests.test_migration_card import write_migrations
from tests.test_window_commands import AFTER_SCHOOL, reply_text


def card_updates(slack, deploy_id: int, store) -> list[str]:  # noqa: ANN001
    ts = rows.get(store, deploy_id)["card_ts"]
    return [json.dumps(c.params.get("blocks")) for c in slack.of("chat.update") if c.params.get("ts") == ts]


def test_a_click_carrying_another_deploys_token_is_refused_whatever_message_it_comes_from(deploy_server, slack):
    srv = deploy_server()
    srv.command("/deploy", "web v2")
    srv.command("/deploy", "web v3", user=APPROVER_2)
    card_post(slack, 3, srv.rt.store)
    token_of_2 = card_value(srv.rt.store, 2).split(":")[1]
    # From an ephemeral message (no message_ts to compare), with deploy #3's ID and #2's token:
    srv.sender.action("deploy_approve", f"3:{token_of_2}", user=APPROVER_1, ephemeral=True)
    srv.sender.action("deploy_approve", "3", user=APPROVER_1, ephemeral=True)  # no token at all
    slack.wait_for(lambda s: responses(s).count("does not belong to deploy #3") == 2)
    assert rows.get(srv.rt.store, 3)["status"] == "pending" and rows.approvers(srv.rt.store, 3) == []


def test_a_click_whose_value_is_out_of_range_or_not_ascii_gets_an_answer(deploy_server, slack):
    srv = deploy_server()
    srv.command("/deploy", "web v2")
    for value in ("9223372036854775808", "٣", "-1"):
        srv.sender.action("deploy_approve", value, user=APPROVER_1, ephemeral=True)
    slack.wait_for(lambda s: responses(s).count("carries no deploy") == 3)
    assert rows.get(srv.rt.store, 2)["status"] == "pending"


def test_a_deploy_approved_while_another_runs_waits_on_its_card_and_starts_after_a_stop(deploy_server, slack):
    srv = deploy_server()
    release = threading.Event()
    original_start = srv.fake.start

    def start(slot, version):  # noqa: ANN001 (v2 takes its time to boot)
        if version == "v2":
            release.wait(30)
        original_start(slot, version)

    srv.fake.start = start
    srv.command("/deploy", "web v2")
    card_post(slack, 2, srv.rt.store)
    srv.click("deploy_approve", 2, user=APPROVER_1, message_ts=rows.get(srv.rt.store, 2)["card_ts"])
    slack.wait_for(lambda s: rows.get(srv.rt.store, 2)["status"] == "running")
    reply = reply_text(srv.command("/deploy", "web v3"))
    assert "Deploy #3" in reply
    card_post(slack, 3, srv.rt.store)
    srv.click("deploy_approve", 3, user=APPROVER_1, message_ts=rows.get(srv.rt.store, 3)["card_ts"])
    slack.wait_for(lambda s: any("Waits for <https://slack.com/archives/C0DEPLOYS/p" in b and "deploy #2>" in b
                                 for b in card_updates(s, 3, srv.rt.store)))
    assert rows.get(srv.rt.store, 3)["status"] == "approved"
    # The running deploy's card has Stop; only approvers may press it.
    slack.wait_for(lambda s: any("deploy_stop" in b for b in card_updates(s, 2, srv.rt.store)))
    srv.click("deploy_stop", 2, user=ENGINEER, message_ts=rows.get(srv.rt.store, 2)["card_ts"])
    slack.wait_for(lambda s: "only approvers" in responses(s))
    srv.click("deploy_stop", 2, user=APPROVER_2, message_ts=rows.get(srv.rt.store, 2)["card_ts"])
    slack.wait_for(lambda s: any("pressed Stop" in t for t in s.texts()))
    release.set()
    slack.wait_for(lambda s: rows.get(srv.rt.store, 3)["status"] == "succeeded", timeout=30)
    stopped = rows.get(srv.rt.store, 2)
    assert stopped["status"] == "failed" and "stopped by <@U0APPROVER2>" in stopped["outcome"]
    assert srv.fake.versions[srv.fake.serving] == "v3"


def test_rollback_typed_twice_says_in_words_that_it_undoes_the_rollback(deploy_server, slack):
    srv = deploy_server()
    srv.command("/deploy", "web v2")
    card_post(slack, 2, srv.rt.store)
    srv.click("deploy_approve", 2, user=APPROVER_1, message_ts=rows.get(srv.rt.store, 2)["card_ts"])
    slack.wait_for(lambda s: any("is live in production" in t for t in s.texts()))
    srv.click("rollback_start", 2, user=ENGINEER, ephemeral=True)
    slack.wait_for(lambda s: (rows.get(srv.rt.store, 3) or {}).get("status") == "succeeded")
    again = srv.command("/rollback", "web").json()
    text = json.dumps(again["blocks"])
    assert "Undo rollback #3" in text and "puts *v2* back" in text and "the version rolled back at" in text
    assert '"style": "danger"' in text and "Undo rollback" in again["text"]


def test_an_older_card_loses_its_roll_back_button_once_a_newer_deploy_replaces_its_kept_version(deploy_server, slack):
    srv = deploy_server()
    for n, version in ((2, "v2"), (3, "v3")):
        srv.command("/deploy", f"web {version}")
        card_post(slack, n, srv.rt.store)
        srv.click("deploy_approve", n, user=APPROVER_1, message_ts=rows.get(srv.rt.store, n)["card_ts"])
        slack.wait_for(lambda s, n=n: rows.get(srv.rt.store, n)["status"] == "succeeded")
    slack.wait_for(lambda s: any("no longer kept (replaced by #3)" in b for b in card_updates(s, 2, srv.rt.store)))
    last = card_updates(slack, 2, srv.rt.store)[-1]
    assert "rollback_card" not in last and "is kept for rollback" not in last


def test_pending_migrations_are_named_and_a_service_without_migrate_warns_they_will_not_be_applied(server_factory, slack, tmp_path):
    write_migrations(tmp_path, {"0007_attendance_notes.sql": "ALTER TABLE attendance ADD COLUMN note text;\n"})
    service = FAKE_SERVICE.replace('migrate = "true"\n', "").replace(
        'health_timeout = "1s"', 'health_timeout = "1s"\nmigrations = "migrations"')
    srv = server_factory(service, clock=FakeClock(AFTER_SCHOOL))
    srv.command("/deploy", "web v2")
    blocks = json.dumps(card_post(slack, 1, srv.rt.store).params["blocks"])
    assert "0007_attendance_notes.sql" in blocks
    assert "recess will not apply these migrations" in blocks


def test_a_now_reason_is_shown_as_typed_never_as_a_mention_or_a_link(deploy_server, slack):
    srv = deploy_server()
    srv.command("/deploy", "web v2 --now <!channel> see <https://evil.example|the recess console>")
    blocks = json.dumps(card_post(slack, 2, srv.rt.store).params["blocks"])
    assert "&lt;!channel&gt;" in blocks and "&lt;https://evil.example|the recess console&gt;" in blocks
    assert "<!channel>" not in blocks and "<https://evil.example" not in blocks


def test_a_requester_who_is_not_an_approver_is_told_that_approvers_approve(deploy_server, slack):
    srv = deploy_server()
    srv.command("/deploy", "web v2", user=ENGINEER)
    card_post(slack, 2, srv.rt.store)
    srv.click("deploy_approve", 2, user=ENGINEER, message_ts=rows.get(srv.rt.store, 2)["card_ts"])
    slack.wait_for(lambda s: "approvers ([access] approvers) approve deploys, and you are not one" in responses(s))
    assert "another approver must approve" not in responses(slack)
