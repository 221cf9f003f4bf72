"""Deploy windows: when any school is in session or a freeze applies, and the next safe instant.

Pure domain code with no Slack imports and no clock reads: every function is given the instant it
reasons about. School hours are wall-clock hours: an instant is blocked for a school when the
school's own clock (its IANA timezone, DST included) shows a time in `[start, end)` on a listed
weekday that is not a holiday there. docs/windows.md explains the rules and the DST cases.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import icalendar
import pendulum
import recurring_ical_events

from commands.config import DAYS, Config, SchoolHours

UTC = dt.UTC
# How far next_safe_window looks before it gives up and answers None.
HORIZON = dt.timedelta(days=400)
# Recurring holiday events are expanded up to this long after the file's last DTSTART.
RECURRENCE_YEARS = 10

_DAY = dt.timedelta(days=1)
_SECOND = dt.timedelta(seconds=1)
# Wall-clock day D covers UTC instants within [D - 14 h, D + 24 h + 12 h] for any real offset;
# a little margin on both sides.
_BEFORE_DAY = dt.timedelta(hours=15)
_AFTER_DAY = dt.timedelta(hours=37)
_MAX_REASONS = 5
# Per-schedule and per-zone day caches are dropped past this many days (memory stays bounded).
_MAX_CACHED_DAYS = 2000


# -- values -------------------------------------------------------------------------------------


def _utc(at: dt.datetime) -> dt.datetime:
    """An aware datetime (stdlib or pendulum) as a plain stdlib datetime in UTC."""
    if not isinstance(at, dt.datetime):
        raise TypeError(f"expected a datetime, got {at!r}")
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(
            f"expected an aware datetime (with a timezone), got naive {at.isoformat()}"
        )
    u = at.astimezone(UTC)
    if type(u) is dt.datetime and u.tzinfo is UTC:
        return u
    return dt.datetime(
        u.year, u.month, u.day, u.hour, u.minute, u.second, u.microsecond, tzinfo=UTC
    )


def _iso(at: dt.datetime) -> str:
    return _utc(at).isoformat()


@dataclass(frozen=True)
class TenantCalendar:
    """One school's (or district's) calendar: where its clock is, when it teaches, its days off."""

    id: str
    timezone: str
    school_hours: tuple[SchoolHours, ...]
    holidays: frozenset[dt.date]

    def __post_init__(self) -> None:
        _zone(self.timezone)  # unknown names fail here, not at the first deploy
        object.__setattr__(self, "school_hours", tuple(self.school_hours))
        object.__setattr__(self, "holidays", frozenset(self.holidays))


@dataclass(frozen=True)
class FreezeWindow:
    """Deploys are frozen in [start, end), whatever the hour. `id` is None for config freezes."""

    id: int | None
    start: dt.datetime
    end: dt.datetime
    reason: str

    def __post_init__(self) -> None:
        start, end = _utc(self.start), _utc(self.end)
        if end <= start:
            raise ValueError(f"freeze {self.reason!r}: expected end after start")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)


@dataclass(frozen=True)
class Block:
    """One reason an instant is blocked, and when that blocked stretch ends."""

    kind: str  # "school_hours" | "freeze"
    until: dt.datetime
    tenant: str | None = None
    timezone: str | None = None
    id: int | None = None
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        if self.kind == "freeze":
            return {
                "kind": "freeze",
                "id": self.id,
                "reason": self.reason,
                "until": _iso(self.until),
            }
        return {"tenant": self.tenant, "kind": self.kind, "until": _iso(self.until)}


@dataclass(frozen=True)
class Verdict:
    """May we deploy at `at`? If not, what blocks it and when the next safe instant is."""

    at: dt.datetime
    safe: bool
    blocked_by: tuple[Block, ...]
    next_safe_at: dt.datetime | None
    reason: str
    # When the safe stretch that starts at `next_safe_at` (`at` itself when safe) ends, and what
    # ends it; None when nothing blocks within SAFE_UNTIL_HORIZON of its start.
    ends: Ending | None = None

    def to_json(self) -> dict[str, Any]:
        """The window-API contract's JSON (docs: ARCHITECTURE.md, "Contract: window API"), with
        `safe_until` and `until_reason` (issue 13)."""
        return {
            "at": _iso(self.at),
            "safe": self.safe,
            "reason": self.reason,
            "next_safe_at": None if self.next_safe_at is None else _iso(self.next_safe_at),
            "safe_until": None if self.ends is None else _iso(self.ends.at),
            "until_reason": None if self.ends is None else self.ends.reason,
            "blocked_by": [b.to_json() for b in self.blocked_by],
        }

    def until_phrase(self) -> str | None:
        """'safe until 06:00 JST, when sakura-intl starts school' (in the tenant's own zone)."""
        if self.ends is None:
            return None
        return ending_phrase(self.ends, self.ends.timezone or "UTC", self.next_safe_at or self.at)


SAFE_UNTIL_HORIZON = dt.timedelta(days=14)


@dataclass(frozen=True)
class Ending:
    """What ends a safe stretch: a school's day starting, or a freeze."""

    at: dt.datetime
    reason: str  # "sakura-intl starts school", "freeze #3 starts: State testing week"
    timezone: str | None = None


# -- time zones and wall-clock intervals -------------------------------------------------------


class _Zone:
    """One IANA timezone, with its offsets around each local day cached."""

    def __init__(self, name: str) -> None:
        try:
            self.tz = pendulum.timezone(name)
        except Exception:
            raise ValueError(
                f"unknown timezone {name!r} (expected an IANA name like 'America/New_York')"
            ) from None
        self.name = name
        self._offsets: dict[int, tuple[dt.timedelta, dt.datetime | None, dt.timedelta]] = {}

    def offset(self, at: dt.datetime) -> dt.timedelta:
        return at.astimezone(self.tz).utcoffset()  # type: ignore[return-value]

    def local_ordinal(self, at: dt.datetime) -> int:
        return at.astimezone(self.tz).toordinal()

    def offsets(self, day: dt.date) -> tuple[dt.timedelta, dt.datetime | None, dt.timedelta]:
        """(offset before, the transition instant or None, offset after) around local `day`.

        Assumes at most one offset change in the ~2 days around a date, which holds for every
        zone in current tz data.
        """
        key = day.toordinal()
        hit = self._offsets.get(key)
        if hit is not None:
            return hit
        midnight = dt.datetime(day.year, day.month, day.day, tzinfo=UTC)
        lo, hi = midnight - _BEFORE_DAY, midnight + _AFTER_DAY
        off_lo, off_hi = self.offset(lo), self.offset(hi)
        if off_lo == off_hi:
            hit = (off_lo, None, off_lo)
        else:
            # Bisect to the second: tz data records transitions in whole seconds.
            while hi - lo > _SECOND:
                mid = lo + (hi - lo) // 2
                mid = mid.replace(microsecond=0)
                if self.offset(mid) == off_lo:
                    lo = mid
                else:
                    hi = mid
            hit = (off_lo, hi, off_hi)
        if len(self._offsets) >= _MAX_CACHED_DAYS:
            self._offsets.clear()
        self._offsets[key] = hit
        return hit

    def wall_interval(
        self, day: dt.date, start: dt.timedelta, end: dt.timedelta
    ) -> list[tuple[dt.datetime, dt.datetime]]:
        """UTC instants whose local wall clock shows `day` + [start, end).

        On a spring-forward day times inside the gap never show, so the interval starts (or ends)
        at the transition; on a fall-back day the repeated hour shows twice and counts twice.
        """
        wall = dt.datetime(day.year, day.month, day.day, tzinfo=UTC)
        before, change, after = self.offsets(day)
        if change is None:
            return [(wall + start - before, wall + end - before)]
        out = []
        s, e = wall + start - before, min(wall + end - before, change)
        if s < e:
            out.append((s, e))
        s, e = max(wall + start - after, change), wall + end - after
        if s < e:
            out.append((s, e))
        return out


@functools.lru_cache(maxsize=1024)
def _zone(name: str) -> _Zone:
    return _Zone(name)


# A school-hours rule as hashable data: (weekday numbers, start, end) with end "24:00" = 1 day.
_Rule = tuple[frozenset[int], dt.timedelta, dt.timedelta]


def _as_delta(t: dt.time, *, is_end: bool) -> dt.timedelta:
    if is_end and t == dt.time.max:  # config's "24:00": the end of the day, exclusive
        return _DAY
    return dt.timedelta(
        hours=t.hour, minutes=t.minute, seconds=t.second, microseconds=t.microsecond
    )


def _rules(hours: Iterable[SchoolHours]) -> tuple[_Rule, ...]:
    out = {_rule(h) for h in hours}
    return tuple(sorted((r for r in out if r[0]), key=lambda r: (sorted(r[0]), r[1], r[2])))


# SchoolHours holds a list, so it cannot key a cache; remember each object (kept alive here, so
# its id stays its own). A config's few objects are converted once, not once per request.
_rule_of: dict[int, tuple[SchoolHours, _Rule]] = {}


def _rule(h: SchoolHours) -> _Rule:
    hit = _rule_of.get(id(h))
    if hit is not None and hit[0] is h:
        return hit[1]
    rule = (
        frozenset(DAYS.index(d) for d in h.days),
        _as_delta(h.start, is_end=False),
        _as_delta(h.end, is_end=True),
    )
    if len(_rule_of) >= 4096:
        _rule_of.clear()
    _rule_of[id(h)] = (h, rule)
    return rule


class _Schedule:
    """The blocked UTC intervals of every tenant sharing one (timezone, hours, holidays).

    Shared between Calendar objects (see _schedule), so building a calendar per request reuses
    the intervals already worked out.
    """

    def __init__(self, zone: _Zone, rules: tuple[_Rule, ...], holidays: frozenset[dt.date]) -> None:
        self.zone = zone
        self.rules = rules
        self.holidays = holidays
        self._days: dict[int, tuple[tuple[dt.datetime, dt.datetime], ...]] = {}
        # interval end -> end of the contiguous stretch it starts (usually itself)
        self._stretch: dict[dt.datetime, dt.datetime] = {}

    def day_intervals(self, ordinal: int) -> tuple[tuple[dt.datetime, dt.datetime], ...]:
        """Merged blocked intervals of instants whose local date is this day."""
        hit = self._days.get(ordinal)
        if hit is not None:
            return hit
        day = dt.date.fromordinal(ordinal)
        pieces: list[tuple[dt.datetime, dt.datetime]] = []
        if day not in self.holidays:
            weekday = day.weekday()
            for days, start, end in self.rules:
                if weekday in days:
                    pieces.extend(self.zone.wall_interval(day, start, end))
        pieces.sort()
        merged: list[tuple[dt.datetime, dt.datetime]] = []
        for s, e in pieces:
            if merged and s <= merged[-1][1]:
                if e > merged[-1][1]:
                    merged[-1] = (merged[-1][0], e)
            else:
                merged.append((s, e))
        hit = tuple(merged)
        if len(self._days) >= _MAX_CACHED_DAYS:
            self._days.clear()
            self._stretch.clear()
        self._days[ordinal] = hit
        return hit

    def stretch_end(self, at: dt.datetime, ordinal: int) -> dt.datetime | None:
        """None when `at` (local date `ordinal`) is outside school hours, else when the contiguous
        blocked stretch around it ends (it may run over midnight into following days)."""
        intervals = self._days.get(ordinal)
        if intervals is None:
            intervals = self.day_intervals(ordinal)
        for s, e in intervals:
            if s <= at < e:
                return self._stretch.get(e) or self._extend(e)
        return None

    def _extend(self, end: dt.datetime) -> dt.datetime:
        """Follows intervals that start where the previous one ends (24:00 then 00:00), up to
        HORIZON and a day past `end`: a school that never closes is blocked "until" then."""
        chain, limit = [end], end + HORIZON + _DAY
        e = end
        while e < limit:
            known = self._stretch.get(e)
            if known is not None:
                e = known
                break
            for s2, e2 in self.day_intervals(self.zone.local_ordinal(e)):
                if s2 <= e < e2:
                    chain.append(e2)
                    e = e2
                    break
            else:
                break
        for link in chain:
            self._stretch[link] = e
        return e


@functools.lru_cache(maxsize=4096)
def _schedule(timezone: str, rules: tuple[_Rule, ...], holidays: frozenset[dt.date]) -> _Schedule:
    return _Schedule(_zone(timezone), rules, holidays)


# -- the calendar --------------------------------------------------------------------------------


class Calendar:
    """All schools and freezes. Immutable: with_freezes returns a new calendar."""

    def __init__(
        self,
        tenants: Sequence[TenantCalendar],
        freezes: Sequence[FreezeWindow] = (),
        *,
        standing_freezes: Sequence[FreezeWindow] = (),
    ) -> None:
        self.tenants = tuple(tenants)
        # Standing freezes come from the config file and survive with_freezes.
        self._standing = tuple(standing_freezes)
        self.freezes = tuple(
            sorted((*self._standing, *freezes), key=lambda f: (f.start, f.end, f.id or 0))
        )
        self._tenant_schedules = [
            _schedule(t.timezone, _rules(t.school_hours), t.holidays) for t in self.tenants
        ]
        by_zone: dict[str, dict[int, _Schedule]] = {}
        for sch in self._tenant_schedules:
            by_zone.setdefault(sch.zone.name, {})[id(sch)] = sch
        self._by_zone = [
            (next(iter(group.values())).zone, tuple(group.values())) for group in by_zone.values()
        ]

    def with_freezes(self, freezes: Sequence[FreezeWindow]) -> Calendar:
        """The same schools and config freezes, with `freezes` instead of the previous others."""
        new = Calendar.__new__(Calendar)
        new.tenants = self.tenants
        new._standing = self._standing
        new.freezes = tuple(
            sorted((*self._standing, *freezes), key=lambda f: (f.start, f.end, f.id or 0))
        )
        new._tenant_schedules = self._tenant_schedules
        new._by_zone = self._by_zone
        return new

    def blocks_at(self, at: dt.datetime) -> list[Block]:
        """What blocks deploys at `at`: school hours per tenant (config order), then freezes."""
        t = _utc(at)
        ends: dict[int, dt.datetime | None] = {}
        for zone, schedules in self._by_zone:
            ordinal = zone.local_ordinal(t)
            for sch in schedules:
                ends[id(sch)] = sch.stretch_end(t, ordinal)
        blocks = []
        for tenant, sch in zip(self.tenants, self._tenant_schedules, strict=True):
            until = ends[id(sch)]
            if until is not None:
                blocks.append(
                    Block("school_hours", until, tenant=tenant.id, timezone=tenant.timezone)
                )
        for f in self.freezes:
            if f.start > t:
                break
            if t < f.end:
                blocks.append(Block("freeze", f.end, id=f.id, reason=f.reason))
        return blocks

    def is_safe(self, at: dt.datetime) -> bool:
        return self._blocked_until(_utc(at)) is None

    def next_safe_window(self, at: dt.datetime) -> dt.datetime | None:
        """The earliest safe instant at or after `at`; None if none within HORIZON."""
        t = _utc(at)
        limit = t + HORIZON
        while t <= limit:
            until = self._blocked_until(t)
            if until is None:
                return t
            # Every block holds until its own end, so nothing before the latest end is safe.
            t = until
        return None

    def verdict(self, at: dt.datetime) -> Verdict:
        t = _utc(at)
        blocks = tuple(self.blocks_at(t))
        if not blocks:
            return Verdict(t, True, (), t, "safe: no school is in session and no freeze applies", self.safe_until(t))
        nxt = self.next_safe_window(t)
        return Verdict(t, False, blocks, nxt, _reason(t, blocks), None if nxt is None else self.safe_until(nxt))

    def safe_until(self, at: dt.datetime) -> Ending | None:
        """When the safe stretch that holds at `at` ends: the first school day to start or the first
        freeze to begin after it, within SAFE_UNTIL_HORIZON; None if nothing does (or `at` is blocked)."""
        t = _utc(at)
        if not self.is_safe(t):
            return None
        limit = t + SAFE_UNTIL_HORIZON
        best: Ending | None = None
        for tenant, sch in zip(self.tenants, self._tenant_schedules, strict=True):
            first = sch.zone.local_ordinal(t) - 1
            for ordinal in range(first, first + SAFE_UNTIL_HORIZON.days + 3):
                start = next((s for s, _ in sch.day_intervals(ordinal) if s > t), None)
                if start is not None:
                    if start <= limit and (best is None or start < best.at):
                        best = Ending(start, f"{tenant.id} starts school", tenant.timezone)
                    break
        for f in self.freezes:
            if f.start > t:
                if f.start <= limit and (best is None or f.start < best.at):
                    name = "freeze" if f.id is None else f"freeze #{f.id}"
                    best = Ending(f.start, f"{name} starts: {f.reason}")
                break
        return best

    def _blocked_until(self, t: dt.datetime) -> dt.datetime | None:
        latest = None
        for zone, schedules in self._by_zone:
            ordinal = zone.local_ordinal(t)
            for sch in schedules:
                end = sch.stretch_end(t, ordinal)
                if end is not None and (latest is None or end > latest):
                    latest = end
        for f in self.freezes:
            if f.start > t:
                break
            if t < f.end and (latest is None or f.end > latest):
                latest = f.end
        return latest


# -- how long the safe stretch lasts, and the week ahead ------------------------------------------


def ending_phrase(ending: Ending | None, tz: str, reference: dt.datetime) -> str:
    """'safe until 19:00 EDT, when sakura-intl starts school' in the zone `tz` (the viewer's on App
    Home and the dashboard, the tenant's own in `/window`); `ending` is Calendar.safe_until's answer
    for a safe instant."""
    if ending is None:
        return "safe, and nothing blocks deploys in the next 14 days"
    return f"safe until {format_local(ending.at, tz, reference=reference)}, when {ending.reason}"


@dataclass(frozen=True)
class Span:
    """One stretch on a tenant's timeline: 'school_hours', 'holiday', 'freeze' or 'safe'."""

    kind: str
    start: dt.datetime
    end: dt.datetime
    label: str = ""


def timeline(calendar: Calendar, start: dt.datetime, end: dt.datetime) -> dict[str, list[Span]]:
    """Per tenant (config order), what [start, end) looks like: school hours, holidays (whole
    local days without school that would have had some), freezes, and the safe stretches between
    (safe for everyone, as Calendar.is_safe means it: every tenant's row shows the same safe spans)."""
    s, e = _utc(start), _utc(end)
    out: dict[str, list[Span]] = {}
    for tenant, sch in zip(calendar.tenants, calendar._tenant_schedules, strict=True):
        spans: list[Span] = []
        first, last = sch.zone.local_ordinal(s), sch.zone.local_ordinal(e)
        for ordinal in range(first, last + 1):
            day = dt.date.fromordinal(ordinal)
            if day in sch.holidays and any(day.weekday() in r[0] for r in sch.rules):
                midnight = dt.datetime(day.year, day.month, day.day, tzinfo=sch.zone.tz)
                a, b = _utc(midnight), _utc(midnight + _DAY)
                if a < e and b > s:
                    spans.append(Span("holiday", max(a, s), min(b, e), f"{day:%a %b %d}: no school"))
                continue
            for a, b in sch.day_intervals(ordinal):
                if a < e and b > s:
                    spans.append(Span("school_hours", max(a, s), min(b, e), "school hours"))
        for f in calendar.freezes:
            if f.start < e and f.end > s:
                spans.append(Span("freeze", max(f.start, s), min(f.end, e), f.reason))
        out[tenant.id] = sorted(spans, key=lambda x: (x.start, x.kind))
    safe: list[Span] = []
    t = s
    while t < e:
        until = calendar._blocked_until(t)
        if until is not None:
            t = until
            continue
        ending = calendar.safe_until(t)
        stop = e if ending is None else min(ending.at, e)
        if stop <= t:
            break
        safe.append(Span("safe", t, stop, "safe to deploy"))
        t = stop
    for spans in out.values():
        spans.extend(safe)
        spans.sort(key=lambda x: (x.start, x.kind))
    if not out:
        out[""] = safe
    return out


def _reason(at: dt.datetime, blocks: Sequence[Block]) -> str:
    schools = [b for b in blocks if b.kind == "school_hours"]
    parts = []
    for b in schools[:_MAX_REASONS]:
        tz = b.timezone or "UTC"
        parts.append(f"school hours: {b.tenant} ({tz}) until {_local_clock(b.until, tz, at)}")
    if len(schools) > _MAX_REASONS:
        parts.append(f"and {len(schools) - _MAX_REASONS} more schools in session")
    for b in blocks:
        if b.kind == "freeze":
            name = "freeze" if b.id is None else f"freeze #{b.id}"
            parts.append(f"{name}: {b.reason} until {format_local(b.until, 'UTC', reference=at)}")
    return "; ".join(parts)


def _local_clock(at: dt.datetime, tz: str, reference: dt.datetime) -> str:
    """'15:00', or 'Mon 2027-03-22 15:00' when not on the reference's local day."""
    zone = _zone(tz).tz
    local = _utc(at).astimezone(zone)
    if local.date() == _utc(reference).astimezone(zone).date():
        return f"{local:%H:%M}"
    return f"{local:%a %Y-%m-%d %H:%M}"


def format_local(at: dt.datetime, tz: str, reference: dt.datetime | None = None) -> str:
    """'15:00 EST'; with a `reference` on another local day, 'Fri 2027-03-19 15:00 EDT'."""
    zone = _zone(tz).tz
    local = _utc(at).astimezone(zone)
    text = f"{local:%H:%M} {local.tzname()}"
    if reference is not None and _utc(reference).astimezone(zone).date() != local.date():
        text = f"{local:%a %Y-%m-%d} {text}"
    return text


# -- holidays --------------------------------------------------------------------------------------

_holiday_files: dict[tuple[str, int, int], frozenset[dt.date]] = {}


def load_holidays(paths: Iterable[Path]) -> frozenset[dt.date]:
    """Every date covered by an all-day event in these iCalendar files.

    All-day means a DATE-valued DTSTART; DTEND is exclusive (RFC 5545), so a winter break from
    DTSTART 20261221 to DTEND 20270102 covers 21 Dec to 1 Jan. RRULE/RDATE/EXDATE recurrences
    are expanded up to RECURRENCE_YEARS after the file's last DTSTART. Timed events (an early
    dismissal at 12:00) and cancelled events are ignored. A missing or broken file raises
    ValueError naming it. Parsed files are cached by path, size and modification time.
    """
    out: set[dt.date] = set()
    for path in paths:
        out |= _holidays_in(Path(path))
    return frozenset(out)


def _holidays_in(path: Path) -> frozenset[dt.date]:
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        hit = _holiday_files.get(key)
        if hit is not None:
            return hit
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read holiday calendar: {exc.strerror}") from None
    try:
        dates = _parse_holidays(raw)
    except Exception as exc:  # icalendar and recurring-ical-events raise many kinds
        raise ValueError(f"{path}: not a valid iCalendar file: {exc}") from None
    _holiday_files[key] = dates
    return dates


def _parse_holidays(raw: bytes) -> frozenset[dt.date]:
    cal = icalendar.Calendar.from_ical(raw)
    if cal.name != "VCALENDAR":
        raise ValueError(f"expected a VCALENDAR, found {cal.name}")
    starts = []
    for event in cal.walk("VEVENT"):
        if "DTSTART" not in event:
            raise ValueError(f"event {str(event.get('SUMMARY', '?'))!r} has no DTSTART")
        starts.append(event["DTSTART"].dt)  # raises on a broken date
    if not starts:
        return frozenset()
    last = max(d.date() if isinstance(d, dt.datetime) else d for d in starts)
    first = min(d.date() if isinstance(d, dt.datetime) else d for d in starts)
    stop = dt.date(min(last.year + RECURRENCE_YEARS, dt.MAXYEAR - 1), 1, 1)
    dates: set[dt.date] = set()
    for occ in recurring_ical_events.of(cal).between(first, stop):
        if occ.name != "VEVENT" or str(occ.get("STATUS", "")).upper() == "CANCELLED":
            continue
        start = occ["DTSTART"].dt
        if isinstance(start, dt.datetime):
            continue  # a timed event does not close the school
        end = occ["DTEND"].dt if "DTEND" in occ else None
        if isinstance(end, dt.datetime):
            end = end.date()
        if end is None or end <= start:
            end = start + _DAY
        day = start
        while day < end:
            dates.add(day)
            day += _DAY
    return frozenset(dates)


# -- configuration -----------------------------------------------------------------------------------


def calendar_from_config(cfg: Config, freezes: Sequence[FreezeWindow] = ()) -> Calendar:
    """The calendar the config describes, plus `freezes` (usually the stored ones).

    `[windows] holidays` apply to every tenant and a tenant's own add to them; a tenant's
    `school_hours` replaces `[windows]`'s (None: use `[windows]`'s, []: no school hours).
    Config `[[freezes]]` become standing freezes with no ID, kept by Calendar.with_freezes.
    """
    shared = load_holidays(cfg.path(p) for p in cfg.windows.holidays)
    by_files: dict[tuple[str, ...], frozenset[dt.date]] = {(): shared}
    tenants = []
    for t in cfg.tenants:
        files = tuple(t.holidays)
        if files not in by_files:
            by_files[files] = shared | load_holidays(cfg.path(p) for p in files)
        hours = cfg.windows.school_hours if t.school_hours is None else t.school_hours
        tenants.append(TenantCalendar(t.id, t.timezone, tuple(hours), by_files[files]))
    standing = [FreezeWindow(None, f.start, f.end, f.reason) for f in cfg.freezes]
    return Calendar(tenants, freezes, standing_freezes=standing)


# -- "/window at WHEN" -------------------------------------------------------------------------------

_WEEKDAYS = {
    **{d: i for i, d in enumerate(DAYS)},
    **{
        name: i
        for i, name in enumerate(
            ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
        )
    },
    "tues": 1,
    "weds": 2,
    "thur": 3,
    "thurs": 3,
}
# ASCII digits only: \d alone would also read "١٦:٠٠" (Arabic-Indic digits) as 16:00.
_WHEN = re.compile(
    r"(?:(?P<day>[a-z]+)\s+)?(?P<hour>[0-9]{1,2})(?::(?P<minute>[0-9]{2}))?\s*(?P<ampm>am|pm)?",
    re.ASCII,
)
# The years parse_when reads; outside them an instant is refused before any arithmetic can
# overflow (freezes.check_instant narrows it to 1970..2500 for decisions).
_YEARS = (1970, 2500)
WHEN_HELP = (
    "expected an ISO 8601 time (2027-03-16T09:30:00-04:00, or without an offset for your own "
    "timezone) or a local time like '16:00', '4pm', 'friday 16:00', 'mon 9:00', "
    "'tomorrow 07:30', 'today 13:15' or 'now'"
)


def parse_when(text: str, now: dt.datetime, tz: str, *, after: dt.datetime | None = None) -> dt.datetime:
    """The instant "/window at WHEN" means, in UTC.

    ISO 8601 with an offset is that instant; without one it is wall time in `tz`. '16:00',
    'friday 16:00', 'mon 9:00' and '4pm' mean the next such local time at or after `after`
    (default `now`: a freeze's END is the next such time after its START);
    'today' and 'tomorrow' pick the day from `now`; 'now' is `now`. A wall time that does not
    exist (inside a spring-forward gap) moves forward by the gap, 02:30 becoming 03:30; a time
    that happens twice on a fall-back night means the later one (both are pendulum's defaults).
    Digits are ASCII only, and years outside 1970..2500 are refused (ValueError, like any text
    that is not a time).
    """
    now_utc = _utc(now)
    zone = _zone(tz)
    s = " ".join(text.strip().lower().split())
    if not s:
        raise ValueError(WHEN_HELP)
    if s == "now":
        return now_utc
    if re.match(r"[0-9]{4}-", s):
        try:
            parsed = dt.datetime.fromisoformat(s.upper())
        except ValueError:
            raise ValueError(f"{WHEN_HELP}; got {text.strip()!r}") from None
        if not _YEARS[0] <= parsed.year <= _YEARS[1]:
            raise ValueError(f"expected a time between 1970 and 2500, got {text.strip()!r}")
        try:
            if parsed.tzinfo is not None:
                return _utc(parsed)
            return _utc(_local(parsed.date(), parsed.time(), zone))
        except OverflowError:
            raise ValueError(f"expected a time between 1970 and 2500, got {text.strip()!r}") from None
    m = _WHEN.fullmatch(s)
    if m is None or (m["minute"] is None and m["ampm"] is None):
        raise ValueError(f"{WHEN_HELP}; got {text.strip()!r}")
    hour, minute = int(m["hour"]), int(m["minute"] or 0)
    if m["ampm"]:
        if not 1 <= hour <= 12:
            raise ValueError(f"{WHEN_HELP}; got {text.strip()!r}")
        hour = hour % 12 + (12 if m["ampm"] == "pm" else 0)
    if hour > 23 or minute > 59:
        raise ValueError(f"{WHEN_HELP}; got {text.strip()!r}")
    clock = dt.time(hour, minute)
    today = now_utc.astimezone(zone.tz).date()
    day = m["day"]
    if day == "today":
        return _utc(_local(today, clock, zone))
    if day == "tomorrow":
        return _utc(_local(today + _DAY, clock, zone))
    if day is not None and day not in _WEEKDAYS:
        raise ValueError(f"{WHEN_HELP}; got {text.strip()!r}")
    since = now_utc if after is None else max(now_utc, _utc(after))
    first = since.astimezone(zone.tz).date()
    for ahead in range(8):
        date = first + dt.timedelta(days=ahead)
        if day is not None and date.weekday() != _WEEKDAYS[day]:
            continue
        candidate = _utc(_local(date, clock, zone))
        if candidate >= since:
            return candidate
    raise AssertionError("unreachable: a weekday recurs within 8 days")


def _local(date: dt.date, clock: dt.time, zone: _Zone) -> dt.datetime:
    return pendulum.datetime(
        date.year,
        date.month,
        date.day,
        clock.hour,
        clock.minute,
        clock.second,
        clock.microsecond,
        tz=zone.tz,
    )
