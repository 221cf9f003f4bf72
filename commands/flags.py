"""Feature flags: the model, the audited changes people make to it, and fast evaluation.

A flag is on or off. Evaluation for a context (targeting key, tenant, role) goes:

1. unknown key                          -> FLAG_NOT_FOUND
2. killed                               -> off, reason DISABLED
3. the most specific override           -> its value, reason TARGETING_MATCH
   (tenant+role, then tenant, then role);  an override with its own percentage -> SPLIT
4. the flag's percentage rollout        -> SPLIT
5. the flag's default                   -> STATIC

Percentages bucket like Unleash: `mmh3.hash(f"{group_id}:{unit}", 0, signed=False) % 100 + 1`,
in when `0 < pct and bucket <= pct`. `group_id` is the flag key; `unit` is the targeting key, or
the tenant when the flag rolls out by school. A unit's bucket never depends on the percentage, so
raising a percentage only adds units.

Evaluation never touches SQLite: each FlagBook keeps an immutable snapshot of every flag, compiled
into precomputed results, and swaps in a new one after every committed change. The snapshot's
digest (a hash of everything evaluation reads) is the flag-configuration part of OFREP's ETag.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import mmh3

from commands.config import FLAG_KEY, Config
from commands.policy import Policy
from storage import audit
from storage import flags as rows
from storage.db import Store, iso

ROLLOUT_BY = ("user", "tenant")
ACTIONS = ("create", "on", "off", "rollout", "kill", "unkill", "clear")
SCOPED_ACTIONS = ("on", "off", "rollout", "clear")
MAX_KEY_LENGTH = 100
MAX_DESCRIPTION = 200

# OpenFeature reasons and error codes, as OFREP spells them.
STATIC = "STATIC"
TARGETING_MATCH = "TARGETING_MATCH"
SPLIT = "SPLIT"
DISABLED = "DISABLED"
ERROR = "ERROR"
FLAG_NOT_FOUND = "FLAG_NOT_FOUND"
TARGETING_KEY_MISSING = "TARGETING_KEY_MISSING"


class FlagError(ValueError):
    """Bad flag input or a refused change; the message is shown to the user. Nothing changed."""


class Unchanged(FlagError):
    """The change asks for what is already so; nothing was written."""


def bucket(group_id: str, unit: str) -> int:
    """The unit's sticky bucket, 1..100, for a flag whose bucketing group is `group_id`."""
    return mmh3.hash(f"{group_id}:{unit}", 0, signed=False) % 100 + 1


def in_rollout(pct: int, bucket_number: int) -> bool:
    return 0 < pct and bucket_number <= pct


# -- the model ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """Who an override applies to: a tenant, a role, or both. Empty strings mean any."""

    tenant: str = ""
    role: str = ""

    @property
    def is_global(self) -> bool:
        return not self.tenant and not self.role

    def __str__(self) -> str:
        parts = [f"tenant={self.tenant}"] * bool(self.tenant) + [f"role={self.role}"] * bool(self.role)
        return " ".join(parts) or "everyone"


@dataclass(frozen=True)
class Override:
    tenant: str
    role: str
    value: bool
    rollout: int | None

    @property
    def scope(self) -> Scope:
        return Scope(self.tenant, self.role)


@dataclass(frozen=True)
class Flag:
    key: str
    description: str
    owner: str
    default: bool
    rollout: int | None
    rollout_by: str
    group_id: str
    killed: bool
    created_at: str
    updated_at: str
    overrides: tuple[Override, ...] = ()

    def config(self) -> dict[str, Any]:
        """Everything evaluation reads, as plain data (what the ETag digest covers)."""
        return {
            "key": self.key,
            "default": self.default,
            "rollout": self.rollout,
            "rollout_by": self.rollout_by,
            "group_id": self.group_id,
            "killed": self.killed,
            "overrides": [[o.tenant, o.role, o.value, o.rollout] for o in self.overrides],
        }


@dataclass(frozen=True)
class Change:
    """One change someone asked for, as plain data (stored as JSON for scheduled changes)."""

    action: str
    key: str
    scope: Scope = Scope()
    pct: int | None = None
    by: str | None = None
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "key": self.key,
            "tenant": self.scope.tenant,
            "role": self.scope.role,
            "pct": self.pct,
            "by": self.by,
            "description": self.description,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Change:
        return cls(
            action=data["action"],
            key=data["key"],
            scope=Scope(data.get("tenant") or "", data.get("role") or ""),
            pct=data.get("pct"),
            by=data.get("by"),
            description=data.get("description") or "",
        )

    def summary(self) -> str:
        """'on `portfolio_enabled` for tenant=lincoln-high', for messages."""
        what = {"rollout": f"roll out `{self.key}` to {self.pct}%", "create": f"create `{self.key}`"}.get(
            self.action, f"{self.action} `{self.key}`"
        )
        if self.by:
            what += f" by {self.by}"
        return what if self.scope.is_global else f"{what} for {self.scope}"


@dataclass(frozen=True)
class Applied:
    change: Change
    actor: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    flag: Flag
    note: str | None = None
    scheduled_id: int | None = None


@dataclass(frozen=True)
class Scheduled:
    id: int
    change: Change
    requested_by: str
    note: str | None
    run_at: dt.datetime
    command: str = ""


@dataclass(frozen=True)
class ScheduledOutcome:
    """What running a scheduled change did: 'applied', 'rescheduled', 'unchanged', 'failed', or
    'gone' (cancelled or already run)."""

    kind: str
    scheduled: Scheduled | None = None
    applied: Applied | None = None
    run_at: dt.datetime | None = None
    reason: str = ""


# -- evaluation ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Evaluation:
    """One flag's answer for one context. Errors carry `error_code`, and no value."""

    key: str
    value: bool | None
    reason: str
    variant: str | None
    metadata: dict[str, Any] = field(default_factory=dict)
    error_code: str | None = None
    error_details: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_code is None


def not_found(key: str) -> Evaluation:
    return Evaluation(key, None, ERROR, None, {}, FLAG_NOT_FOUND, f"flag '{key}' was not found")


class _Rule:
    """A precompiled decision: a fixed result, or a percentage split between two results."""

    __slots__ = ("fixed", "pct", "prefix", "on", "off")

    def __init__(self, fixed: Evaluation | None, pct: int = 0, prefix: str = "", on: Evaluation | None = None, off: Evaluation | None = None) -> None:
        self.fixed = fixed
        self.pct = pct
        self.prefix = prefix
        self.on = on
        self.off = off


class _Compiled:
    __slots__ = ("key", "disabled", "overrides", "rule", "by_tenant", "missing_unit")

    def __init__(self, flag: Flag) -> None:
        self.key = flag.key
        self.by_tenant = flag.rollout_by == "tenant"
        self.disabled = Evaluation(flag.key, False, DISABLED, "off", {}) if flag.killed else None
        unit = "'tenant'" if self.by_tenant else "'targetingKey'"
        self.missing_unit = Evaluation(
            flag.key, None, ERROR, None, {}, TARGETING_KEY_MISSING,
            f"flag '{flag.key}' is rolled out by percentage and needs {unit} in the context",
        )
        self.overrides = {(o.tenant, o.role): self._override_rule(flag, o) for o in flag.overrides}
        if flag.rollout is not None:
            self.rule = self._split(flag, flag.rollout, {})
        else:
            self.rule = _Rule(Evaluation(flag.key, flag.default, STATIC, _variant(flag.default), {}))

    def _override_rule(self, flag: Flag, o: Override) -> _Rule:
        metadata = {"scope": str(o.scope)}
        if o.rollout is not None:
            return self._split(flag, o.rollout, metadata)
        return _Rule(Evaluation(flag.key, o.value, TARGETING_MATCH, _variant(o.value), metadata))

    @staticmethod
    def _split(flag: Flag, pct: int, metadata: dict[str, Any]) -> _Rule:
        metadata = {**metadata, "rollout": pct, "rolloutBy": flag.rollout_by}
        on = Evaluation(flag.key, True, SPLIT, "on", metadata)
        off = Evaluation(flag.key, False, SPLIT, "off", metadata)
        if pct <= 0:
            return _Rule(off)
        if pct >= 100:
            return _Rule(on)
        return _Rule(None, pct, f"{flag.group_id}:", on, off)

    def evaluate(self, targeting_key: str | None, tenant: str | None, role: str | None) -> Evaluation:
        if self.disabled is not None:
            return self.disabled
        rule = None
        overrides = self.overrides
        if overrides:
            if tenant:
                if role:
                    rule = overrides.get((tenant, role))
                if rule is None:
                    rule = overrides.get((tenant, ""))
            if rule is None and role:
                rule = overrides.get(("", role))
        if rule is None:
            rule = self.rule
        if rule.fixed is not None:
            return rule.fixed
        unit = tenant if self.by_tenant else targeting_key
        if not unit:
            return self.missing_unit
        if mmh3.hash(rule.prefix + unit, 0, signed=False) % 100 + 1 <= rule.pct:
            return rule.on
        return rule.off


def _variant(value: bool) -> str:
    return "on" if value else "off"


@dataclass(frozen=True)
class Snapshot:
    """Every flag at one moment, compiled. Immutable: readers never lock."""

    version: int
    digest: str
    flags: dict[str, Flag]
    compiled: dict[str, _Compiled] = field(repr=False)

    def evaluate(self, key: str, targeting_key: str | None = None, tenant: str | None = None, role: str | None = None) -> Evaluation:
        compiled = self.compiled.get(key)
        if compiled is None:
            return not_found(key)
        return compiled.evaluate(targeting_key, tenant, role)

    def evaluate_all(self, targeting_key: str | None = None, tenant: str | None = None, role: str | None = None) -> list[Evaluation]:
        return [c.evaluate(targeting_key, tenant, role) for c in self.compiled.values()]


def build_snapshot(flags: Iterable[Flag], version: int = 0) -> Snapshot:
    """Compiles flags into a Snapshot (FlagBook does this after every change; tests and
    benchmarks may call it directly)."""
    ordered = sorted(flags, key=lambda f: f.key)
    digest = hashlib.sha256(
        json.dumps([f.config() for f in ordered], sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    return Snapshot(
        version=version,
        digest=digest,
        flags={f.key: f for f in ordered},
        compiled={f.key: _Compiled(f) for f in ordered},
    )


# -- the book: reads, changes, scheduled changes ------------------------------------------------


class FlagBook:
    """The flags of one store. Use `FlagBook.for_store(store)` so every part of a running recess
    (Slack listener, OFREP, scheduler) shares one snapshot."""

    _books: weakref.WeakKeyDictionary[Store, FlagBook] = weakref.WeakKeyDictionary()
    _books_lock = threading.Lock()

    @classmethod
    def for_store(cls, store: Store) -> FlagBook:
        with cls._books_lock:
            book = cls._books.get(store)
            if book is None:
                book = cls._books[store] = cls(store)
            return book

    def __init__(self, store: Store) -> None:
        self.store = store
        # Serialises writers and rebuilds: the last rebuild always starts after the last commit.
        self._lock = threading.RLock()
        self._version = 0
        self._snapshot = self._build()

    # -- reads ----------------------------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def flags(self) -> list[Flag]:
        return list(self._snapshot.flags.values())

    def get(self, key: str) -> Flag | None:
        return self._snapshot.flags.get(key)

    def evaluate(self, key: str, targeting_key: str | None = None, tenant: str | None = None, role: str | None = None) -> Evaluation:
        return self._snapshot.evaluate(key, targeting_key, tenant, role)

    def last_changes(self) -> dict[str, dict[str, Any]]:
        return rows.last_changes(self.store)

    def history(self, key: str, limit: int = 20) -> list[dict[str, Any]]:
        return audit.entries(self.store, target=f"flag:{key}", limit=limit)

    def scheduled(self, key: str | None = None) -> list[Scheduled]:
        return [_scheduled(r) for r in rows.scheduled_changes(self.store, key)]

    def refresh(self) -> Snapshot:
        """Rebuilds the snapshot from the store (after every committed change)."""
        with self._lock:
            self._snapshot = self._build()
            return self._snapshot

    def _build(self) -> Snapshot:
        overrides: dict[str, list[Override]] = {}
        for r in rows.all_overrides(self.store):
            overrides.setdefault(r["flag_key"], []).append(
                Override(r["tenant"], r["role"], bool(r["value"]), r["rollout"])
            )
        flags = [_flag(r, overrides.get(r["key"], ())) for r in rows.all_flags(self.store)]
        self._version += 1
        return build_snapshot(flags, self._version)

    # -- changes --------------------------------------------------------------------------------

    def seed(self, defaults: dict[str, bool], *, now: dt.datetime) -> list[str]:
        """Creates the config's [flags.defaults] that do not exist yet (owner 'config').

        A flag that exists is left alone: after the first start, /flag is the source of truth.
        """
        added = []
        with self._lock:
            with self.store.transaction():
                for key, value in defaults.items():
                    inserted = rows.insert_flag(
                        self.store, key=key, description="from [flags.defaults] in the config",
                        owner="config", default=value, at=now, only_if_absent=True,
                    )
                    if inserted:
                        added.append(key)
                        audit.record(
                            self.store, actor="config", command="[flags.defaults]", action="flag.seed",
                            target=f"flag:{key}", after={"default": value, "rollout": None}, at=now,
                        )
            if added:
                self.refresh()
        return added

    def apply(
        self,
        change: Change,
        *,
        actor: str,
        policy: Policy,
        cfg: Config,
        command: str,
        now: dt.datetime,
        note: str | None = None,
    ) -> Applied:
        """Applies a change now: checked, written, audited in one transaction; raises FlagError."""
        decision = policy.can_change_flags(actor)
        if not decision:
            raise FlagError(decision.reason)
        return self._apply(change, actor=actor, cfg=cfg, command=command, now=now, note=note)

    def _apply(
        self,
        change: Change,
        *,
        actor: str,
        cfg: Config,
        command: str,
        now: dt.datetime,
        note: str | None,
        scheduled_id: int | None = None,
    ) -> Applied:
        check_change(change, cfg)
        with self._lock:
            with self.store.transaction():
                before, after = self._write(change, actor=actor, now=now)
                if scheduled_id is not None and not rows.finish_change(self.store, scheduled_id, status="applied", at=now):
                    raise FlagError(f"scheduled change #{scheduled_id} already ran or was cancelled")
                audit.record(
                    self.store, actor=actor, command=command, action=f"flag.{change.action}",
                    target=f"flag:{change.key}", before=before, after=after, note=note, at=now,
                )
            snapshot = self.refresh()
        return Applied(change, actor, before, after, snapshot.flags[change.key], note, scheduled_id)

    def _write(self, change: Change, *, actor: str, now: dt.datetime) -> tuple[dict | None, dict | None]:
        """Writes one change inside the caller's transaction; returns (before, after)."""
        store, key, scope = self.store, change.key, change.scope
        row = rows.get_flag(store, key)
        if change.action == "create":
            if row is not None:
                raise FlagError(f"flag `{key}` already exists; `/flag show {key}` shows it")
            rows.insert_flag(store, key=key, description=change.description, owner=actor, default=False, at=now)
            return None, {"description": change.description, "default": False, "rollout": None}
        if row is None:
            raise FlagError(f"there is no flag `{key}`; `/flag list` shows the flags, `/flag create` adds one")

        if change.action in ("kill", "unkill"):
            killed = change.action == "kill"
            before, after = {"killed": bool(row["killed"])}, {"killed": killed}
            if not killed and not row["killed"]:
                # Not "already live": a flag at 10 % is not live for everyone. Say what is so.
                state = describe_state(_global_state(bool(row["default_value"]), row["rollout"], row["rollout_by"]))
                raise Unchanged(f"`{key}` is not killed, so there is nothing to unkill (it stays {state}"
                                f"{' for everyone' if row['rollout'] is None else ''}); nothing changed")
            _unchanged_if(before == after, f"`{key}` is already killed")
            rows.update_flag(store, key, killed=int(killed), at=now)
            return before, after

        by = change.by or row["rollout_by"]
        if scope.is_global:
            before = _global_state(bool(row["default_value"]), row["rollout"], row["rollout_by"])
            if change.action == "rollout":
                after = _global_state(bool(row["default_value"]), change.pct, by)
                fields = {"rollout": change.pct, "rollout_by": by}
            else:
                value = change.action == "on"
                after = _global_state(value, None, row["rollout_by"])
                fields = {"default_value": int(value), "rollout": None}
            _unchanged_if(before == after, f"`{key}` is already {describe_state(after)} for everyone")
            rows.update_flag(store, key, at=now, **fields)
            return before, after

        existing = rows.get_override(store, key, scope.tenant, scope.role)
        before = None if existing is None else _scoped_state(scope, bool(existing["value"]), existing["rollout"], row["rollout_by"])
        if change.action == "clear":
            if existing is None:
                raise FlagError(f"`{key}` has no override for {scope}; `/flag show {key}` lists its overrides")
            rows.delete_override(store, key, tenant=scope.tenant, role=scope.role)
            return before, None
        value = change.action != "off"
        pct = change.pct if change.action == "rollout" else None
        after = _scoped_state(scope, value, pct, by)
        _unchanged_if(before == after, f"`{key}` is already {describe_state(after)} for {scope}")
        rows.upsert_override(store, key, tenant=scope.tenant, role=scope.role, value=value, rollout=pct, at=now)
        if by != row["rollout_by"]:
            rows.update_flag(store, key, rollout_by=by, at=now)
        return before, after

    # -- scheduled changes ----------------------------------------------------------------------

    def schedule(
        self,
        change: Change,
        *,
        actor: str,
        policy: Policy,
        cfg: Config,
        command: str,
        now: dt.datetime,
        run_at: dt.datetime,
        note: str | None = None,
    ) -> Scheduled:
        """Stores a change to apply at `run_at` (the next safe window); audited as flag.schedule."""
        decision = policy.can_change_flags(actor)
        if not decision:
            raise FlagError(decision.reason)
        if change.action == "create":
            raise FlagError("`create` takes effect at once (new flags start off); drop `--at-window`")
        check_change(change, cfg)
        if self.get(change.key) is None:
            raise FlagError(f"there is no flag `{change.key}`; `/flag list` shows the flags")
        with self._lock, self.store.transaction():
            change_id = rows.add_change(
                self.store, key=change.key, change={**change.to_json(), "command": command},
                requested_by=actor, note=note, run_at=run_at, created_at=now,
            )
            audit.record(
                self.store, actor=actor, command=command, action="flag.schedule", target=f"flag:{change.key}",
                after={"change_id": change_id, "change": change.summary(), "run_at": iso(run_at)}, note=note, at=now,
            )
        return Scheduled(change_id, change, actor, note, run_at, command)

    def run_scheduled(
        self,
        change_id: int,
        *,
        cfg: Config,
        now: dt.datetime,
        next_safe_window: Callable[[dt.datetime], dt.datetime | None],
    ) -> ScheduledOutcome:
        """Runs a scheduled change whose time came: applies it if the window is still open, else
        moves it to the next safe window. Running it twice applies it once."""
        row = rows.get_change(self.store, change_id)
        if row is None or row["status"] != "scheduled":
            return ScheduledOutcome("gone")
        scheduled = _scheduled(row)
        safe_at = next_safe_window(now)
        if safe_at is None or safe_at > now:
            if safe_at is None:
                return self._fail(scheduled, now, "no safe window within the calendar's horizon")
            rows.reschedule_change(self.store, change_id, run_at=safe_at)
            return ScheduledOutcome("rescheduled", dataclasses.replace(scheduled, run_at=safe_at), run_at=safe_at)
        try:
            applied = self._apply(
                scheduled.change, actor=scheduled.requested_by, cfg=cfg, command=scheduled.command,
                now=now, note=scheduled.note, scheduled_id=change_id,
            )
        except Unchanged as exc:
            if not rows.finish_change(self.store, change_id, status="unchanged", at=now):
                return ScheduledOutcome("gone", scheduled)
            return ScheduledOutcome("unchanged", scheduled, reason=str(exc))
        except FlagError as exc:
            return self._fail(scheduled, now, str(exc))
        return ScheduledOutcome("applied", scheduled, applied=applied)

    def _fail(self, scheduled: Scheduled, now: dt.datetime, reason: str) -> ScheduledOutcome:
        with self.store.transaction():
            if not rows.finish_change(self.store, scheduled.id, status="failed", at=now):
                return ScheduledOutcome("gone", scheduled)  # another run finished it first
            audit.record(
                self.store, actor="recess", command=scheduled.command, action="flag.schedule_failed",
                target=f"flag:{scheduled.change.key}", after={"change_id": scheduled.id, "reason": reason}, at=now,
            )
        return ScheduledOutcome("failed", scheduled, reason=reason)

    def cancel(self, change_id: int, *, actor: str, policy: Policy, command: str, now: dt.datetime, note: str | None = None) -> Scheduled:
        decision = policy.can_change_flags(actor)
        if not decision:
            raise FlagError(decision.reason)
        row = rows.get_change(self.store, change_id)
        if row is None:
            raise FlagError(f"there is no scheduled flag change #{change_id}")
        if row["status"] != "scheduled":
            raise FlagError(f"flag change #{change_id} is {row['status']}, so it cannot be cancelled")
        scheduled = _scheduled(row)
        with self.store.transaction():
            if not rows.finish_change(self.store, change_id, status="cancelled", at=now):
                raise FlagError(f"flag change #{change_id} just ran or was cancelled")
            audit.record(
                self.store, actor=actor, command=command, action="flag.cancel", target=f"flag:{scheduled.change.key}",
                before={"change_id": change_id, "change": scheduled.change.summary(), "run_at": iso(scheduled.run_at)},
                note=note, at=now,
            )
        return scheduled


# -- checks and helpers -------------------------------------------------------------------------


def check_key(key: str) -> None:
    if not key or len(key) > MAX_KEY_LENGTH or not FLAG_KEY.fullmatch(key):
        raise FlagError(
            f"`{key[:MAX_KEY_LENGTH]}` is not a valid flag key: use lowercase letters, digits, '.', '_' and '-' "
            f"(at most {MAX_KEY_LENGTH})"
        )


def check_change(change: Change, cfg: Config) -> None:
    """Everything about a change that can be checked without the store; raises FlagError."""
    if change.action not in ACTIONS:
        raise FlagError(f"unknown flag action `{change.action}`")
    check_key(change.key)
    scope = change.scope
    if not scope.is_global and change.action not in SCOPED_ACTIONS:
        raise FlagError(f"`{change.action}` applies to the whole flag and takes no tenant= or role=")
    if change.action == "clear" and scope.is_global:
        raise FlagError("`clear` removes one override: give its tenant= and/or role=")
    tenants = [t.id for t in cfg.tenants]
    if scope.tenant and scope.tenant not in tenants:
        known = ", ".join(tenants[:15]) or "none configured"
        raise FlagError(f"unknown tenant `{scope.tenant}` (known: {known})")
    if scope.role and scope.role not in cfg.flags.roles:
        raise FlagError(f"unknown role `{scope.role}` (known: {', '.join(cfg.flags.roles)})")
    if change.action == "rollout":
        if not isinstance(change.pct, int) or isinstance(change.pct, bool) or not 0 <= change.pct <= 100:
            raise FlagError(f"the percentage must be a whole number from 0 to 100, got {change.pct!r}")
    elif change.pct is not None:
        raise FlagError(f"only `rollout` takes a percentage, not `{change.action}`")
    if change.by is not None:
        if change.action != "rollout":
            raise FlagError("`by=` belongs to `rollout`")
        if change.by not in ROLLOUT_BY:
            raise FlagError(f"`by=` is `user` or `tenant`, got `{change.by}`")
    if change.action == "create":
        description = change.description.strip()
        if not description:
            raise FlagError('a new flag needs a description: `/flag create KEY "what it turns on"`')
        if len(description) > MAX_DESCRIPTION or "\n" in description:
            raise FlagError(f"keep the description to one line of at most {MAX_DESCRIPTION} characters")


def _unchanged_if(same: bool, message: str) -> None:
    if same:
        raise Unchanged(f"{message}; nothing changed")


def _global_state(default: bool, rollout: int | None, by: str) -> dict[str, Any]:
    state: dict[str, Any] = {"default": default, "rollout": rollout}
    if rollout is not None:
        state["by"] = by
    return state


def _scoped_state(scope: Scope, value: bool, rollout: int | None, by: str) -> dict[str, Any]:
    state: dict[str, Any] = {"scope": str(scope), "value": value, "rollout": rollout}
    if rollout is not None:
        state["by"] = by
    return state


def describe_state(state: dict[str, Any] | None) -> str:
    """'on', 'off', '25% of users', 'killed', 'live', or 'not set', for audit before/after values."""
    if state is None:
        return "not set"
    if "killed" in state:
        return "killed" if state["killed"] else "live"
    if state.get("rollout") is not None:
        unit = "schools" if state.get("by") == "tenant" else "users"
        return f"{state['rollout']}% of {unit}"
    if "value" in state:
        return "on" if state["value"] else "off"
    if "default" in state:
        return "on" if state["default"] else "off"
    return "changed"


def _flag(r: dict[str, Any], overrides: Iterable[Override]) -> Flag:
    return Flag(
        key=r["key"],
        description=r["description"],
        owner=r["owner"],
        default=bool(r["default_value"]),
        rollout=r["rollout"],
        rollout_by=r["rollout_by"] if r["rollout_by"] in ROLLOUT_BY else "user",
        group_id=r["group_id"] or r["key"],
        killed=bool(r["killed"]),
        created_at=r["created_at"],
        updated_at=r["updated_at"],
        overrides=tuple(overrides),
    )


def _scheduled(r: dict[str, Any]) -> Scheduled:
    return Scheduled(
        id=r["id"],
        change=Change.from_json(r["change"]),
        requested_by=r["requested_by"],
        note=r["note"],
        run_at=r["run_at"],
        command=r["change"].get("command") or "",
    )
