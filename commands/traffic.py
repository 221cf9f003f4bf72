"""The one door for traffic: every change of a service's routing and slots goes through here.

The pipeline, rollback, retirement, recovery and the router watchdog all ask the door; nothing
else calls a platform's `shift`, `start` or `stop`. The door holds one lock per service and
environment across each operation, reads the router again before it acts, and never guesses:

- it never sets every weight to 0, and never moves traffic onto a slot that is not running the
  expected version and healthy (so the serving slot is never lowered without a healthy
  replacement);
- it refuses to act on a router that does not answer (RouterDown), or on weights split outside a
  canary of the caller's own;
- it never stops a slot that carries traffic, that runs another version than the caller expects,
  or that another running deploy or rollback uses;
- when it cannot bring traffic to a known good state it leaves the router as it is and raises
  NeedsAttention, saying what it saw, so a person decides.

    door = TrafficDoor(platform_for, in_use=...)
    flip = door.route("web", "production", to="green", version="v2", owner=12)
    door.stop("web", "production", "blue", "v1", owner=12)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from platforms.base import Health, Platform, PlatformError, Traffic, format_weights, other_slot

log = logging.getLogger("recess.traffic")


class TrafficRefused(PlatformError):
    """The door would not act; the message says what it saw. Nothing was changed.

    `kind` names the reason: router_down, serving, in_use, other_version, not_running, unhealthy.
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class NeedsAttention(PlatformError):
    """Traffic could not be brought to a known good state; the router was left as it was."""


@dataclass(frozen=True)
class Flip:
    weights: dict[str, int]
    router_seconds: float  # the router's own exchange where the driver measures it
    call_seconds: float  # the whole platform call
    service: str = ""


@dataclass(frozen=True)
class Move:
    """One service's part of a flip together (TrafficDoor.route_together)."""

    service: str
    env: str
    to: str
    version: str
    pct: int = 100
    owner: int | None = None


@dataclass(frozen=True)
class Together:
    """What a flip together did: each flip in order, and the spread from the first flip's
    command sent to the last flip's answer received (how long the services were mixed)."""

    flips: list[Flip]
    spread_seconds: float
    sent_seconds: float = 0.0  # from the first command sent to the last one sent (the bot's share)


@dataclass(frozen=True)
class Restored:
    """What `back_to` did, in words for the thread."""

    text: str
    serving: str | None  # the slot that serves afterwards (None: nothing serves, first deploy)


class _CallFlip:
    """A flip for a platform that cannot prepare one (command, railway): its whole shift call."""

    def __init__(self, platform: Platform, weights: dict[str, int]) -> None:
        self.platform, self.weights, self.seconds = platform, weights, 0.0

    def send(self) -> None:
        started = time.perf_counter()
        self.platform.shift(self.weights)
        self.seconds = time.perf_counter() - started

    def answer(self) -> float:
        return self.seconds


class TrafficDoor:
    """Owns routing and slots of every service in every environment, one lock per pair."""

    def __init__(
        self,
        platform_for: Callable[[str, str], Platform],
        *,
        in_use: Callable[[str, str, int | None], list[dict]] = lambda service, env, owner: [],
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        probes: int = 3,
        probe_span: float = 5.0,
    ) -> None:
        self.platform_for = platform_for
        self.in_use = in_use
        self.sleep = sleep
        self.monotonic = monotonic
        self.probes = probes
        self.probe_span = probe_span
        self._locks: dict[tuple[str, str], threading.RLock] = {}
        self._guard = threading.Lock()
        # Told the seconds of every router flip (GET /metrics' recess_router_flip_seconds).
        self.flip_observers: list[Callable[[float], None]] = []

    @contextmanager
    def holding(self, service: str, env: str) -> Iterator[Platform]:
        """The service's lock, held across one whole change."""
        with self._guard:
            lock = self._locks.setdefault((service, env), threading.RLock())
        with lock:
            yield self.platform_for(service, env)

    # -- reading -------------------------------------------------------------------------------

    def read(self, service: str, env: str) -> Traffic:
        """The platform's real state; RouterDown-like TrafficRefused when the router is down."""
        traffic = self.platform_for(service, env).status()
        if not traffic.router_up:
            raise TrafficRefused(f"the router of {service} in {env} does not answer", "router_down")
        return traffic

    def probe(self, platform: Platform, slot: str, *, probes: int = 1) -> Health:
        """Up to `probes` health probes spread over `probe_span` seconds; the first 200 wins.
        More than one probe is how recovery tells a slow slot from a dead one."""
        pause = self.probe_span / max(1, probes - 1) if probes > 1 else 0.0
        last = Health(ok=False, detail="not probed")
        for i in range(probes):
            last = platform.health(slot)
            if last.ok or last.exited:
                return last
            if i < probes - 1:
                self.sleep(pause)
        return last

    def probe_public(self, service: str, env: str, *, probes: int = 1) -> Health | None:
        """The public address through the router, where the platform has one (None otherwise)."""
        platform = self.platform_for(service, env)
        check = getattr(platform, "probe_public", None)
        if check is None:
            return None
        last = check()
        for _ in range(probes - 1):
            if last.ok:
                break
            self.sleep(self.probe_span / max(1, probes - 1))
            last = check()
        return last

    # -- moving traffic ------------------------------------------------------------------------

    def _checked_route(self, platform: Platform, service: str, env: str, to: str, version: str, pct: int,
                       probes: int) -> dict[str, int]:
        """The weights that send `pct`% to `to`, once the router says `to` runs `version` and it
        answers healthy; TrafficRefused otherwise. Called under the service's lock."""
        traffic = self.read(service, env)
        state = traffic.slot(to)
        if not state.running or state.version != version:
            what = f"runs {state.version}" if state.running else "runs nothing"
            raise TrafficRefused(f"slot {to} {what}, not {version}: traffic stays where it is "
                                 f"({format_weights(traffic.weights)})", "not_running")
        health = self.probe(platform, to, probes=probes)
        if not health.ok:
            raise TrafficRefused(f"slot {to} ({version}) is not healthy ({health.status or health.detail}): "
                                 f"traffic stays where it is ({format_weights(traffic.weights)})", "unhealthy")
        other = other_slot(to)
        if pct < 100 and not traffic.slot(other).running:
            raise TrafficRefused(f"a {pct}% canary needs slot {other} serving, and nothing runs there", "not_running")
        return {to: pct, other: 100 - pct}

    def route_together(self, moves: list[Move], *, probes: int = 1,
                       between: Callable[[int], None] = lambda i: None) -> Together:
        """Flips several services at once (a release): every service's lock taken, every router
        read, every target checked and probed, and every flip prepared (admin connection open,
        command written) before the first one fires; then the flips fire back to back in the given
        order. A refusal before the first flip changes nothing. `between(i)` runs after flip i."""
        with ExitStack() as stack:
            platforms = {key: stack.enter_context(self.holding(*key))
                         for key in sorted({(m.service, m.env) for m in moves})}  # one lock order for all
            ready = []
            for m in moves:
                platform = platforms[(m.service, m.env)]
                try:
                    weights = self._checked_route(platform, m.service, m.env, m.to, m.version, m.pct, probes)
                except TrafficRefused as exc:
                    raise TrafficRefused(f"{m.service}: {exc}", exc.kind) from None
                prepare = getattr(platform, "prepared_shift", None)
                flip = stack.enter_context(prepare(weights)) if prepare is not None else _CallFlip(platform, weights)
                ready.append((m, weights, flip))
            # Every command goes out before any answer is read: the services are mixed only for
            # about one router exchange, whatever their number.
            first = time.perf_counter()
            sent: list[tuple[Move, dict[str, int], Any]] = []
            for i, (m, weights, flip) in enumerate(ready):
                try:
                    flip.send()
                except PlatformError as exc:
                    for _, _, earlier in sent:
                        earlier.answer()
                    done = ", ".join(x.service for x, _, _ in sent) or "none"
                    raise PlatformError(f"{m.service}: the flip failed ({exc}); already flipped: {done}",
                                        output=exc.output) from None
                sent.append((m, weights, flip))
                between(i)
            sent_within = time.perf_counter() - first
            flips: list[Flip] = []
            for m, weights, flip in sent:
                router = flip.answer()
                flips.append(Flip(weights, router, router, m.service))
                self._observe(router)
            spread = time.perf_counter() - first
        for m in moves:
            log.info("%s/%s: traffic %s (together, deploy %s)", m.service, m.env, m.to, m.owner)
        return Together(flips, spread, sent_within)

    def route(self, service: str, env: str, *, to: str, version: str, pct: int = 100,
              owner: int | None = None, probes: int = 1) -> Flip:
        """Sends `pct`% of traffic to slot `to` (the rest to the other slot), after checking that
        `to` runs `version` and is healthy. With pct < 100 the other slot must be serving now."""
        with self.holding(service, env) as platform:
            weights = self._checked_route(platform, service, env, to, version, pct, probes)
            started = time.perf_counter()
            platform.shift(weights)
            call = time.perf_counter() - started
            exchange = getattr(platform, "last_router_call_seconds", None)
            router = exchange if isinstance(exchange, float) and 0 < exchange <= call else call
            log.info("%s/%s: traffic %s (deploy %s)", service, env, format_weights(weights), owner)
            self._observe(router)
            return Flip(weights, router, call)

    def _observe(self, router_seconds: float) -> None:
        for observe in self.flip_observers:
            try:
                observe(router_seconds)
            except Exception:  # a metric must never stop traffic
                log.exception("flip observer failed")

    def back_to(self, service: str, env: str, *, blue: str | None, blue_version: str | None, green: str,
                green_version: str, owner: int | None, probes: int = 1) -> Restored:
        """Traffic back on blue and green stopped, as far as that is safe; says what it did.

        Blue takes the traffic only when it runs `blue_version` and is healthy. Green is stopped
        only when it carries no traffic afterwards. When blue cannot serve and green does, both are
        left as they are and NeedsAttention is raised: an unhealthy version answers some requests,
        a router with every weight 0 answers none.
        """
        with self.holding(service, env) as platform:
            traffic = self.read(service, env)
            on_green = traffic.slot(green).weight
            notes = []
            if blue is not None and traffic.slot(blue).weight == 100 and on_green == 0:
                notes.append(f"traffic stayed on blue ({blue_version})")
            elif on_green == 0 and traffic.serving is None:
                notes.append("nothing was serving before this deploy and nothing serves now")
            elif blue is None:
                raise NeedsAttention(f"{green_version} is the only version there is and it carries traffic "
                                     f"({format_weights(traffic.weights)}); recess left it serving")
            else:
                try:
                    flip = self.route(service, env, to=blue, version=blue_version or "", owner=owner, probes=probes)
                except TrafficRefused as exc:
                    raise NeedsAttention(f"blue cannot take the traffic back: {exc}") from None
                if getattr(platform, "hands_over", False):  # Railway: a rollback deployment, seconds not ms
                    notes.append(f"Railway rolled back to {blue_version} and it answers again, {flip.call_seconds:.0f} s "
                                 f"after recess asked")
                else:
                    notes.append(f"traffic back on blue ({blue_version}) in {flip.router_seconds * 1000:.1f} ms")
            try:
                notes.append(self._stop_locked(platform, service, env, green, green_version, owner=owner, drain_timeout=5))
            except TrafficRefused as exc:
                if exc.kind != "other_version":
                    raise NeedsAttention(f"green could not be stopped: {exc}") from None
                # The new version never started there: the slot still holds what an earlier
                # deploy kept (a version kept for rollback), which is not this deploy's to stop.
                held = self.read(service, env).slot(green).version
                notes.append(f"slot {green} still holds {held} from before, left as it was")
            serving = self.read(service, env).serving
            return Restored(", ".join(notes), serving)

    # -- slots ---------------------------------------------------------------------------------

    def start(self, service: str, env: str, slot: str, version: str, *, owner: int | None,
              drain_timeout: float = 10) -> None:
        """Starts `version` in `slot`, which must carry no traffic; what ran there is drained first."""
        with self.holding(service, env) as platform:
            traffic = self.read(service, env)
            self._refuse_if_serving_or_used(traffic, service, env, slot, owner)
            if traffic.slot(slot).running:
                platform.drain(slot, timeout=drain_timeout)
                traffic = self.read(service, env)
                self._refuse_if_serving_or_used(traffic, service, env, slot, owner)
            platform.start(slot, version)

    def stop(self, service: str, env: str, slot: str, version: str | None, *, owner: int | None,
             drain_timeout: float = 30) -> str:
        """Drains and stops `slot` when it runs `version`, carries no traffic and no other running
        deploy uses it. The drain happens outside the lock, so a rollback click is never kept
        waiting behind it; everything is checked again before the stop."""
        with self.holding(service, env):
            traffic = self.read(service, env)
            state = traffic.slot(slot)
            if not state.running:
                return f"slot {slot} was already stopped"
            self._refuse_if_serving_or_used(traffic, service, env, slot, owner)
            self._refuse_if_other_version(state.version, slot, version)
        self.platform_for(service, env).drain(slot, timeout=drain_timeout)
        with self.holding(service, env) as platform:
            return self._stop_locked(platform, service, env, slot, version, owner=owner, drain_timeout=0)

    def _stop_locked(self, platform: Platform, service: str, env: str, slot: str, version: str | None, *,
                     owner: int | None, drain_timeout: float) -> str:
        traffic = self.read(service, env)
        state = traffic.slot(slot)
        if not state.running:
            return f"slot {slot} was already stopped"
        self._refuse_if_serving_or_used(traffic, service, env, slot, owner)
        self._refuse_if_other_version(state.version, slot, version)
        if drain_timeout:
            platform.drain(slot, timeout=drain_timeout)
        platform.stop(slot, version)  # the platform refuses too when another version runs there
        return f"slot {slot} ({state.version}) stopped"

    def _refuse_if_serving_or_used(self, traffic: Traffic, service: str, env: str, slot: str, owner: int | None) -> None:
        if traffic.slot(slot).weight > 0:
            raise TrafficRefused(f"slot {slot} carries traffic ({format_weights(traffic.weights)}): not touching it",
                                 "serving")
        for other in self.in_use(service, env, owner):
            if slot in (other.get("blue_slot"), other.get("green_slot")):
                raise TrafficRefused(f"slot {slot} is in use by {other.get('kind', 'deploy')} #{other['id']}", "in_use")

    @staticmethod
    def _refuse_if_other_version(running: str | None, slot: str, version: str | None) -> None:
        if version is not None and running != version:
            raise TrafficRefused(f"slot {slot} runs {running}, not {version}: not stopping it", "other_version")

    # -- the router ----------------------------------------------------------------------------

    def revive_router(self, service: str, env: str):  # noqa: ANN201 (platforms.haproxy.Revival | None)
        """The watchdog's check of one router, under the service's lock."""
        with self.holding(service, env) as platform:
            watch = getattr(platform, "watch_router", None)
            return watch() if watch is not None else None
