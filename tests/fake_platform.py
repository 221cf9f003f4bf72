"""An in-memory platform that honours the Platform protocol and can be told to fail at any step."""

from __future__ import annotations

from collections.abc import Mapping

from platforms.base import SLOTS, Health, PlatformError, Result, RouterStats, SlotState, Traffic


class FakePlatform:
    def __init__(self, service: str = "web", *, live: str | None = None) -> None:
        self.service = service
        self.versions: dict[str, str | None] = {s: None for s in SLOTS}
        self.running: dict[str, bool] = {s: False for s in SLOTS}
        self.weights: dict[str, int] = {s: 0 for s in SLOTS}
        self.fail: dict[str, str] = {}  # operation -> message; "health" fails probes
        self.calls: list[tuple] = []
        self.stats: dict[str, RouterStats] = {}
        self.health_after_shift_fails = False
        self.router_up = True
        if live:
            self.versions["blue"], self.running["blue"], self.weights["blue"] = live, True, 100

    def _maybe_fail(self, op: str) -> None:
        if op in self.fail:
            raise PlatformError(self.fail[op], output=f"{op} output: {self.fail[op]}")

    def status(self) -> Traffic:
        self._maybe_fail("status")
        if not self.router_up:  # what a driver reports when its router does not answer
            return Traffic({s: SlotState(s, self.versions[s] if self.running[s] else None, self.running[s], 0) for s in SLOTS},
                           router_up=False)
        return Traffic({s: SlotState(s, self.versions[s] if self.running[s] else None, self.running[s], self.weights[s]) for s in SLOTS})

    def start(self, slot: str, version: str) -> None:
        self.calls.append(("start", slot, version))
        self._maybe_fail("start")
        self.versions[slot], self.running[slot] = version, True

    def stop(self, slot: str, version: str | None = None) -> None:
        self.calls.append(("stop", slot))
        if version is not None and self.running[slot] and self.versions[slot] != version:
            raise PlatformError(f"slot {slot} runs {self.versions[slot]}, not {version}")
        self.running[slot] = False
        self.versions[slot] = None

    def health(self, slot: str) -> Health:
        self.calls.append(("health", slot))
        if not self.running[slot]:
            return Health(False, None, "not running", exited=True)
        failing = "health" in self.fail or (self.health_after_shift_fails and self.weights[slot] == 100)
        if failing and self.fail.get("health_slot", slot) == slot:
            return Health(False, 503, "unhealthy")
        return Health(True, 200)

    def shift(self, weights: Mapping[str, int]) -> None:
        self.calls.append(("shift", dict(weights)))
        self._maybe_fail("shift")
        if not self.router_up:
            raise PlatformError("the router does not answer")
        for s, w in weights.items():
            self.weights[s] = w

    def migrate(self, slot: str, version: str, env: Mapping[str, str]) -> Result:
        self.calls.append(("migrate", slot, version, dict(env)))
        if "migrate" in self.fail:
            return Result(False, self.fail["migrate"], 1)
        return Result(True, "2 migrations applied", 0)

    def base_url(self, slot: str) -> str:
        return "http://127.0.0.1:9"

    def router_stats(self) -> dict[str, RouterStats]:
        return dict(self.stats)

    def drain(self, slot: str, timeout: float) -> None:
        self.calls.append(("drain", slot))

    @property
    def serving(self) -> str | None:
        return self.status().serving


class Ticker:
    """A monotonic clock that moves only when something sleeps on it: loops that wait (health,
    bake, retries) run at once in tests, and never spin on the real clock."""

    def __init__(self, wall: object | None = None) -> None:
        self.now = 1000.0
        self.wall = wall  # a tests.harness.FakeClock to move along, if given
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        seconds = max(0.0, float(seconds))
        self.slept.append(seconds)
        self.now += seconds
        if self.wall is not None:
            self.wall.advance(seconds=seconds)
