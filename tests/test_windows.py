"""The deploy-window calendar keeps its promises: deploys wait for the last bell, holidays and
weekends are free, freezes hold, and DST days behave like the clocks on the classroom wall."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from commands.config import DAYS, DEFAULT_SCHOOL_HOURS, SchoolHours, parse_config
from commands.windows import (
    Block,
    Calendar,
    FreezeWindow,
    TenantCalendar,
    calendar_from_config,
    format_local,
    load_holidays,
    parse_when,
)

ROOT = Path(__file__).resolve().parent.parent
CALENDARS = Path(__file__).resolve().parent / "data" / "calendars"
UTC = dt.UTC


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def local(tz: str, *args: int, fold: int = 0) -> dt.datetime:
    return dt.datetime(*args, tzinfo=ZoneInfo(tz), fold=fold)


def school(
    id: str,
    tz: str,
    hours: tuple[SchoolHours, ...] = DEFAULT_SCHOOL_HOURS,
    holidays: frozenset[dt.date] = frozenset(),
) -> TenantCalendar:
    return TenantCalendar(id, tz, hours, holidays)


def hours(start: str, end: str, days: tuple[str, ...] = DAYS[:5]) -> SchoolHours:
    return SchoolHours(days=list(days), start=start, end=end)


LINCOLN = school("lincoln-high", "America/New_York")
LAKESIDE = school("lakeside-elementary", "America/Los_Angeles")
MESA = school("mesa-elementary", "America/Phoenix")
CAMDEN = school("camden-academy", "Europe/London")


# -- school hours -----------------------------------------------------------------------------


def test_school_hours_block_deploys_during_the_school_day():
    cal = Calendar([LINCOLN])
    assert not cal.is_safe(local("America/New_York", 2027, 3, 16, 9, 30))
    assert cal.is_safe(local("America/New_York", 2027, 3, 16, 7, 59))
    assert cal.is_safe(local("America/New_York", 2027, 3, 16, 19, 0))


def test_first_bell_is_blocked_and_last_bell_is_safe():
    cal = Calendar([LINCOLN])
    assert not cal.is_safe(local("America/New_York", 2027, 3, 16, 8, 0))
    assert not cal.is_safe(local("America/New_York", 2027, 3, 16, 14, 59, 59, 999999))
    assert cal.is_safe(local("America/New_York", 2027, 3, 16, 15, 0))


def test_window_api_answer_matches_the_contract_example():
    verdict = Calendar([LINCOLN]).verdict(dt.datetime.fromisoformat("2027-03-16T09:30:00-04:00"))
    assert verdict.to_json() == {
        "at": "2027-03-16T13:30:00+00:00",
        "safe": False,
        "reason": "school hours: lincoln-high (America/New_York) until 15:00",
        "next_safe_at": "2027-03-16T19:00:00+00:00",
        # issue 13: when the safe stretch from next_safe_at ends, and why (the next morning's bell)
        "safe_until": "2027-03-17T12:00:00+00:00",
        "until_reason": "lincoln-high starts school",
        "blocked_by": [
            {"tenant": "lincoln-high", "kind": "school_hours", "until": "2027-03-16T19:00:00+00:00"}
        ],
    }
    assert list(verdict.to_json()) == ["at", "safe", "reason", "next_safe_at", "safe_until", "until_reason", "blocked_by"]


def test_safe_verdict_says_next_safe_is_now():
    at = utc(2027, 3, 16, 23, 15)
    verdict = Calendar([LINCOLN]).verdict(at)
    assert verdict.safe and verdict.next_safe_at == at and verdict.blocked_by == ()
    assert (
        verdict.to_json()["next_safe_at"] == verdict.to_json()["at"] == "2027-03-16T23:15:00+00:00"
    )


def test_deploy_waits_for_last_school_to_end_its_day():
    cal = Calendar([LINCOLN, LAKESIDE])
    at = local("America/New_York", 2027, 3, 16, 9, 30)
    nxt = cal.next_safe_window(at)
    assert nxt == local("America/New_York", 2027, 3, 16, 18, 0)
    assert format_local(nxt, "America/New_York") == "18:00 EDT"
    assert format_local(nxt, "America/Los_Angeles") == "15:00 PDT"


def test_verdict_names_every_school_in_session():
    at = local("America/New_York", 2027, 3, 16, 12, 0)  # 09:00 in Los Angeles
    verdict = Calendar([LINCOLN, LAKESIDE]).verdict(at)
    assert [b.tenant for b in verdict.blocked_by] == ["lincoln-high", "lakeside-elementary"]
    assert verdict.reason == (
        "school hours: lincoln-high (America/New_York) until 15:00; "
        "school hours: lakeside-elementary (America/Los_Angeles) until 15:00"
    )
    assert verdict.blocked_by[1].until == utc(2027, 3, 16, 22, 0)
    assert verdict.next_safe_at == utc(2027, 3, 16, 22, 0)


def test_reason_stays_short_with_many_schools_in_session():
    schools = [school(f"school-{i}", "America/Chicago") for i in range(40)]
    verdict = Calendar(schools).verdict(local("America/Chicago", 2027, 3, 16, 10, 0))
    assert len(verdict.blocked_by) == 40
    assert verdict.reason.endswith("and 35 more schools in session")


def test_school_without_hours_never_blocks():
    cal = Calendar([school("online-academy", "America/New_York", hours=())])
    assert cal.is_safe(local("America/New_York", 2027, 3, 16, 10, 0))


def test_listed_days_only():
    saturday_school = school(
        "saturday-prep", "America/Chicago", (hours("09:00", "12:00", ("sat",)),)
    )
    cal = Calendar([saturday_school])
    assert not cal.is_safe(local("America/Chicago", 2027, 3, 20, 10, 0))
    assert cal.is_safe(local("America/Chicago", 2027, 3, 19, 10, 0))


def test_split_school_day_is_one_blocked_stretch_when_the_halves_touch():
    two_halves = (hours("08:00", "12:00"), hours("12:00", "15:00"))
    cal = Calendar([school("split", "America/Denver", two_halves)])
    [block] = cal.blocks_at(local("America/Denver", 2027, 3, 16, 9, 0))
    assert block.until == local("America/Denver", 2027, 3, 16, 15, 0)


def test_naive_instants_are_refused():
    with pytest.raises(ValueError, match="aware"):
        Calendar([LINCOLN]).verdict(dt.datetime(2027, 3, 16, 9, 30))


def test_unknown_timezone_is_refused_when_the_calendar_is_built():
    with pytest.raises(ValueError, match="Mars/Olympus_Mons"):
        school("olympus", "Mars/Olympus_Mons")


# -- weekends and holidays ------------------------------------------------------------------------


def test_weekends_are_safe_all_day():
    cal = Calendar([LINCOLN, LAKESIDE, MESA])
    saturday = local("America/New_York", 2027, 3, 20, 0, 0)
    for quarter in range(2 * 24 * 4):
        assert cal.is_safe(saturday + dt.timedelta(minutes=15 * quarter))


def test_friday_afternoon_waits_until_the_bell_not_until_monday():
    cal = Calendar([LINCOLN])
    assert cal.next_safe_window(local("America/New_York", 2027, 3, 19, 14, 0)) == local(
        "America/New_York", 2027, 3, 19, 15, 0
    )


def test_holidays_are_safe_all_day():
    mlk = dt.date(2027, 1, 18)
    cal = Calendar([school("lincoln-high", "America/New_York", holidays=frozenset({mlk}))])
    assert cal.is_safe(local("America/New_York", 2027, 1, 18, 10, 0))
    assert not cal.is_safe(local("America/New_York", 2027, 1, 19, 10, 0))


def test_holiday_is_the_schools_own_local_date():
    # 20:00 UTC on Thursday 31 December is already Friday 1 January, 09:00, in Auckland.
    at = utc(2026, 12, 31, 20, 0)
    new_year = frozenset({dt.date(2027, 1, 1)})
    assert Calendar([school("kiwi", "Pacific/Auckland", holidays=new_year)]).is_safe(at)
    assert not Calendar([school("kiwi", "Pacific/Auckland")]).is_safe(at)


def test_holiday_in_one_district_does_not_free_another():
    cal = Calendar(
        [
            school("lincoln-high", "America/New_York", holidays=frozenset({dt.date(2027, 10, 11)})),
            school("mesa-elementary", "America/Phoenix"),
        ]
    )
    verdict = cal.verdict(local("America/Phoenix", 2027, 10, 11, 9, 0))
    assert [b.tenant for b in verdict.blocked_by] == ["mesa-elementary"]


def test_school_resumes_after_winter_break_across_the_year_end():
    holidays = load_holidays([ROOT / "demo" / "calendars" / "district.ics"])
    cal = Calendar([school("lincoln-high", "America/New_York", holidays=holidays)])
    break_starts = local("America/New_York", 2027, 12, 20, 9, 0)
    assert cal.is_safe(break_starts)
    assert cal.is_safe(local("America/New_York", 2027, 12, 31, 23, 59))
    assert not cal.is_safe(local("America/New_York", 2028, 1, 3, 8, 0))


# -- freezes ------------------------------------------------------------------------------------


TESTING_WEEK = FreezeWindow(3, utc(2027, 4, 12, 4, 0), utc(2027, 4, 17, 4, 0), "State testing week")


def test_freeze_blocks_regardless_of_hour():
    cal = Calendar([LINCOLN], [TESTING_WEEK])
    at = local("America/New_York", 2027, 4, 13, 23, 0)  # evening, no school
    verdict = cal.verdict(at)
    assert not verdict.safe
    assert verdict.blocked_by == (
        Block("freeze", utc(2027, 4, 17, 4, 0), id=3, reason="State testing week"),
    )
    assert verdict.reason == "freeze #3: State testing week until Sat 2027-04-17 04:00 UTC"
    assert verdict.to_json()["blocked_by"] == [
        {
            "kind": "freeze",
            "id": 3,
            "reason": "State testing week",
            "until": "2027-04-17T04:00:00+00:00",
        }
    ]
    assert verdict.next_safe_at == utc(2027, 4, 17, 4, 0)


def test_freeze_end_is_safe_and_its_start_is_not():
    cal = Calendar([], [TESTING_WEEK])
    assert not cal.is_safe(TESTING_WEEK.start)
    assert cal.is_safe(TESTING_WEEK.end)
    assert cal.is_safe(TESTING_WEEK.start - dt.timedelta(microseconds=1))


def test_freeze_ending_in_school_hours_waits_for_the_bell():
    freeze = FreezeWindow(
        5, utc(2027, 4, 12, 0, 0), local("America/New_York", 2027, 4, 14, 10, 0), "Report cards"
    )
    cal = Calendar([LINCOLN], [freeze])
    assert cal.next_safe_window(utc(2027, 4, 12, 1, 0)) == local(
        "America/New_York", 2027, 4, 14, 15, 0
    )


def test_freeze_and_school_hours_are_both_reported():
    cal = Calendar([LINCOLN], [TESTING_WEEK])
    verdict = cal.verdict(local("America/New_York", 2027, 4, 13, 10, 0))
    assert [b.kind for b in verdict.blocked_by] == ["school_hours", "freeze"]
    assert verdict.reason == (
        "school hours: lincoln-high (America/New_York) until 15:00; "
        "freeze #3: State testing week until Sat 2027-04-17 04:00 UTC"
    )


def test_with_freezes_replaces_stored_freezes_and_keeps_config_freezes():
    standing = FreezeWindow(None, utc(2027, 6, 1), utc(2027, 6, 2), "Graduation")
    cal = Calendar([LINCOLN], [TESTING_WEEK], standing_freezes=[standing])
    lifted = cal.with_freezes([])
    assert lifted.freezes == (standing,)
    assert lifted.is_safe(local("America/New_York", 2027, 4, 13, 23, 0))
    assert not lifted.is_safe(utc(2027, 6, 1, 12))
    assert cal.with_freezes([TESTING_WEEK]).freezes == (TESTING_WEEK, standing)


def test_freeze_must_end_after_it_starts():
    with pytest.raises(ValueError, match="end after start"):
        FreezeWindow(1, utc(2027, 4, 12), utc(2027, 4, 12), "Nothing")


# -- daylight saving time ----------------------------------------------------------------------


def test_friday_before_spring_forward_uses_standard_time():
    cal = Calendar([LINCOLN])
    [block] = cal.blocks_at(utc(2027, 3, 12, 13, 0))  # 08:00 EST
    assert block.until == utc(2027, 3, 12, 20, 0)  # 15:00 EST
    assert cal.is_safe(utc(2027, 3, 12, 12, 59))


def test_spring_forward_sunday_is_safe_all_day():
    cal = Calendar([LINCOLN, CAMDEN])
    start = utc(2027, 3, 14, 5, 0)  # Sunday 00:00 EST, then every 10 minutes of that Sunday
    assert all(cal.is_safe(start + dt.timedelta(minutes=10 * i)) for i in range(6 * 24))


def test_monday_after_spring_forward_school_starts_at_eight_daylight_time():
    cal = Calendar([LINCOLN])
    assert cal.is_safe(utc(2027, 3, 15, 11, 59))  # 07:59 EDT
    [block] = cal.blocks_at(utc(2027, 3, 15, 12, 0))  # 08:00 EDT, an hour earlier in UTC
    assert block.until == utc(2027, 3, 15, 19, 0)
    assert cal.next_safe_window(utc(2027, 3, 12, 14, 0)) == utc(2027, 3, 12, 20, 0)


def test_fall_back_sunday_is_safe_and_monday_school_starts_at_eight_standard_time():
    cal = Calendar([LINCOLN])
    assert cal.is_safe(local("America/New_York", 2027, 11, 7, 1, 30, fold=0))
    assert cal.is_safe(local("America/New_York", 2027, 11, 7, 1, 30, fold=1))
    assert not cal.is_safe(utc(2027, 11, 5, 12, 0))  # Friday 08:00 EDT
    assert cal.is_safe(utc(2027, 11, 8, 12, 59))  # Monday 07:59 EST
    [block] = cal.blocks_at(utc(2027, 11, 8, 13, 0))
    assert block.until == utc(2027, 11, 8, 20, 0)


def test_hours_in_the_spring_forward_gap_end_at_the_jump():
    # 01:00-03:00 on the spring-forward Sunday: the clock shows 01:00-01:59 EST, then 03:00 EDT.
    night = school("night-school", "America/New_York", (hours("01:00", "03:00", ("sun",)),))
    cal = Calendar([night])
    [block] = cal.blocks_at(utc(2027, 3, 14, 6, 30))  # 01:30 EST
    assert block.until == utc(2027, 3, 14, 7, 0)  # 03:00 EDT, one hour of school that night
    assert cal.is_safe(utc(2027, 3, 14, 7, 0))


def test_hours_entirely_inside_the_gap_never_happen():
    gap = school("gap-school", "America/New_York", (hours("02:00", "03:00", ("sun",)),))
    cal = Calendar([gap])
    sunday = utc(2027, 3, 14, 5, 0)
    assert all(cal.is_safe(sunday + dt.timedelta(minutes=m)) for m in range(0, 4 * 60, 5))
    assert not cal.is_safe(local("America/New_York", 2027, 3, 21, 2, 30))  # a week later


def test_repeated_fall_back_hour_is_school_both_times():
    night = school("night-school", "America/New_York", (hours("01:00", "02:00", ("sun",)),))
    cal = Calendar([night])
    # 01:00 EDT (05:00 UTC) to 02:00 EST (07:00 UTC): the clock shows 01:xx for two hours.
    [block] = cal.blocks_at(utc(2027, 11, 7, 5, 0))
    assert block.until == utc(2027, 11, 7, 7, 0)
    assert not cal.is_safe(local("America/New_York", 2027, 11, 7, 1, 30, fold=1))


def test_ambiguous_end_on_fall_back_night_follows_the_wall_clock():
    # 01:30-02:00: blocked at 01:30-01:59 EDT, free while the clock reads 01:00-01:29 EST again,
    # blocked at 01:30-01:59 EST.
    night = school("night-school", "America/New_York", (hours("01:30", "02:00", ("sun",)),))
    cal = Calendar([night])
    assert not cal.is_safe(utc(2027, 11, 7, 5, 45))
    assert cal.is_safe(utc(2027, 11, 7, 6, 15))
    assert not cal.is_safe(utc(2027, 11, 7, 6, 45))
    assert cal.next_safe_window(utc(2027, 11, 7, 5, 45)) == utc(2027, 11, 7, 6, 0)
    assert cal.next_safe_window(utc(2027, 11, 7, 6, 45)) == utc(2027, 11, 7, 7, 0)


def test_london_changes_clocks_on_its_own_sundays():
    cal = Calendar([CAMDEN])
    assert cal.blocks_at(utc(2027, 3, 26, 8, 0))[0].until == utc(2027, 3, 26, 15, 0)  # GMT
    assert cal.is_safe(utc(2027, 3, 29, 6, 59))
    assert cal.blocks_at(utc(2027, 3, 29, 7, 0))[0].until == utc(2027, 3, 29, 14, 0)  # BST
    assert cal.blocks_at(utc(2027, 11, 1, 8, 0))[0].until == utc(2027, 11, 1, 15, 0)  # GMT again
    assert format_local(utc(2027, 3, 29, 7, 0), "Europe/London") == "08:00 BST"


def test_new_york_and_london_in_the_weeks_their_dst_rules_disagree():
    # 15 March 2027: New York already on EDT, London still on GMT.
    cal = Calendar([CAMDEN, LINCOLN])
    assert cal.next_safe_window(utc(2027, 3, 15, 8, 0)) == utc(2027, 3, 15, 19, 0)
    assert cal.is_safe(utc(2027, 3, 15, 7, 59))


def test_phoenix_keeps_standard_time_all_year():
    cal = Calendar([MESA])
    for day in (
        dt.date(2027, 1, 12),
        dt.date(2027, 3, 15),
        dt.date(2027, 7, 13),
        dt.date(2027, 11, 8),
    ):
        start = dt.datetime.combine(day, dt.time(15, 0), UTC)  # 08:00 MST
        assert cal.is_safe(start - dt.timedelta(minutes=1))
        assert cal.blocks_at(start)[0].until == start + dt.timedelta(hours=7)
    assert format_local(utc(2027, 7, 13, 15, 0), "America/Phoenix") == "08:00 MST"


def test_phoenix_and_new_york_drift_apart_with_dst():
    cal = Calendar([LINCOLN, MESA])
    # Winter: Phoenix is 2 hours behind New York, summer 3; the last bell is 15:00 MST either way.
    assert cal.next_safe_window(utc(2027, 1, 12, 14, 0)) == utc(2027, 1, 12, 22, 0)
    assert cal.next_safe_window(utc(2027, 7, 13, 14, 0)) == utc(2027, 7, 13, 22, 0)
    assert format_local(utc(2027, 7, 13, 22, 0), "America/New_York") == "18:00 EDT"
    assert format_local(utc(2027, 1, 12, 22, 0), "America/New_York") == "17:00 EST"


# -- midnight, whole days, the horizon ------------------------------------------------------------


def test_hours_running_past_midnight_are_one_blocked_stretch():
    overnight = school(
        "overnight-campus",
        "America/Chicago",
        (hours("20:00", "24:00", DAYS), hours("00:00", "06:00", DAYS)),
    )
    cal = Calendar([overnight])
    [block] = cal.blocks_at(local("America/Chicago", 2027, 3, 16, 23, 0))
    assert block.until == local("America/Chicago", 2027, 3, 17, 6, 0)
    assert cal.is_safe(local("America/Chicago", 2027, 3, 17, 6, 0))
    verdict = cal.verdict(local("America/Chicago", 2027, 3, 16, 23, 0))
    assert (
        verdict.reason
        == "school hours: overnight-campus (America/Chicago) until Wed 2027-03-17 06:00"
    )


def test_school_in_session_every_hour_of_every_day_has_no_safe_window():
    always = school("always-open", "Asia/Tokyo", (hours("00:00", "24:00", DAYS),))
    verdict = Calendar([always]).verdict(utc(2027, 3, 16, 12, 0))
    assert not verdict.safe and verdict.next_safe_at is None
    assert verdict.to_json()["next_safe_at"] is None


def test_a_long_freeze_is_jumped_over_in_one_step():
    freeze = FreezeWindow(9, utc(2027, 1, 1), utc(2027, 12, 1), "Platform migration")
    assert Calendar([LINCOLN], [freeze]).next_safe_window(utc(2027, 2, 1)) == utc(2027, 12, 1)


# -- holiday calendars ------------------------------------------------------------------------------


def test_holiday_file_reads_all_day_ranges_durations_and_recurrences():
    days = load_holidays([CALENDARS / "mixed.ics"])
    assert dt.date(2027, 1, 18) in days  # one all-day event
    assert dt.date(2027, 2, 15) in days  # no DTEND means one day
    assert {dt.date(2026, 12, 21), dt.date(2027, 1, 1)} <= days  # DTEND 2 Jan is exclusive
    assert dt.date(2027, 1, 2) not in days
    assert {dt.date(2027, 3, 22) + dt.timedelta(days=i) for i in range(5)} <= days  # DURATION:P5D
    assert dt.date(2027, 3, 27) not in days
    assert {dt.date(2027, 5, 3), dt.date(2027, 5, 10), dt.date(2027, 5, 24)} <= days  # weekly
    assert dt.date(2027, 5, 17) not in days  # EXDATE
    assert {dt.date(2026, 7, 4), dt.date(2030, 7, 4)} <= days  # yearly, open-ended


def test_timed_and_cancelled_events_do_not_close_the_school():
    days = load_holidays([CALENDARS / "mixed.ics"])
    assert dt.date(2027, 2, 10) not in days
    assert dt.date(2027, 4, 12) not in days


@pytest.mark.parametrize("name", ["broken-date.ics", "not-icalendar.ics", "missing.ics"])
def test_broken_holiday_file_is_named_in_the_error(name: str):
    with pytest.raises(ValueError, match=name):
        load_holidays([CALENDARS / name])


def test_demo_district_calendars_hold_the_usual_days_off():
    nyc = load_holidays([ROOT / "demo" / "calendars" / "district.ics"])
    mesa = load_holidays([ROOT / "demo" / "calendars" / "mesa-district.ics"])
    for days in (nyc, mesa):
        assert dt.date(2026, 11, 26) in days and dt.date(2027, 11, 25) in days  # Thanksgiving
        assert dt.date(2027, 1, 18) in days and dt.date(2028, 1, 17) in days  # MLK Day
        assert {dt.date(2026, 12, 21), dt.date(2026, 12, 31)} <= days  # winter break
        assert dt.date(2027, 2, 15) in days and dt.date(2028, 2, 21) in days  # Presidents' Day
        assert dt.date(2027, 3, 16) not in days  # the contract example is a school day
    assert {dt.date(2027, 3, 22), dt.date(2028, 3, 24)} <= nyc  # spring break
    assert {dt.date(2027, 3, 8), dt.date(2028, 3, 17)} <= mesa
    assert {dt.date(2026, 11, 11), dt.date(2027, 11, 11)} <= nyc  # RRULE COUNT=2


# -- configuration ----------------------------------------------------------------------------------


@pytest.fixture
def demo_config(tmp_path: Path):
    """A config in its own folder, holiday files beside it as the config's paths expect."""
    (tmp_path / "district.ics").write_bytes(
        (ROOT / "demo" / "calendars" / "district.ics").read_bytes()
    )
    (tmp_path / "lincoln-extra.ics").write_bytes((CALENDARS / "lincoln-extra.ics").read_bytes())

    def build(**extra: object):
        data = {
            "windows": {"holidays": ["district.ics"]},
            "tenants": [
                {
                    "id": "lincoln-high",
                    "timezone": "America/New_York",
                    "holidays": ["lincoln-extra.ics"],
                },
                {"id": "mesa-elementary", "timezone": "America/Phoenix"},
                {
                    "id": "night-owls",
                    "timezone": "America/Chicago",
                    "school_hours": [{"start": "18:00", "end": "21:00"}],
                },
                {"id": "virtual", "timezone": "America/Denver", "school_hours": []},
            ],
            **extra,
        }
        return parse_config(data, base_dir=tmp_path)

    return build


def test_config_holidays_apply_to_every_tenant_and_tenant_files_add_to_them(demo_config):
    cal = calendar_from_config(demo_config())
    by_id = {t.id: t for t in cal.tenants}
    assert dt.date(2026, 11, 26) in by_id["mesa-elementary"].holidays
    assert dt.date(2026, 11, 26) in by_id["lincoln-high"].holidays
    assert dt.date(2027, 3, 16) in by_id["lincoln-high"].holidays
    assert dt.date(2027, 3, 16) not in by_id["mesa-elementary"].holidays


def test_config_tenant_school_hours_replace_the_default_and_empty_means_none(demo_config):
    cal = calendar_from_config(demo_config())
    verdict = cal.verdict(local("America/Chicago", 2027, 3, 17, 19, 0))
    assert [b.tenant for b in verdict.blocked_by] == ["night-owls"]
    morning = cal.verdict(local("America/Denver", 2027, 3, 17, 9, 0))
    assert [b.tenant for b in morning.blocked_by] == ["lincoln-high", "mesa-elementary"]


def test_config_freezes_become_freezes_without_an_id(demo_config):
    cfg = demo_config(
        freezes=[
            {
                "start": "2027-05-03T00:00:00-04:00",
                "end": "2027-05-08T00:00:00-04:00",
                "reason": "AP exams",
            }
        ]
    )
    stored = FreezeWindow(7, utc(2027, 6, 1), utc(2027, 6, 2), "Graduation")
    cal = calendar_from_config(cfg, [stored])
    verdict = cal.verdict(utc(2027, 5, 4, 2, 0))
    assert verdict.blocked_by == (Block("freeze", utc(2027, 5, 8, 4, 0), reason="AP exams"),)
    assert verdict.to_json()["blocked_by"][0]["id"] is None
    assert verdict.reason.startswith("freeze: AP exams until")
    assert {f.id for f in cal.freezes} == {None, 7}
    assert cal.with_freezes([]).freezes == (cal.freezes[0],)


# -- /window at WHEN ---------------------------------------------------------------------------------

WEDNESDAY_NOON = local("America/New_York", 2027, 3, 10, 12, 0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("friday 16:00", local("America/New_York", 2027, 3, 12, 16, 0)),
        ("FRI 16:00", local("America/New_York", 2027, 3, 12, 16, 0)),
        ("wed 11:00", local("America/New_York", 2027, 3, 17, 11, 0)),  # today's has passed
        ("wed 13:00", local("America/New_York", 2027, 3, 10, 13, 0)),
        ("16:00", local("America/New_York", 2027, 3, 10, 16, 0)),
        ("7:30", local("America/New_York", 2027, 3, 11, 7, 30)),
        ("tomorrow 07:30", local("America/New_York", 2027, 3, 11, 7, 30)),
        ("mon 9:00", local("America/New_York", 2027, 3, 15, 9, 0)),  # EDT by then
        ("4pm", local("America/New_York", 2027, 3, 10, 16, 0)),
        ("thursday 12am", local("America/New_York", 2027, 3, 11, 0, 0)),
        ("2027-03-16T09:30:00-04:00", utc(2027, 3, 16, 13, 30)),
        ("2027-03-16T13:30Z", utc(2027, 3, 16, 13, 30)),
        ("2027-03-16T09:30", utc(2027, 3, 16, 13, 30)),
        ("2027-01-12 09:30", utc(2027, 1, 12, 14, 30)),
    ],
)
def test_window_at_understands_local_and_iso_times(text: str, expected: dt.datetime):
    assert parse_when(text, WEDNESDAY_NOON, "America/New_York") == expected


def test_window_at_in_the_spring_forward_gap_moves_forward():
    saturday = local("America/New_York", 2027, 3, 13, 12, 0)
    assert parse_when("sun 02:30", saturday, "America/New_York") == utc(
        2027, 3, 14, 7, 30
    )  # 03:30 EDT
    assert parse_when("2027-03-14T02:30", saturday, "America/New_York") == utc(2027, 3, 14, 7, 30)


def test_window_at_on_fall_back_night_means_the_later_time():
    saturday = local("America/New_York", 2027, 11, 6, 12, 0)
    assert parse_when("sun 01:30", saturday, "America/New_York") == utc(2027, 11, 7, 6, 30)  # EST


def test_window_at_uses_the_callers_timezone():
    now = utc(2027, 3, 10, 17, 0)
    assert parse_when("16:00", now, "America/Phoenix") == utc(2027, 3, 10, 23, 0)
    assert parse_when("16:00", now, "Europe/London") == utc(2027, 3, 11, 16, 0)  # passed there


@pytest.mark.parametrize(
    "text", ["", "soon", "friday", "25:00", "funday 10:00", "13pm", "2027-02-30T10:00"]
)
def test_window_at_explains_what_it_accepts(text: str):
    with pytest.raises(ValueError, match="friday 16:00"):
        parse_when(text, WEDNESDAY_NOON, "America/New_York")


@pytest.mark.parametrize("text", ["\u0661\u0666:\u0660\u0660", "fri \u0664pm", "１６:００"])
def test_window_at_reads_ascii_digits_only(text: str):
    with pytest.raises(ValueError, match="friday 16:00"):
        parse_when(text, WEDNESDAY_NOON, "America/New_York")


@pytest.mark.parametrize("text", ["9999-12-31T23:59:59", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00+05:00",
                                  "1969-12-31T23:00", "2501-01-01T00:00Z"])
def test_window_at_refuses_years_it_cannot_reason_about_without_overflowing(text: str):
    with pytest.raises(ValueError, match="between 1970 and 2500"):
        parse_when(text, WEDNESDAY_NOON, "America/New_York")


def test_a_local_time_after_an_instant_is_the_next_one_after_it():
    friday_18 = local("America/New_York", 2027, 3, 12, 18, 0)
    assert parse_when("07:00", WEDNESDAY_NOON, "America/New_York", after=friday_18) == local(
        "America/New_York", 2027, 3, 13, 7, 0)
    assert parse_when("mon 07:00", WEDNESDAY_NOON, "America/New_York", after=friday_18) == local(
        "America/New_York", 2027, 3, 15, 7, 0)
    # "tomorrow" is always from now, and ISO is absolute.
    assert parse_when("tomorrow 07:00", WEDNESDAY_NOON, "America/New_York", after=friday_18) == local(
        "America/New_York", 2027, 3, 11, 7, 0)


@pytest.mark.parametrize(("words", "start", "end", "reason"), [
    (["tomorrow", "18:00", "to", "friday", "07:00", "Report", "cards"], (11, 18), (12, 7), "Report cards"),
    (["tomorrow 18:00", "friday 07:00", "Report", "cards"], (11, 18), (12, 7), "Report cards"),
    (["tomorrow", "18:00", "friday", "07:00", "Report", "cards"], (11, 18), (12, 7), "Report cards"),
    (["friday", "9:00", "am", "->", "5:00", "pm", "Staff", "day"], (12, 9), (12, 17), "Staff day"),
    (["friday", "18:00", "-&gt;", "07:00", "Weekend"], (12, 18), (13, 7), "Weekend"),
    (["2027-03-11T18:00", "2027-03-12T07:00-05:00", "ISO", "still", "works"], (11, 18), (12, 7), "ISO still works"),
    (["2027-03-11T18:00", "2027-03-12T07:00", "Move", "to", "the", "new", "database"], (11, 18), (12, 7),
     "Move to the new database"),
])
def test_a_freeze_splits_into_start_end_and_reason_as_it_reads(words, start, end, reason):
    from commands.freezes import read_span

    got = read_span(words, WEDNESDAY_NOON, "America/New_York")
    assert got == (local("America/New_York", 2027, 3, *start, 0), local("America/New_York", 2027, 3, *end, 0), reason)


@pytest.mark.parametrize(("words", "problem"), [
    ([], "needs START, END and a REASON"),
    (["tomorrow", "18:00"], "needs START, END and a REASON"),
    (["tomorrow", "18:00", "friday", "07:00"], "add why"),
    (["soon", "friday", "07:00", "Exams"], "could not read START"),
    (["tomorrow", "18:00", "later", "Exams"], "could not read END"),
    (["9999-01-01T00:00", "friday", "07:00", "Exams"], "between 1970 and 2500"),
])
def test_a_freeze_that_cannot_be_split_says_which_part(words, problem):
    from commands.freezes import FreezeError, read_span

    with pytest.raises(FreezeError, match=problem):
        read_span(words, WEDNESDAY_NOON, "America/New_York")


def test_format_local_adds_the_day_only_when_it_differs():
    at = utc(2027, 3, 19, 19, 0)
    assert format_local(at, "America/New_York") == "15:00 EDT"
    assert format_local(at, "America/New_York", reference=utc(2027, 3, 19, 13, 0)) == "15:00 EDT"
    assert (
        format_local(at, "America/New_York", reference=utc(2027, 3, 16, 13, 0))
        == "Fri 2027-03-19 15:00 EDT"
    )
    assert format_local(utc(2027, 1, 5, 20, 0), "America/New_York") == "15:00 EST"


# -- properties, checked against a plain wall-clock reading of the rules --------------------------------

ZONES = [
    "America/New_York",
    "America/Los_Angeles",
    "America/Phoenix",
    "America/Santiago",
    "Europe/London",
    "Australia/Lord_Howe",
    "Pacific/Auckland",
    "Asia/Kathmandu",
]
TRANSITIONS = [
    utc(2027, 3, 14, 7),  # US spring forward
    utc(2027, 11, 7, 6),  # US fall back
    utc(2027, 3, 28, 1),  # Europe
    utc(2027, 10, 31, 1),
    utc(2027, 4, 3, 15),  # Lord Howe, half an hour
    utc(2027, 9, 5, 4),
    utc(2027, 4, 4, 3),  # Santiago, at midnight
    utc(2027, 9, 5, 4),
    utc(2027, 12, 31, 12),  # year end
]


def wall_clock_blocked(cal: Calendar, t: dt.datetime) -> bool:
    """The rules read literally: what each school's clock shows, and the freezes."""
    for f in cal.freezes:
        if f.start <= t < f.end:
            return True
    for tenant in cal.tenants:
        seen = t.astimezone(ZoneInfo(tenant.timezone))
        if seen.date() in tenant.holidays:
            continue
        clock = seen.time().replace(tzinfo=None)
        for h in tenant.school_hours:
            end_of_day = h.end == dt.time.max
            if (
                DAYS[seen.weekday()] in h.days
                and h.start <= clock
                and (end_of_day or clock < h.end)
            ):
                return True
    return False


@st.composite
def school_hours(draw) -> SchoolHours:
    start = draw(st.integers(0, 24 * 60 - 15))
    end = draw(st.integers(start + 1, 24 * 60))
    days = draw(st.lists(st.sampled_from(DAYS), min_size=1, max_size=7, unique=True))
    return SchoolHours(
        days=days,
        start=f"{start // 60:02d}:{start % 60:02d}",
        end=f"{end // 60:02d}:{end % 60:02d}",
    )


@st.composite
def tenants(draw) -> TenantCalendar:
    tz = draw(st.sampled_from(ZONES))
    hrs = draw(
        st.one_of(
            st.just(DEFAULT_SCHOOL_HOURS),
            st.lists(school_hours(), min_size=1, max_size=2).map(tuple),
        )
    )
    holidays = draw(st.frozensets(st.dates(dt.date(2027, 3, 1), dt.date(2028, 1, 10)), max_size=20))
    return TenantCalendar(f"t{draw(st.integers(0, 999))}", tz, hrs, holidays)


instants = st.one_of(
    st.datetimes(dt.datetime(2027, 1, 1), dt.datetime(2027, 12, 31)).map(
        lambda d: d.replace(tzinfo=UTC)
    ),
    st.builds(
        lambda base, minutes: base + dt.timedelta(minutes=minutes),
        st.sampled_from(TRANSITIONS),
        st.integers(-36 * 60, 36 * 60),
    ),
)
freezes = st.lists(
    st.builds(
        lambda start, hours, fid: FreezeWindow(
            fid, start, start + dt.timedelta(hours=hours), "test freeze"
        ),
        instants,
        st.integers(1, 72),
        st.integers(1, 99),
    ),
    max_size=2,
)
PROPERTY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(st.lists(tenants(), min_size=1, max_size=4), freezes, instants)
def test_verdict_agrees_with_every_schools_wall_clock(schools, frozen, at):
    cal = Calendar(schools, frozen)
    assert cal.is_safe(at) is not wall_clock_blocked(cal, at)
    assert bool(cal.blocks_at(at)) is wall_clock_blocked(cal, at)


@PROPERTY
@given(st.lists(tenants(), min_size=1, max_size=4), freezes, instants)
def test_next_safe_window_is_safe_and_nothing_earlier_is(schools, frozen, at):
    cal = Calendar(schools, frozen)
    nxt = cal.next_safe_window(at)
    if cal.is_safe(at):
        assert nxt == at
        return
    if nxt is None:
        return  # every minute for 400 days is school or freeze; the horizon test covers it
    assert not wall_clock_blocked(cal, nxt)
    assert wall_clock_blocked(cal, nxt - dt.timedelta(microseconds=1))
    step, stop = dt.timedelta(minutes=1), min(nxt, at + dt.timedelta(days=3))
    t = at
    while t < stop:
        assert wall_clock_blocked(cal, t), f"{t} is safe, before {nxt}"
        t += step
    for b in cal.blocks_at(at):
        assert b.until <= nxt


@PROPERTY
@given(st.lists(tenants(), min_size=1, max_size=3), tenants(), freezes, instants)
def test_adding_a_school_never_makes_the_window_earlier(schools, extra, frozen, at):
    before = Calendar(schools, frozen).next_safe_window(at)
    after = Calendar([*schools, extra], frozen).next_safe_window(at)
    if before is None:
        assert after is None
    elif after is not None:
        assert after >= before
