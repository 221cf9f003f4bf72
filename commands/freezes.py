"""Freezes and the current calendar: add, list and lift freezes (audited), and build the
calendar that every window decision reads (config tenants + config freezes + stored freezes)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from commands.config import Config
from commands.policy import Policy
from commands.windows import Calendar, FreezeWindow, calendar_from_config, parse_when
from storage import audit
from storage import freezes as freeze_rows
from storage.db import Store


class FreezeError(ValueError):
    """Bad freeze input or a refused freeze change; the message is shown to the user."""


@dataclass(frozen=True)
class FreezeInfo:
    id: int | None
    start: dt.datetime
    end: dt.datetime
    reason: str
    created_by: str | None


EARLIEST = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
LATEST = dt.datetime(2500, 1, 1, tzinfo=dt.UTC)


def check_instant(at: dt.datetime) -> dt.datetime:
    """An aware instant recess can reason about (1970 to 2500), as a plain UTC datetime."""
    if at.tzinfo is None:
        raise ValueError("expected a time with an offset")
    try:
        inside = EARLIEST <= at <= LATEST
    except OverflowError:
        inside = False
    if not inside:
        raise ValueError(f"expected a time between 1970 and 2500, got {at.isoformat()}")
    return dt.datetime.fromtimestamp(at.timestamp(), dt.UTC)


# Between START and END, optionally: `/window freeze tomorrow 18:00 to friday 07:00 Exams`.
# Slack sends a typed ">" as "&gt;".
SEPARATORS = ("to", "until", "->", "-&gt;", "\u2192")
_MOST_WORDS = 3  # the longest time form: "friday 4:00 pm"


def read_span(words: Sequence[str], now: dt.datetime, tz: str) -> tuple[dt.datetime, dt.datetime, str]:
    """START, END and REASON from the words after `/window freeze`.

    START and END take every form `/window at` reads (ISO 8601, "tomorrow 18:00", "friday 4pm",
    "now"), quoted or not, optionally separated by `to` or `->`: each is the longest run of up to
    three words that reads as a time, so `tomorrow 18:00 friday 07:00 Exams` splits as it reads.
    END's "18:00" or "friday 07:00" is the next such time after START; what is left is the
    reason. Raises FreezeError saying which part could not be read.
    """
    if not words:
        raise FreezeError("`/window freeze` needs START, END and a REASON")
    start, i = _read_time(words, 0, now, tz, "START")
    if i < len(words) and words[i].lower() in SEPARATORS:
        i += 1
    if i >= len(words):
        raise FreezeError("`/window freeze` needs START, END and a REASON")
    end, i = _read_time(words, i, now, tz, "END", after=start)
    reason = " ".join(words[i:]).strip()
    if not reason:
        raise FreezeError("`/window freeze` needs START, END and a REASON: add why, e.g. `State testing week`")
    return start, end, reason


def _read_time(words: Sequence[str], at: int, now: dt.datetime, tz: str, name: str,
               after: dt.datetime | None = None) -> tuple[dt.datetime, int]:
    """The instant the longest run of words from `at` means, and the index after it."""
    problem = ""
    for n in range(min(_MOST_WORDS, len(words) - at), 0, -1):
        try:
            return check_instant(parse_when(" ".join(words[at:at + n]), now, tz, after=after)), at + n
        except ValueError as exc:
            problem = str(exc)  # the last one tried is the single word: the most telling
    raise FreezeError(f"could not read {name}: {problem}")


def stored_freezes(store: Store, since: dt.datetime | None = None) -> list[FreezeWindow]:
    return [
        FreezeWindow(id=r["id"], start=r["start"], end=r["end"], reason=r["reason"])
        for r in freeze_rows.active(store, since=since)
    ]


def current_calendar(cfg: Config, store: Store) -> Calendar:
    return calendar_from_config(cfg, stored_freezes(store))


def list_freezes(cfg: Config, store: Store, now: dt.datetime) -> list[FreezeInfo]:
    """Current and future freezes, config ones (no ID) and stored ones, by start."""
    out = [
        FreezeInfo(None, f.start, f.end, f.reason, None) for f in cfg.freezes if f.end > now
    ]
    out += [
        FreezeInfo(r["id"], r["start"], r["end"], r["reason"], r["created_by"])
        for r in freeze_rows.active(store, since=now)
    ]
    return sorted(out, key=lambda f: (f.start, f.id or 0))


def add_freeze(
    store: Store,
    policy: Policy,
    *,
    actor: str,
    start: dt.datetime,
    end: dt.datetime,
    reason: str,
    now: dt.datetime,
) -> FreezeInfo:
    decision = policy.can_freeze(actor)
    if not decision:
        raise FreezeError(decision.reason)
    if end <= start:
        raise FreezeError("the freeze must end after it starts")
    if end <= now:
        raise FreezeError("that freeze would already be over: its end is in the past")
    reason = reason.strip()
    if not reason:
        raise FreezeError("a freeze needs a reason, e.g. 'State testing week'")
    if len(reason) > 200:
        raise FreezeError("keep the reason under 200 characters")
    with store.transaction():
        fid = freeze_rows.add(store, start=start, end=end, reason=reason, created_by=actor)
        audit.record(
            store,
            actor=actor,
            command="/window freeze",
            action="freeze.add",
            target=f"freeze:{fid}",
            after=_freeze_json(start, end, reason),
            at=now,
        )
    return FreezeInfo(fid, start, end, reason, actor)


def lift_freeze(store: Store, policy: Policy, *, actor: str, freeze_id: int, now: dt.datetime) -> FreezeInfo:
    decision = policy.can_freeze(actor)
    if not decision:
        raise FreezeError(decision.reason)
    row = freeze_rows.get(store, freeze_id)
    if row is None:
        raise FreezeError(f"there is no freeze #{freeze_id}; `/window freezes` lists them")
    if row["lifted_at"] is not None:
        raise FreezeError(f"freeze #{freeze_id} was already lifted by <@{row['lifted_by']}>")
    with store.transaction():
        if not freeze_rows.lift(store, freeze_id, lifted_by=actor):
            raise FreezeError(f"freeze #{freeze_id} was already lifted")
        audit.record(
            store,
            actor=actor,
            command="/window unfreeze",
            action="freeze.lift",
            target=f"freeze:{freeze_id}",
            before=_freeze_json(row["start"], row["end"], row["reason"]),
            after=None,
            at=now,
        )
    return FreezeInfo(freeze_id, row["start"], row["end"], row["reason"], row["created_by"])


def _freeze_json(start: dt.datetime, end: dt.datetime, reason: str) -> dict[str, Any]:
    return {"start": start.isoformat(), "end": end.isoformat(), "reason": reason}
