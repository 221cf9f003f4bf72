"""How long a window lasts (Calendar.safe_until, ending_phrase, timeline): `safe_until` and `until_reason` on the verdict, the window API, `/window`
and `recess window check`."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

from commands.config import parse_config
from commands.windows import Calendar, FreezeWindow, calendar_from_config, ending_phrase, timeline
from tests.harness import FakeClock, write_config
from tests.test_window_commands import reply_text
from tests.test_windows import LINCOLN, local, school, utc

SAKURA = school("sakura-intl", "Asia/Tokyo")
RECESS = str(Path(sys.executable).parent / "recess")


def test_a_safe_evening_lasts_until_the_first_school_in_any_zone_starts():
    # 18:00 in New York on a Tuesday: New York is out, Tokyo starts at 08:00 JST (23:00 UTC).
    verdict = Calendar([LINCOLN, SAKURA]).verdict(local("America/New_York", 2027, 3, 16, 18, 0))
    assert verdict.safe
    assert verdict.to_json()["safe_until"] == "2027-03-16T23:00:00+00:00"
    assert verdict.to_json()["until_reason"] == "sakura-intl starts school"
    assert verdict.until_phrase() == "safe until 08:00 JST, when sakura-intl starts school"


def test_a_freeze_that_starts_first_ends_the_stretch():
    freeze = FreezeWindow(3, utc(2027, 3, 16, 21, 0), utc(2027, 3, 20, 0, 0), "State testing week")
    verdict = Calendar([LINCOLN], [freeze]).verdict(utc(2027, 3, 16, 20, 0))
    assert verdict.ends.at == utc(2027, 3, 16, 21, 0)
    assert verdict.to_json()["until_reason"] == "freeze #3 starts: State testing week"


def test_a_blocked_instant_says_how_long_the_next_window_lasts():
    verdict = Calendar([LINCOLN]).verdict(local("America/New_York", 2027, 3, 16, 9, 30))
    assert not verdict.safe and verdict.next_safe_at == utc(2027, 3, 16, 19, 0)
    assert verdict.ends.at == utc(2027, 3, 17, 12, 0)  # Wednesday 08:00 in New York


def test_a_friday_evening_lasts_the_weekend():
    verdict = Calendar([LINCOLN]).verdict(local("America/New_York", 2027, 3, 19, 16, 0))
    assert verdict.ends.at == local("America/New_York", 2027, 3, 22, 8, 0).astimezone(dt.UTC)


def test_the_window_ends_at_the_right_instant_across_spring_forward():
    # Saturday 13 March 2027 in New York; the clocks go forward on Sunday the 14th: Monday's
    # 08:00 EDT is 12:00 UTC, not 13:00.
    verdict = Calendar([LINCOLN]).verdict(local("America/New_York", 2027, 3, 13, 12, 0))
    assert verdict.ends.at == utc(2027, 3, 15, 12, 0)


def test_nothing_within_14_days_is_null():
    free = school("summer-camp", "Europe/London", hours=())
    verdict = Calendar([free]).verdict(utc(2027, 7, 1, 12, 0))
    assert verdict.safe and verdict.ends is None
    assert verdict.to_json()["safe_until"] is None and verdict.to_json()["until_reason"] is None
    far = FreezeWindow(None, utc(2027, 7, 20, 0, 0), utc(2027, 7, 21, 0, 0), "far away")
    assert Calendar([free], [far]).verdict(utc(2027, 7, 1, 12, 0)).ends is None  # 19 days later


def test_window_api_and_slash_command_say_until_when(server_factory):
    tokyo = '\n[[tenants]]\nid = "sakura-intl"\ntimezone = "Asia/Tokyo"\n'
    srv = server_factory(tokyo, clock=FakeClock(local("America/New_York", 2027, 3, 16, 18, 0)))
    body = srv.http.get("/api/v1/window").json()
    assert body["safe"] and body["safe_until"] == "2027-03-16T23:00:00+00:00"
    assert body["until_reason"] == "sakura-intl starts school"
    assert "safe until 08:00 JST, when sakura-intl starts school" in reply_text(srv.command("/window"))


def test_window_check_on_the_host_says_until_when_and_refuses_a_short_window(tmp_path):
    cfg = write_config(tmp_path, '\n[[tenants]]\nid = "sakura-intl"\ntimezone = "Asia/Tokyo"\n')
    at = "2027-03-16T22:30:00+00:00"  # half an hour before Tokyo's first bell
    ok = subprocess.run([RECESS, "--config", str(cfg), "window", "check", "--at", at], capture_output=True, text=True)
    assert ok.returncode == 0 and "safe until 08:00 JST, when sakura-intl starts school" in ok.stdout
    short = subprocess.run([RECESS, "--config", str(cfg), "window", "check", "--at", at, "--for", "45m"],
                           capture_output=True, text=True)
    assert short.returncode == 1 and "refused: the window closes in 30 min" in short.stdout
    bad = subprocess.run([RECESS, "--config", str(cfg), "window", "check", "--for", "soon"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--for" in bad.stderr


UTC = dt.UTC


def calendar(*freezes: FreezeWindow):  # noqa: ANN201
    cfg = parse_config({"tenants": [{"id": "lincoln-high", "timezone": "America/New_York"},
                                    {"id": "sakura-intl", "timezone": "Asia/Tokyo"}]})
    return calendar_from_config(cfg, freezes)


def test_safe_until_names_the_school_whose_day_starts_first():
    # Tuesday 2027-03-16 20:00 UTC: New York is out (16:00), Tokyo starts at 08:00 JST = 23:00 UTC.
    ending = calendar().safe_until(dt.datetime(2027, 3, 16, 20, 0, tzinfo=UTC))
    assert ending.at == dt.datetime(2027, 3, 16, 23, 0, tzinfo=UTC)
    assert ending.reason == "sakura-intl starts school"
    # in the viewer's zone, as App Home and the dashboard say it
    assert ending_phrase(ending, "America/New_York", dt.datetime(2027, 3, 16, 20, 0, tzinfo=UTC)) == \
        "safe until 19:00 EDT, when sakura-intl starts school"


def test_safe_until_is_none_while_blocked():
    assert calendar().safe_until(dt.datetime(2027, 3, 16, 14, 0, tzinfo=UTC)) is None


def test_a_freeze_that_starts_first_ends_the_safe_window():
    freeze = FreezeWindow(3, dt.datetime(2027, 3, 16, 21, 0, tzinfo=UTC), dt.datetime(2027, 3, 20, tzinfo=UTC), "State testing")
    ending = calendar(freeze).safe_until(dt.datetime(2027, 3, 16, 20, 0, tzinfo=UTC))
    assert ending.at == freeze.start
    assert "State testing" in ending_phrase(ending, "UTC", freeze.start)


def test_safe_until_crosses_a_weekend():
    # Friday 2027-03-19 20:00 UTC: the next school day anywhere is Monday 08:00 in Tokyo (Sunday 23:00 UTC).
    ending = calendar().safe_until(dt.datetime(2027, 3, 19, 20, 0, tzinfo=UTC))
    assert ending.at == dt.datetime(2027, 3, 21, 23, 0, tzinfo=UTC)


def test_timeline_shows_each_schools_hours_and_the_shared_safe_stretches():
    start = dt.datetime(2027, 3, 15, 0, 0, tzinfo=UTC)  # a Monday
    rows = timeline(calendar(), start, start + dt.timedelta(days=7))
    assert list(rows) == ["lincoln-high", "sakura-intl"]
    ny = [s for s in rows["lincoln-high"] if s.kind == "school_hours"]
    assert len(ny) == 5 and ny[0].start == dt.datetime(2027, 3, 15, 12, 0, tzinfo=UTC)
    safe = [s for s in rows["sakura-intl"] if s.kind == "safe"]
    assert safe and all(calendar().is_safe(s.start) for s in safe)
    assert all(not calendar().is_safe(s.end) or s.end == start + dt.timedelta(days=7) for s in safe)
