"""/flag over signed HTTP, as Slack sends it: every subcommand's ephemeral answer, the channel
announcement in the fake Slack, the audit rows, and refusals that leave the store untouched."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from commands.flags import FlagBook
from storage import audit
from tests.harness import APPROVER_1, ENGINEER, FakeClock, start_server
from tests.kit.slack import FakeSlack

# Tuesday 2027-03-16 10:00 in New York: school is in session (EDT, UTC-4; Los Angeles UTC-7).
IN_SCHOOL = dt.datetime(2027, 3, 16, 14, 0, tzinfo=dt.UTC)
# 15:00 in Los Angeles, the last school to end its day: the next safe window.
LAST_BELL = dt.datetime(2027, 3, 16, 22, 0, tzinfo=dt.UTC)


def reply_text(resp) -> str:  # noqa: ANN001
    assert resp.status_code == 200
    body = resp.json()
    parts = [body.get("text", "")]
    for block in body.get("blocks", []):
        if isinstance(block.get("text"), dict):
            parts.append(block["text"]["text"])
        for el in block.get("elements", []):
            if isinstance(el, dict) and isinstance(el.get("text"), str):
                parts.append(el["text"])
    return "\n".join(parts)


def is_usage(resp) -> bool:  # noqa: ANN001
    return resp.json().get("response_type") == "ephemeral" and "Usage:" in reply_text(resp)


def posts(slack: FakeSlack, needle: str = "") -> list[str]:
    return [t for t in slack.texts() if needle in t]


def wait_post(slack: FakeSlack, needle: str) -> str:
    return slack.wait_for(lambda s: posts(s, needle))[-1]


def dump(srv) -> dict[str, list[dict]]:  # noqa: ANN001
    """Every table a flag command may write, the Slack outbox included (announcements queue there:
    which messages, not how far their delivery got, which the sender changes meanwhile)."""
    tables = ("flags", "flag_overrides", "flag_changes", "audit")
    out = {t: srv.rt.store.rows(f"SELECT * FROM {t} ORDER BY rowid") for t in tables}
    out["outbox"] = srv.rt.store.rows("SELECT id, deploy_id, method, payload FROM outbox ORDER BY id")
    return out


def last_audit(srv, key: str) -> dict:  # noqa: ANN001
    return audit.entries(srv.rt.store, target=f"flag:{key}", limit=1)[0]


def evaluate(srv, key: str, **ctx):  # noqa: ANN001, ANN003, ANN201
    return FlagBook.for_store(srv.rt.store).evaluate(key, ctx.get("user"), ctx.get("tenant"), ctx.get("role"))


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One server for the tests that must not change anything."""
    slack = FakeSlack()
    srv = start_server(tmp_path_factory.mktemp("flags"), slack)
    yield srv
    srv.stop()
    slack.close()


# -- reading ------------------------------------------------------------------------------------


def test_list_shows_the_seeded_config_flags(shared):
    text = reply_text(shared.command("/flag", "list"))
    assert "`portfolio_enabled` *on*" in text and "`ai_safety_v2` *off*" in text
    assert "0 overrides" in text and "last change" in text


def test_help_shows_usage_and_unknown_subcommands_answer_with_it(shared):
    assert "/flag rollout KEY PCT [SCOPE]" in reply_text(shared.command("/flag", "help"))
    resp = shared.command("/flag", "toggle portfolio_enabled")
    assert is_usage(resp) and "unknown subcommand `toggle`" in reply_text(resp)


def test_show_and_history_of_an_unknown_flag_answer_with_usage(shared):
    for text in ("show nope", "history nope", "show Not-A-Key"):
        assert is_usage(shared.command("/flag", text))


# -- changes ------------------------------------------------------------------------------------


def test_create_announces_audits_and_show_displays_the_new_flag(server_factory, slack):
    srv = server_factory()
    resp = srv.command("/flag", 'create report_card_v2 "New report card layout" --note "Q3 project"', user=APPROVER_1)
    assert "`report_card_v2` created (off): New report card layout" in reply_text(resp)
    assert "<@U0APPROVER1>" in wait_post(slack, "report_card_v2")
    entry = last_audit(srv, "report_card_v2")
    assert (entry["actor"], entry["action"], entry["note"], entry["before"]) == (APPROVER_1, "flag.create", "Q3 project", None)
    assert entry["command"] == '/flag create report_card_v2 "New report card layout" --note "Q3 project"'

    shown = reply_text(srv.command("/flag", "show report_card_v2"))
    assert "New report card layout" in shown and "State: *off*" in shown and "<@U0APPROVER1>" in shown
    assert "Overrides*: none" in shown
    assert "report_card_v2" in reply_text(srv.command("/flag", "list"))


def test_on_and_off_for_a_school_and_for_everyone_say_before_and_after(server_factory, slack):
    srv = server_factory()
    text = reply_text(srv.command("/flag", 'on ai_safety_v2 tenant=lincoln-high --note "pilot school"', user=APPROVER_1))
    assert "`ai_safety_v2` for tenant=lincoln-high: not set → on" in text
    announcement = wait_post(slack, "tenant=lincoln-high: not set → on")
    assert "<@U0APPROVER1>" in announcement
    assert any("pilot school" in str(c.params.get("blocks")) for c in slack.calls if c.method == "chat.postMessage")
    entry = last_audit(srv, "ai_safety_v2")
    assert entry["action"] == "flag.on" and entry["note"] == "pilot school"
    assert evaluate(srv, "ai_safety_v2", tenant="lincoln-high").value is True
    assert evaluate(srv, "ai_safety_v2", tenant="la-elementary").value is False

    reply_text(srv.command("/flag", "off portfolio_enabled", user=APPROVER_1))
    wait_post(slack, "`portfolio_enabled` for everyone: on → off")
    assert last_audit(srv, "portfolio_enabled")["before"] == {"default": True, "rollout": None}
    assert evaluate(srv, "portfolio_enabled").value is False

    text = reply_text(srv.command("/flag", "off ai_safety_v2 tenant=lincoln-high role=teacher", user=APPROVER_1))
    assert "tenant=lincoln-high role=teacher: not set → off" in text
    assert evaluate(srv, "ai_safety_v2", user="t", tenant="lincoln-high", role="teacher").value is False
    assert evaluate(srv, "ai_safety_v2", user="s", tenant="lincoln-high", role="student").value is True


def test_rollout_by_percentage_for_a_role_and_by_school(server_factory, slack):
    srv = server_factory()
    text = reply_text(srv.command("/flag", "rollout ai_safety_v2 25% role=student", user=APPROVER_1))
    assert "`ai_safety_v2` for role=student: not set → 25% of users" in text
    wait_post(slack, "25% of users")
    students = [evaluate(srv, "ai_safety_v2", user=f"s{i}", role="student") for i in range(1000)]
    assert {e.reason for e in students} == {"SPLIT"} and 150 < sum(e.value for e in students) < 350

    text = reply_text(srv.command("/flag", "rollout portfolio_enabled 50 by=tenant", user=APPROVER_1))
    assert "on → 50% of schools" in text
    assert last_audit(srv, "portfolio_enabled")["after"] == {"default": True, "rollout": 50, "by": "tenant"}
    shown = reply_text(srv.command("/flag", "show portfolio_enabled"))
    assert "50% by tenant" in shown


def test_kill_beats_overrides_and_unkill_restores_them(server_factory, slack):
    srv = server_factory()
    srv.command("/flag", "on ai_safety_v2 tenant=lincoln-high", user=APPROVER_1)
    text = reply_text(srv.command("/flag", 'kill ai_safety_v2 --note "bad answers in grade 3"', user=APPROVER_1))
    assert "live → killed" in text
    assert ":rotating_light:" in wait_post(slack, "live → killed")
    assert evaluate(srv, "ai_safety_v2", tenant="lincoln-high").reason == "DISABLED"
    assert last_audit(srv, "ai_safety_v2")["action"] == "flag.kill"
    assert "KILLED" in reply_text(srv.command("/flag", "show ai_safety_v2"))

    assert "killed → live" in reply_text(srv.command("/flag", "unkill ai_safety_v2", user=APPROVER_1))
    wait_post(slack, "killed → live")
    assert evaluate(srv, "ai_safety_v2", tenant="lincoln-high").value is True


def test_clear_removes_an_override(server_factory, slack):
    srv = server_factory()
    srv.command("/flag", "off portfolio_enabled role=parent", user=APPROVER_1)
    assert evaluate(srv, "portfolio_enabled", role="parent").value is False
    text = reply_text(srv.command("/flag", "clear portfolio_enabled role=parent", user=APPROVER_1))
    assert "role=parent: off → not set" in text
    wait_post(slack, "off → not set")
    assert last_audit(srv, "portfolio_enabled")["action"] == "flag.clear"
    assert evaluate(srv, "portfolio_enabled", role="parent").reason == "STATIC"


def test_history_lists_every_change_newest_first(server_factory):
    srv = server_factory()
    srv.command("/flag", "rollout ai_safety_v2 10", user=APPROVER_1)
    srv.command("/flag", 'rollout ai_safety_v2 30 --note "no complaints"', user=APPROVER_1)
    text = reply_text(srv.command("/flag", "history ai_safety_v2"))
    assert text.index("10% of users → 30% of users") < text.index("off → 10% of users")
    assert "no complaints" in text and "created from the config" in text


def test_asking_for_what_already_is_changes_nothing(shared):
    before = dump(shared)
    text = reply_text(shared.command("/flag", "on portfolio_enabled", user=APPROVER_1))
    assert "already on" in text and "nothing changed" in text
    assert dump(shared) == before


# -- refusals -----------------------------------------------------------------------------------

CHANGES = [
    "on ai_safety_v2",
    "off portfolio_enabled tenant=lincoln-high",
    "rollout ai_safety_v2 20 role=teacher",
    "kill portfolio_enabled",
    "unkill portfolio_enabled",
    "clear portfolio_enabled role=teacher",
    'create new_flag "something new"',
    "on ai_safety_v2 --at-window",
]


@pytest.mark.parametrize("text", CHANGES)
def test_non_admins_cannot_change_flags_and_nothing_changes(shared, text):
    before = dump(shared)
    resp = shared.command("/flag", text, user=ENGINEER)
    assert is_usage(resp) and "only flag admins" in reply_text(resp)
    assert dump(shared) == before


@pytest.mark.parametrize(
    "text, problem",
    [
        ("on no_such_flag", "there is no flag `no_such_flag`"),
        ("on Portfolio!", "not a valid flag key"),
        ("rollout ai_safety_v2 101", "0 to 100"),
        ("rollout ai_safety_v2 lots", "not a percentage"),
        ("rollout ai_safety_v2 -5", "not a percentage"),
        ("rollout ai_safety_v2 12.5", "not a percentage"),
        ("rollout ai_safety_v2", "needs a KEY and a percentage"),
        ("on ai_safety_v2 tenant=hogwarts", "unknown tenant `hogwarts`"),
        ("on ai_safety_v2 role=janitor", "unknown role `janitor`"),
        ("on ai_safety_v2 school=lincoln-high", "unexpected `school=lincoln-high`"),
        ("on ai_safety_v2 tenant=lincoln-high tenant=la-elementary", "given twice"),
        ("kill ai_safety_v2 tenant=lincoln-high", "takes only the flag KEY"),
        ("clear ai_safety_v2", "give its tenant"),
        ("clear ai_safety_v2 role=teacher", "no override"),
        ("rollout ai_safety_v2 5 by=district", "`user` or `tenant`"),
        ('create portfolio_enabled "again"', "already exists"),
        ("create brand_new", 'needs a KEY and a "DESCRIPTION"'),
        ('create brand_new "x" --at-window', "takes effect at once"),
        ("on ai_safety_v2 --note", "needs a text"),
        ("on ai_safety_v2 --force", "unknown option `--force`"),
        ('on ai_safety_v2 --note "unclosed', "check your quotes"),
        ("cancel 99", "no scheduled flag change #99"),
        ("cancel soon", "needs one scheduled change ID"),
        ("cancel 9223372036854775808", "needs one scheduled change ID"),
        ("cancel \u0663", "needs one scheduled change ID"),
        ("rollout ai_safety_v2 \u0662\u0665", "not a percentage"),
        ("rollout ai_safety_v2 1000", "not a percentage"),
    ],
)
def test_bad_input_gets_usage_and_changes_nothing(shared, text, problem):
    before = dump(shared)
    resp = shared.command("/flag", text, user=APPROVER_1)
    assert is_usage(resp), reply_text(resp)
    assert problem in reply_text(resp)
    assert dump(shared) == before


# -- --at-window --------------------------------------------------------------------------------


def fire_now(srv, change_id: int) -> None:  # noqa: ANN001
    """Runs the armed job now instead of waiting for the (real-time) scheduler."""
    srv.rt.scheduler.modify_job(f"flag-change-{change_id}", next_run_time=dt.datetime.now(dt.UTC))


def test_at_window_waits_for_the_last_bell_rechecks_and_then_applies(server_factory, slack):
    clock = FakeClock(IN_SCHOOL)
    srv = server_factory(clock=clock)
    text = reply_text(srv.command("/flag", 'on ai_safety_v2 role=teacher --at-window --note "after school"', user=APPROVER_1))
    assert "Scheduled change #1" in text and "2027-03-16 22:00 UTC" in text and "/flag cancel 1" in text
    wait_post(slack, "scheduled flag change #1")
    row = srv.rt.store.row("SELECT * FROM flag_changes WHERE id = 1")
    assert row["status"] == "scheduled" and row["run_at"].startswith("2027-03-16T22:00:00")
    assert srv.rt.scheduler.get_job("flag-change-1") is not None
    assert evaluate(srv, "ai_safety_v2", role="teacher").value is False
    assert "Scheduled for the next safe window" in reply_text(srv.command("/flag", "show ai_safety_v2"))
    assert last_audit(srv, "ai_safety_v2")["action"] == "flag.schedule"

    # The job fires while Los Angeles is still in class: it waits again instead of applying.
    clock.set(LAST_BELL - dt.timedelta(hours=1))
    fire_now(srv, 1)
    assert "2027-03-16 22:00 UTC" in wait_post(slack, "blocked again")
    assert evaluate(srv, "ai_safety_v2", role="teacher").value is False

    clock.set(LAST_BELL + dt.timedelta(minutes=1))
    fire_now(srv, 1)
    announcement = wait_post(slack, "scheduled change #1")
    assert "`ai_safety_v2` for role=teacher: not set → on" in announcement
    assert evaluate(srv, "ai_safety_v2", role="teacher").value is True
    entry = last_audit(srv, "ai_safety_v2")
    assert (entry["actor"], entry["action"], entry["note"]) == (APPROVER_1, "flag.on", "after school")
    assert srv.rt.store.row("SELECT status FROM flag_changes WHERE id = 1")["status"] == "applied"


def test_at_window_when_the_window_is_open_applies_right_away(server_factory, slack):
    srv = server_factory(clock=FakeClock(LAST_BELL + dt.timedelta(hours=2)))
    text = reply_text(srv.command("/flag", "kill portfolio_enabled --at-window", user=APPROVER_1))
    assert "applies right away" in text and "cancel" not in text  # nothing to cancel: it runs now
    wait_post(slack, "scheduled change #1")
    assert evaluate(srv, "portfolio_enabled").reason == "DISABLED"


def test_scheduled_changes_are_armed_again_after_a_restart(server_factory, slack):
    first = server_factory(clock=FakeClock(IN_SCHOOL))
    reply_text(first.command("/flag", "rollout ai_safety_v2 40 --at-window", user=APPROVER_1))
    first.stop()
    clock = FakeClock(IN_SCHOOL)
    second = server_factory(clock=clock)
    assert second.rt.scheduler.get_job("flag-change-1") is not None
    clock.set(LAST_BELL)
    fire_now(second, 1)
    wait_post(slack, "off → 40% of users")
    assert evaluate(second, "ai_safety_v2", user="u1").reason == "SPLIT"


def test_cancel_drops_a_scheduled_change(server_factory, slack):
    srv = server_factory(clock=FakeClock(IN_SCHOOL))
    srv.command("/flag", "off portfolio_enabled --at-window", user=APPROVER_1)
    assert is_usage(srv.command("/flag", "cancel 1", user=ENGINEER))
    assert "Cancelled scheduled change #1" in reply_text(srv.command("/flag", "cancel 1", user=APPROVER_1))
    wait_post(slack, "cancelled scheduled flag change #1")
    assert srv.rt.scheduler.get_job("flag-change-1") is None
    assert srv.rt.store.row("SELECT status FROM flag_changes WHERE id = 1")["status"] == "cancelled"
    assert last_audit(srv, "portfolio_enabled")["action"] == "flag.cancel"
    assert evaluate(srv, "portfolio_enabled").value is True


def test_a_long_flag_list_fits_slacks_block_limits():
    from bot.views.flags import list_reply
    from commands.flags import Flag

    flags = [Flag(f"flag-{i:03d}-{'x' * 80}", "d", "U0X", i % 2 == 0, None, "user", "g", False, "", "", ()) for i in range(300)]
    reply = list_reply(flags, {})
    assert len(reply["blocks"]) <= 50
    assert all(len(b["text"]["text"]) <= 3000 for b in reply["blocks"] if b["type"] == "section")
    assert "flag-000" in reply["blocks"][1]["text"]["text"]


# -- words (issue 10, build item 15) -------------------------------------------------------------


def test_kill_takes_an_unquoted_note_as_the_rest_of_the_line(server_factory, slack):
    srv = server_factory()
    text = reply_text(srv.command("/flag", "kill portfolio_enabled --note grades page 500s", user=APPROVER_1))
    assert "live → killed" in text, text
    assert last_audit(srv, "portfolio_enabled")["note"] == "grades page 500s"
    slack.wait_for(lambda s: [c for c in s.of("chat.postMessage") if "Note: grades page 500s" in str(c.params.get("blocks"))])
    assert evaluate(srv, "portfolio_enabled").reason == "DISABLED"


def test_a_note_ends_at_the_next_option(server_factory):
    srv = server_factory(clock=FakeClock(IN_SCHOOL))
    text = reply_text(srv.command("/flag", "off portfolio_enabled --note after the last bell --at-window", user=APPROVER_1))
    assert "Scheduled change #1" in text
    assert srv.rt.store.row("SELECT note FROM flag_changes WHERE id = 1")["note"] == "after the last bell"


def test_unkill_of_a_flag_that_is_not_killed_says_so_plainly(server_factory):
    srv = server_factory()
    srv.command("/flag", "rollout ai_safety_v2 10", user=APPROVER_1)
    before = dump(srv)
    text = reply_text(srv.command("/flag", "unkill ai_safety_v2", user=APPROVER_1))
    assert "`ai_safety_v2` is not killed, so there is nothing to unkill (it stays 10% of users)" in text
    assert "already live" not in text and "nothing changed" in text
    assert dump(srv) == before


def test_the_flag_list_counts_in_words(shared):
    text = reply_text(shared.command("/flag", "list"))
    assert "*Flags* (2 flags)" in text and "0 overrides" in text


# -- escaping (finding 6) ---------------------------------------------------------------------------


def test_a_flag_description_or_note_cannot_ping_the_channel_or_disguise_a_link(server_factory, slack):
    srv = server_factory()
    typed = "<!channel> see <https://evil.example|the recess console> & more"
    srv.command("/flag", f'create grades_v2 "{typed}"', user=APPROVER_1)
    srv.command("/flag", f"on grades_v2 --note {typed}", user=APPROVER_1)
    inert = "&lt;!channel&gt; see &lt;https://evil.example|the recess console&gt; &amp; more"
    created = wait_post(slack, "created (off)")
    noted = slack.wait_for(lambda s: [json.dumps(c.params.get("blocks")) for c in s.of("chat.postMessage")
                                      if "Note:" in str(c.params.get("blocks"))])[-1]
    shown = reply_text(srv.command("/flag", "show grades_v2"))
    history = reply_text(srv.command("/flag", "history grades_v2"))
    for text in (created, noted, shown, history):
        assert "<!channel>" not in text and "<https://evil.example" not in text
        assert inert in text


# -- ack first (build item 1) -----------------------------------------------------------------------


def test_flag_changes_are_acked_at_once_while_the_store_is_locked_and_answered_after(server_factory, slack):
    from tests.test_store_heals import LockHolder

    srv = server_factory()
    holder = LockHolder(srv.rt.store.path)  # another process holds the write lock
    try:
        resp = srv.command("/flag", "on ai_safety_v2", user=APPROVER_1, late=False)
        assert resp.status_code == 200 and "Working on it" in reply_text(resp)
        assert evaluate(srv, "ai_safety_v2").value is False
        holder.release()
        answered = slack.wait_for(lambda s: [r for r in s.responses if "off → on" in r.params.get("text", "")])
        assert answered[0].params["response_type"] == "ephemeral"
        assert evaluate(srv, "ai_safety_v2").value is True
    finally:
        holder.close()
