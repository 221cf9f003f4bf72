"""windows.safe_until and windows.timeline: how long the current safe window lasts, and the week ahead."""

from __future__ import annotations

import datetime as dt

from commands.config import parse_config
from commands.windows import FreezeWindow, calendar_from_config, safe_until, timeline

UTC = dt.UTC


def calendar(*freezes: FreezeWindow):  # noqa: ANN201
    cfg = parse_config({"tenants": [{"id": "lincoln-high", "timezone": "America/New_York"},
                                    {"id": "sakura-intl", "timezone": "Asia/Tokyo"}]})
    return calendar_from_config(cfg, freezes)


def test_safe_until_names_the_school_whose_day_starts_first():
    # Tuesday 2027-03-16 20:00 UTC: New York is out (16:00), Tokyo starts at 08:00 JST = 23:00 UTC.
    stretch = safe_until(calendar(), dt.datetime(2027, 3, 16, 20, 0, tzinfo=UTC))
    assert stretch.until == dt.datetime(2027, 3, 16, 23, 0, tzinfo=UTC)
    assert stretch.block.tenant == "sakura-intl"
    assert stretch.describe("America/New_York", dt.datetime(2027, 3, 16, 20, 0, tzinfo=UTC)) == \
        "safe until 19:00 EDT, when sakura-intl starts its school day"


def test_safe_until_is_none_while_blocked():
    assert safe_until(calendar(), dt.datetime(2027, 3, 16, 14, 0, tzinfo=UTC)) is None


def test_a_freeze_that_starts_first_ends_the_safe_window():
    freeze = FreezeWindow(3, dt.datetime(2027, 3, 16, 21, 0, tzinfo=UTC), dt.datetime(2027, 3, 20, tzinfo=UTC), "State testing")
    stretch = safe_until(calendar(freeze), dt.datetime(2027, 3, 16, 20, 0, tzinfo=UTC))
    assert stretch.until == freeze.start and stretch.block.kind == "freeze"
    assert "State testing" in stretch.describe("UTC", freeze.start)


def test_safe_until_crosses_a_weekend():
    # Friday 2027-03-19 20:00 UTC: the next school day anywhere is Monday 08:00 in Tokyo (Sunday 23:00 UTC).
    stretch = safe_until(calendar(), dt.datetime(2027, 3, 19, 20, 0, tzinfo=UTC))
    assert stretch.until == dt.datetime(2027, 3, 21, 23, 0, tzinfo=UTC)


def test_timeline_shows_each_schools_hours_and_the_shared_safe_stretches():
    start = dt.datetime(2027, 3, 15, 0, 0, tzinfo=UTC)  # a Monday
    rows = timeline(calendar(), start, start + dt.timedelta(days=7))
    assert list(rows) == ["lincoln-high", "sakura-intl"]
    ny = [s for s in rows["lincoln-high"] if s.kind == "school_hours"]
    assert len(ny) == 5 and ny[0].start == dt.datetime(2027, 3, 15, 12, 0, tzinfo=UTC)
    safe = [s for s in rows["sakura-intl"] if s.kind == "safe"]
    assert safe and all(calendar().is_safe(s.start) for s in safe)
    assert all(not calendar().is_safe(s.end) or s.end == start + dt.timedelta(days=7) for s in safe)
