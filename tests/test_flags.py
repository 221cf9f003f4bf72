"""Flag model and evaluation: the order of rules, Unleash-compatible bucketing, audited changes,
scheduled changes. In-process against a real SQLite store; no Slack, no HTTP."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from commands.config import parse_config
from commands.flags import (
    DISABLED,
    FLAG_NOT_FOUND,
    SPLIT,
    STATIC,
    TARGETING_KEY_MISSING,
    TARGETING_MATCH,
    Change,
    Flag,
    FlagBook,
    FlagError,
    Override,
    Scope,
    Unchanged,
    bucket,
    build_snapshot,
    in_rollout,
)
from commands.policy import Policy
from storage import audit
from storage.db import Store

ADMIN = "U0FLAGADMIN"
TEACHER = "U0TEACHER"
NOW = dt.datetime(2027, 3, 16, 14, 0, tzinfo=dt.UTC)


@pytest.fixture
def cfg():
    return parse_config(
        {
            "access": {"flag_admins": [ADMIN]},
            "tenants": [
                {"id": "lincoln-high", "timezone": "America/New_York"},
                {"id": "la-elementary", "timezone": "America/Los_Angeles"},
            ],
            "flags": {"defaults": {"portfolio_enabled": True, "ai_safety_v2": False}},
        }
    )


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "recess.db")
    yield s
    s.close()


@pytest.fixture
def book(store, cfg):
    b = FlagBook(store)
    b.seed(cfg.flags.defaults, now=NOW)
    return b


@pytest.fixture
def change(book, cfg):
    """Applies a change as the flag admin: change("on", "ai_safety_v2", tenant="lincoln-high")."""

    def apply(action: str, key: str, *, tenant: str = "", role: str = "", pct: int | None = None, by: str | None = None, note: str | None = None):  # noqa: ANN202
        wanted = Change(action, key, Scope(tenant, role), pct=pct, by=by, description="a flag" if action == "create" else "")
        return book.apply(wanted, actor=ADMIN, policy=Policy(cfg), cfg=cfg, command=f"/flag {action} {key}", now=NOW, note=note)

    return apply


def dump(store: Store) -> dict[str, list[dict]]:
    return {t: store.rows(f"SELECT * FROM {t} ORDER BY rowid") for t in ("flags", "flag_overrides", "flag_changes", "audit")}


def a_flag(key: str = "f", *, default: bool = False, rollout: int | None = None, by: str = "user", killed: bool = False, overrides: tuple[Override, ...] = ()) -> Flag:
    return Flag(key, "", "", default, rollout, by, key, killed, "", "", overrides)


# -- bucketing ----------------------------------------------------------------------------------


def test_buckets_match_unleash_reference_values():
    assert bucket("AB12A", "122") == 23
    assert bucket("AB12A", "155") == 100


def test_percentage_includes_a_bucket_only_when_positive_and_at_or_below():
    assert in_rollout(23, 23) and not in_rollout(22, 23)
    assert not in_rollout(0, 1)
    assert in_rollout(100, 100)


def test_rollout_evaluation_uses_the_flag_key_as_bucketing_group():
    snap = build_snapshot([a_flag("new_gradebook", rollout=40)])
    for i in range(500):
        user = f"student-{i}"
        ev = snap.evaluate("new_gradebook", user)
        assert ev.value is (bucket("new_gradebook", user) <= 40)
        assert ev.reason == SPLIT
        assert ev.variant == ("on" if ev.value else "off")


@settings(max_examples=200, deadline=None)
@given(
    key=st.from_regex(r"[a-z0-9._-]{1,20}", fullmatch=True),
    users=st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=40),
    low=st.integers(0, 100),
    high=st.integers(0, 100),
)
def test_raising_a_percentage_never_removes_anyone(key, users, low, high):
    low, high = min(low, high), max(low, high)
    before = build_snapshot([a_flag(key, rollout=low)])
    after = build_snapshot([a_flag(key, rollout=high)])
    for user in users:
        if before.evaluate(key, user).value:
            assert after.evaluate(key, user).value


@pytest.mark.parametrize("pct", [1, 5, 25, 50, 90])
def test_observed_share_is_within_one_point_of_the_target(pct):
    snap = build_snapshot([a_flag("ai_safety_v2", rollout=pct)])
    on = sum(snap.evaluate("ai_safety_v2", f"user-{i}").value for i in range(100_000))
    assert abs(on / 1000 - pct) <= 1.0


def test_rolling_out_by_school_gives_a_whole_school_the_same_answer():
    snap = build_snapshot([a_flag("i18n_locale_switcher", rollout=50, by="tenant")])
    for school in ("lincoln-high", "la-elementary", "mesa-middle"):
        answers = {snap.evaluate("i18n_locale_switcher", f"u{i}", tenant=school).value for i in range(50)}
        assert answers == {bucket("i18n_locale_switcher", school) <= 50}
    missing = snap.evaluate("i18n_locale_switcher", "u1")
    assert missing.error_code == TARGETING_KEY_MISSING and "'tenant'" in missing.error_details


# -- evaluation order ---------------------------------------------------------------------------


def test_unknown_flag_is_not_found():
    ev = build_snapshot([]).evaluate("nope", "u1")
    assert ev.error_code == FLAG_NOT_FOUND and ev.value is None


def test_default_answers_static_with_a_variant():
    snap = build_snapshot([a_flag("portfolio_enabled", default=True), a_flag("webhook_events")])
    on, off = snap.evaluate("portfolio_enabled"), snap.evaluate("webhook_events")
    assert (on.value, on.reason, on.variant) == (True, STATIC, "on")
    assert (off.value, off.reason, off.variant) == (False, STATIC, "off")


def test_most_specific_override_wins_then_rollout_then_default():
    flag = a_flag(
        "ai_safety_v2",
        rollout=0,
        overrides=(
            Override("lincoln-high", "teacher", False, None),
            Override("lincoln-high", "", True, None),
            Override("", "teacher", True, None),
        ),
    )
    snap = build_snapshot([flag])
    assert snap.evaluate("ai_safety_v2", "u", "lincoln-high", "teacher").value is False
    assert snap.evaluate("ai_safety_v2", "u", "lincoln-high", "teacher").metadata == {"scope": "tenant=lincoln-high role=teacher"}
    assert snap.evaluate("ai_safety_v2", "u", "lincoln-high", "student").metadata == {"scope": "tenant=lincoln-high"}
    assert snap.evaluate("ai_safety_v2", "u", "la-elementary", "teacher").metadata == {"scope": "role=teacher"}
    for ev in (snap.evaluate("ai_safety_v2", "u", "lincoln-high", "student"), snap.evaluate("ai_safety_v2", "u", None, "teacher")):
        assert (ev.value, ev.reason, ev.variant) == (True, TARGETING_MATCH, "on")
    rest = snap.evaluate("ai_safety_v2", "u", "la-elementary", "student")
    assert (rest.value, rest.reason) == (False, SPLIT)


def test_kill_switch_beats_every_override():
    flag = a_flag("advanced_analytics", default=True, killed=True, overrides=(Override("lincoln-high", "", True, None),))
    ev = build_snapshot([flag]).evaluate("advanced_analytics", "u", "lincoln-high", "admin")
    assert (ev.value, ev.reason, ev.variant) == (False, DISABLED, "off")


def test_override_with_its_own_percentage_splits_within_its_scope():
    flag = a_flag("ai_safety_v2", overrides=(Override("", "student", True, 30),))
    snap = build_snapshot([flag])
    students = [snap.evaluate("ai_safety_v2", f"s{i}", "lincoln-high", "student") for i in range(2000)]
    assert {e.reason for e in students} == {SPLIT}
    assert students[0].metadata == {"scope": "role=student", "rollout": 30, "rolloutBy": "user"}
    assert 0.25 < sum(e.value for e in students) / 2000 < 0.35
    teacher = snap.evaluate("ai_safety_v2", "t1", "lincoln-high", "teacher")
    assert (teacher.value, teacher.reason) == (False, STATIC)


def test_a_split_needs_a_targeting_key_but_all_or_nothing_does_not():
    snap = build_snapshot([a_flag("a", rollout=30), a_flag("b", rollout=0), a_flag("c", rollout=100)])
    assert snap.evaluate("a").error_code == TARGETING_KEY_MISSING
    assert snap.evaluate("b").value is False and snap.evaluate("c").value is True


# -- changes through the book -------------------------------------------------------------------


def test_config_defaults_are_seeded_once_and_never_overwritten(book, store, cfg, change):
    assert {f.key: f.default for f in book.flags()} == {"ai_safety_v2": False, "portfolio_enabled": True}
    assert book.get("portfolio_enabled").owner == "config"
    change("off", "portfolio_enabled")
    assert book.seed(cfg.flags.defaults, now=NOW) == []
    assert FlagBook(store).get("portfolio_enabled").default is False


def test_every_change_is_audited_with_before_after_and_note(book, store, change):
    change("on", "ai_safety_v2", tenant="lincoln-high", note="pilot school")
    entry = audit.entries(store, target="flag:ai_safety_v2", limit=1)[0]
    assert entry["actor"] == ADMIN and entry["action"] == "flag.on" and entry["note"] == "pilot school"
    assert entry["before"] is None
    assert entry["after"] == {"scope": "tenant=lincoln-high", "value": True, "rollout": None}
    assert book.evaluate("ai_safety_v2", "u", "lincoln-high").value is True

    change("rollout", "ai_safety_v2", pct=25)
    entry = audit.entries(store, target="flag:ai_safety_v2", limit=1)[0]
    assert entry["before"] == {"default": False, "rollout": None}
    assert entry["after"] == {"default": False, "rollout": 25, "by": "user"}


def test_snapshot_follows_every_change_and_its_digest_covers_the_configuration(book, change):
    first = book.snapshot
    change("kill", "portfolio_enabled")
    assert book.snapshot.version > first.version and book.snapshot.digest != first.digest
    assert book.evaluate("portfolio_enabled").reason == DISABLED
    change("unkill", "portfolio_enabled")
    assert book.snapshot.digest == first.digest  # same configuration, same digest
    assert book.evaluate("portfolio_enabled").value is True


def test_clearing_an_override_makes_the_scope_inherit_again(book, change):
    change("off", "portfolio_enabled", role="student")
    assert book.evaluate("portfolio_enabled", "u", role="student").value is False
    change("clear", "portfolio_enabled", role="student")
    assert book.evaluate("portfolio_enabled", "u", role="student").reason == STATIC
    with pytest.raises(FlagError, match="no override"):
        change("clear", "portfolio_enabled", role="student")


def test_a_change_to_what_already_is_writes_nothing(book, store, change):
    before = dump(store)
    with pytest.raises(Unchanged):
        change("on", "portfolio_enabled")
    assert dump(store) == before


def test_unkill_of_a_flag_that_is_not_killed_says_what_it_is_instead(book, store, change):
    change("rollout", "ai_safety_v2", pct=10)
    before = dump(store)
    with pytest.raises(Unchanged, match=r"`ai_safety_v2` is not killed, so there is nothing to unkill \(it stays 10% of users\)"):
        change("unkill", "ai_safety_v2")
    with pytest.raises(Unchanged, match=r"nothing to unkill \(it stays on for everyone\)"):
        change("unkill", "portfolio_enabled")
    assert dump(store) == before


@pytest.mark.parametrize(
    "action, key, kw, message",
    [
        ("on", "no_such_flag", {}, "there is no flag"),
        ("on", "Bad Key!", {}, "not a valid flag key"),
        ("rollout", "ai_safety_v2", {"pct": 101}, "0 to 100"),
        ("rollout", "ai_safety_v2", {"pct": -1}, "0 to 100"),
        ("on", "ai_safety_v2", {"tenant": "hogwarts"}, "unknown tenant"),
        ("on", "ai_safety_v2", {"role": "janitor"}, "unknown role"),
        ("kill", "ai_safety_v2", {"role": "teacher"}, "takes no tenant"),
        ("clear", "ai_safety_v2", {}, "give its tenant"),
        ("rollout", "ai_safety_v2", {"pct": 5, "by": "district"}, "`user` or `tenant`"),
        ("create", "portfolio_enabled", {}, "already exists"),
    ],
)
def test_bad_changes_are_refused_and_change_nothing(store, change, action, key, kw, message):
    before = dump(store)
    with pytest.raises(FlagError, match=message):
        change(action, key, **kw)
    assert dump(store) == before


def test_only_flag_admins_change_flags(book, store, cfg):
    before = dump(store)
    with pytest.raises(FlagError, match="only flag admins"):
        book.apply(Change("on", "ai_safety_v2"), actor=TEACHER, policy=Policy(cfg), cfg=cfg, command="/flag on ai_safety_v2", now=NOW)
    assert dump(store) == before


# -- scheduled changes --------------------------------------------------------------------------


def test_scheduled_change_waits_for_the_window_and_applies_once(book, store, cfg):
    evening = NOW + dt.timedelta(hours=9)
    s = book.schedule(
        Change("on", "ai_safety_v2", Scope(role="teacher")), actor=ADMIN, policy=Policy(cfg), cfg=cfg,
        command="/flag on ai_safety_v2 role=teacher --at-window", now=NOW, run_at=evening, note="after school",
    )
    assert book.evaluate("ai_safety_v2", "u", role="teacher").value is False
    assert [x.id for x in book.scheduled("ai_safety_v2")] == [s.id]

    # A freeze appeared: at the planned time the window is blocked again, so it waits longer.
    later = evening + dt.timedelta(days=1)
    outcome = book.run_scheduled(s.id, cfg=cfg, now=evening, next_safe_window=lambda at: later)
    assert outcome.kind == "rescheduled" and outcome.run_at == later
    assert book.scheduled()[0].run_at == later

    outcome = book.run_scheduled(s.id, cfg=cfg, now=later, next_safe_window=lambda at: at)
    assert outcome.kind == "applied" and outcome.applied.scheduled_id == s.id
    assert book.evaluate("ai_safety_v2", "u", role="teacher").value is True
    entry = audit.entries(store, target="flag:ai_safety_v2", limit=1)[0]
    assert (entry["actor"], entry["action"], entry["note"]) == (ADMIN, "flag.on", "after school")

    assert book.run_scheduled(s.id, cfg=cfg, now=later, next_safe_window=lambda at: at).kind == "gone"
    assert book.scheduled() == []


def test_cancelled_change_never_runs(book, cfg):
    s = book.schedule(Change("kill", "portfolio_enabled"), actor=ADMIN, policy=Policy(cfg), cfg=cfg, command="/flag kill", now=NOW, run_at=NOW + dt.timedelta(hours=5))
    book.cancel(s.id, actor=ADMIN, policy=Policy(cfg), command="/flag cancel 1", now=NOW)
    assert book.run_scheduled(s.id, cfg=cfg, now=NOW + dt.timedelta(hours=6), next_safe_window=lambda at: at).kind == "gone"
    assert book.evaluate("portfolio_enabled").value is True
    with pytest.raises(FlagError, match="cancelled"):
        book.cancel(s.id, actor=ADMIN, policy=Policy(cfg), command="/flag cancel 1", now=NOW)
