"""The `command` platform: every operation is a shell command from the configuration.

It is how a team drives Railway's CLI, kubectl or its own scripts. The deploy's values reach the
command as environment variables, never spliced into the command text:

    RECESS_SERVICE, RECESS_ENV    always
    RECESS_SLOT                   start, stop, health, migrate
    RECESS_VERSION                start, migrate, and stop when told which version to stop
    RECESS_WEIGHTS                shift: "blue=0,green=100"
    RECESS_WEIGHT_BLUE/_GREEN     shift: the two numbers on their own

A non-zero exit is a failure: PlatformError names the operation (never the command's text, which
goes to the log only: the message is posted to the deploy's thread) and its exit code, and carries
the command's output. Each command gets only the allow-listed environment of
platforms/environment.py: recess's Slack credentials never reach it. Each command runs in a session of its own (platforms.hooks.run_hook): when it
runs out of time its whole process group is killed, so nothing it started can still act later,
and the error says so. `status` prints JSON, see `parse_status`. The contract is in docs/blue-green.md.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from platforms.base import (
    SLOTS,
    Health,
    PlatformError,
    Result,
    RouterStats,
    SlotState,
    Traffic,
    checked_weights,
    format_weights,
)
from platforms.environment import child_env
from platforms.hooks import GROUP_KILLED, HookResult, run_hook, seconds

if TYPE_CHECKING:
    from commands.config import Service

log = logging.getLogger(__name__)

OUTPUT_CHARS = 20000


class CommandPlatform:
    """A service whose slots and router are driven by shell commands. Bound to service + env."""

    def __init__(
        self,
        service: str,
        env: str,
        spec: Service,
        state_dir: Path,
        *,
        workdir: Path | None = None,
        timeout: float = 600.0,
        status_timeout: float = 60.0,
        migrate_timeout: float | None = None,
    ) -> None:
        if spec.command is None:
            raise PlatformError(f"service {service!r} has no [services.{service}.command] table")
        self.service = service
        self.env = env
        self.spec = spec
        self.commands = spec.command
        self.state_dir = Path(state_dir).absolute()
        self.workdir = Path(workdir).absolute() if workdir else Path.cwd()
        self.timeout = timeout
        self.status_timeout = status_timeout
        self.migrate_timeout = migrate_timeout

    # -- the protocol ----------------------------------------------------------------------------

    def status(self) -> Traffic:
        output = self._run("status", self.commands.status, {}, timeout=self.status_timeout)
        return parse_status(output)

    def start(self, slot: str, version: str) -> None:
        _check_slot(slot)
        self._run("start", self.commands.start, {"RECESS_SLOT": slot, "RECESS_VERSION": version})

    def stop(self, slot: str, version: str | None = None) -> None:
        """Stops the slot; with `version`, only when `status` shows that version (or nothing) there."""
        _check_slot(slot)
        extra = {"RECESS_SLOT": slot}
        if version is not None:
            state = self.status().slot(slot)
            if state.running and state.version is not None and state.version != version:
                raise PlatformError(f"slot {slot} runs {state.version}, not {version}: not stopping it")
            extra["RECESS_VERSION"] = version
        self._run("stop", self.commands.stop, extra)

    def health(self, slot: str) -> Health:
        _check_slot(slot)
        if not self.commands.health:
            # No command and no address to probe: the best evidence is that status shows a version.
            try:
                state = self.status().slot(slot)
            except PlatformError as exc:
                return Health(ok=False, detail=str(exc))
            if state.running:
                return Health(ok=True, detail=f"no health command; status shows {state.version} in {slot}")
            return Health(ok=False, detail=f"no health command; status shows nothing running in {slot}")
        ran = self._exec("health", self.commands.health, {"RECESS_SLOT": slot}, timeout=self.status_timeout)
        if ran.timed_out:
            return Health(ok=False, detail=f"health command timed out after {seconds(self.status_timeout)}; "
                                           f"{GROUP_KILLED}")
        return Health(ok=ran.code == 0, detail=_last_lines(ran.output) or f"exit code {ran.code}")

    def shift(self, weights: Mapping[str, int]) -> None:
        target = checked_weights(weights)
        extra = {
            "RECESS_WEIGHTS": format_weights(target),
            **{f"RECESS_WEIGHT_{s.upper()}": str(target[s]) for s in SLOTS},
        }
        self._run("shift", self.commands.shift, extra)

    def migrate(self, slot: str, version: str, env: Mapping[str, str]) -> Result:
        _check_slot(slot)
        if not self.commands.migrate:
            return Result(ok=True, output="no migrate command")
        extra = {**dict(env), "RECESS_SLOT": slot, "RECESS_VERSION": version}
        ran = self._exec("migrate", self.commands.migrate, extra, timeout=self.migrate_timeout)
        if ran.timed_out:
            return Result(ok=False, output=_trim(ran.output) + f"\n(migrate command timed out after "
                                                               f"{seconds(self.migrate_timeout)}; {GROUP_KILLED})")
        return Result(ok=ran.code == 0, output=_trim(ran.output), exit_code=ran.code)

    def base_url(self, slot: str) -> str:
        """The slot's URL when `status` reports one in "urls", else ""."""
        _check_slot(slot)
        output = self._run("status", self.commands.status, {}, timeout=self.status_timeout)
        try:
            urls = json.loads(output).get("urls") or {}
        except (ValueError, AttributeError):
            return ""
        url = urls.get(slot) if isinstance(urls, dict) else None
        return url if isinstance(url, str) else ""

    def router_stats(self) -> dict[str, RouterStats]:
        return {}  # the platform's own router keeps its counters to itself

    def drain(self, slot: str, timeout: float) -> None:
        _check_slot(slot)  # nothing to watch: the platform's `stop` is expected to drain

    # -- running commands ------------------------------------------------------------------------

    def _env(self, extra: Mapping[str, str]) -> dict[str, str]:
        return child_env(self.spec, {"RECESS_SERVICE": self.service, "RECESS_ENV": self.env, **dict(extra)})

    def _exec(self, what: str, command: str, extra: Mapping[str, str], timeout: float | None) -> HookResult:
        try:
            return run_hook(command, cwd=self.workdir, env=self._env(extra), timeout=timeout)
        except OSError as exc:
            log.warning("%s/%s: cannot run the %s command %r: %s", self.service, self.env, what, command, exc)
            raise PlatformError(f"cannot run the {what} command: {exc.strerror or exc}") from None

    def _run(self, what: str, command: str, extra: Mapping[str, str], timeout: float | None = None) -> str:
        """Runs an operation's command; returns its stdout, raises PlatformError unless it exits 0.

        The error names the operation, not the command: its text goes to the log, not to Slack."""
        limit = self.timeout if timeout is None else timeout
        ran = self._exec(what, command, extra, timeout=limit)
        if ran.timed_out:
            log.warning("%s/%s: the %s command %r timed out", self.service, self.env, what, command)
            raise PlatformError(f"{what} command timed out after {seconds(limit)}; {GROUP_KILLED}",
                                output=_trim(ran.output))
        if ran.code != 0:
            log.warning("%s/%s: the %s command %r exited %s", self.service, self.env, what, command, ran.code)
            raise PlatformError(f"{what} command failed with exit code {ran.code}", output=_trim(ran.output))
        return ran.stdout


def parse_status(output: str) -> Traffic:
    """Reads the JSON printed by a `status` command:

    {"weights": {"blue": 100, "green": 0}, "versions": {"blue": "v1", "green": null}}

    Optional keys: "running" ({"blue": true, ...}; default: a slot runs when it has a version),
    "router_up" (default true), "urls" ({"blue": "https://...", ...}, see base_url).
    """
    try:
        data: Any = json.loads(output)
    except ValueError as exc:
        raise PlatformError(f"status command did not print JSON ({exc})", output=_trim(output)) from None
    if not isinstance(data, dict) or not isinstance(data.get("weights"), dict):
        raise PlatformError(
            "status command printed JSON without a \"weights\" object", output=_trim(output)
        )
    versions = data.get("versions") or {}
    running = data.get("running") or {}
    if not isinstance(versions, dict) or not isinstance(running, dict):
        raise PlatformError("status command: \"versions\" and \"running\" must be objects",
                            output=_trim(output))
    slots = {}
    for slot in SLOTS:
        weight = data["weights"].get(slot, 0)
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
            raise PlatformError(f"status command: weights.{slot} must be a whole number, got {weight!r}",
                                output=_trim(output))
        version = versions.get(slot)
        if version is not None and not isinstance(version, str):
            version = str(version)
        is_running = bool(running.get(slot, version is not None))
        slots[slot] = SlotState(slot=slot, version=version if is_running else None, running=is_running,
                                weight=weight)
    return Traffic(slots=slots, router_up=bool(data.get("router_up", True)))


def _check_slot(slot: str) -> None:
    if slot not in SLOTS:
        raise PlatformError(f"unknown slot {slot!r}: expected blue or green")


def _trim(output: str) -> str:
    return output if len(output) <= OUTPUT_CHARS else "...\n" + output[-OUTPUT_CHARS:]


def _last_lines(output: str, n: int = 5) -> str:
    return "\n".join(output.strip().splitlines()[-n:])
