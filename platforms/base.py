"""The platform protocol: where a deploy lands, seen as two slots behind a router.

A driver is bound to one service in one environment. `blue` and `green` are the configured slot
names; the pipeline calls whichever slot serves now "blue" and the other "green", so the names
swap roles every deploy. Drivers report the real state (processes, router weights), never what
they remember.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

SLOTS = ("blue", "green")


def other_slot(slot: str) -> str:
    return "green" if slot == "blue" else "blue"


def checked_weights(weights: Mapping[str, int]) -> dict[str, int]:
    """Weights for both slots, each a whole number from 0 to 100; a slot left out gets 0.

    Raises PlatformError on an unknown slot or a bad number.
    """
    unknown = sorted(set(weights) - set(SLOTS))
    if unknown:
        raise PlatformError(f"unknown slot {unknown[0]!r} in weights: expected blue and green")
    out = {}
    for slot in SLOTS:
        w = weights.get(slot, 0)
        if isinstance(w, bool) or not isinstance(w, int) or not 0 <= w <= 100:
            raise PlatformError(f"weight of {slot} must be a whole number from 0 to 100, got {w!r}")
        out[slot] = w
    return out


def format_weights(weights: Mapping[str, int]) -> str:
    """{"blue": 0, "green": 100} -> "blue=0,green=100" (RECESS_WEIGHTS, thread lines)."""
    return ",".join(f"{s}={weights.get(s, 0)}" for s in SLOTS)


class PlatformError(Exception):
    """A platform operation failed; the message (and output, if any) is shown in the thread."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


@dataclass(frozen=True)
class SlotState:
    slot: str
    version: str | None = None  # what runs there, None when nothing does
    running: bool = False
    weight: int = 0  # router weight, 0-100 (share of traffic relative to the other slot)
    address: str | None = None


@dataclass(frozen=True)
class Traffic:
    slots: Mapping[str, SlotState] = field(default_factory=dict)
    router_up: bool = True

    def slot(self, name: str) -> SlotState:
        return self.slots.get(name) or SlotState(slot=name)

    @property
    def weights(self) -> dict[str, int]:
        return {name: self.slot(name).weight for name in SLOTS}

    @property
    def serving(self) -> str | None:
        """The slot that takes all traffic, or the one with the larger weight when split; None if none."""
        w = self.weights
        if not any(w.values()):
            return None
        return max(SLOTS, key=lambda s: (w[s], s == "blue"))

    @property
    def split(self) -> bool:
        w = self.weights
        return all(w[s] > 0 for s in SLOTS)

    @property
    def live_version(self) -> str | None:
        s = self.serving
        return self.slot(s).version if s else None


@dataclass(frozen=True)
class Health:
    ok: bool
    status: int | None = None  # HTTP status, None when nothing answered
    detail: str = ""
    exited: bool = False  # the slot's process is gone: no point polling again


@dataclass(frozen=True)
class Result:
    ok: bool
    output: str = ""
    exit_code: int | None = None


@dataclass(frozen=True)
class RouterStats:
    """Cumulative per-slot counters from the router (HAProxy's `show stat`)."""

    requests: int = 0
    responses_5xx: int = 0
    connection_errors: int = 0
    current_sessions: int = 0


class Platform(Protocol):
    """One service in one environment: two slots and a router in front of them."""

    service: str

    def status(self) -> Traffic: ...

    def start(self, slot: str, version: str) -> None:
        """Start `version` in `slot` (stopping whatever ran there). Raises PlatformError."""

    def stop(self, slot: str, version: str | None = None) -> None:
        """Stop the slot; with `version`, refuse (PlatformError) when another version runs there."""

    def health(self, slot: str) -> Health:
        """One probe of the slot's health endpoint."""

    def shift(self, weights: Mapping[str, int]) -> None:
        """Route traffic, e.g. {"blue": 0, "green": 100}, in one router operation if possible."""

    def migrate(self, slot: str, version: str, env: Mapping[str, str]) -> Result:
        """Run the version's migrations (extra environment: PGOPTIONS and friends)."""

    def base_url(self, slot: str) -> str:
        """Where the smoke test reaches the slot directly (RECESS_BASE_URL)."""

    def router_stats(self) -> dict[str, RouterStats]: ...

    def drain(self, slot: str, timeout: float) -> None:
        """Wait (up to `timeout` s) until the router holds no session on the slot."""

    # Optional, where the platform routes through a router recess runs (local, docker):
    #   probe_public() -> Health         one request for the health path at the public address
    #   watch_router() -> Revival | None revive a dead router with the weights it had
