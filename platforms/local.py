"""The `local` platform: each slot is a process on this host, HAProxy routes the public address.

Everything the driver knows lives in its state directory (one per service and environment), so a
new bot process picks up where the last one stopped:

    blue.pid, blue.json, blue.log       the slot's process: pid, version, start time, output
    green.pid, green.json, green.log
    haproxy.*, weights.json             the router's files (platforms/haproxy.py)
    *.lock                              serialises changes across threads and processes

Slot processes and HAProxy run in their own sessions, detached from the bot: stopping or
restarting the bot never stops the service. Traffic moves with the runtime API (`set server
... weight`), which needs no reload and keeps every keep-alive connection open. See
docs/blue-green.md.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from platforms.base import SLOTS, Health, PlatformError, Result, RouterStats, SlotState, Traffic
from platforms.environment import child_env
from platforms.haproxy import HAPROXY_MISSING, HAProxyRouter, PreparedFlip, Revival
from platforms.hooks import GROUP_KILLED, run_hook
from platforms.host import StateLock, proc_start, proc_stat, tail, write_atomic

if TYPE_CHECKING:
    from commands.config import Service

log = logging.getLogger(__name__)

__all__ = ["HAPROXY_MISSING", "LocalPlatform"]

OUTPUT_CHARS = 20000

# Children this process started, so their exit status can be collected (and no zombie is left)
# while the bot runs. After a restart they are someone else's children: /proc tells us then.
_children: dict[int, subprocess.Popen[bytes]] = {}
_children_guard = threading.Lock()


class LocalPlatform:
    """Two slots as detached processes on this host, behind one HAProxy. Bound to service + env."""

    def __init__(
        self,
        service: str,
        env: str,
        spec: Service,
        state_dir: Path,
        *,
        workdir: Path | None = None,
        haproxy_bin: str = "haproxy",
        start_grace: float = 0.5,
        stop_timeout: float = 5.0,
        health_timeout: float = 2.0,
        migrate_timeout: float | None = None,
    ) -> None:
        if spec.local is None:
            raise PlatformError(f"service {service!r} has no [services.{service}.local] table")
        self.service = service
        self.env = env
        self.spec = spec  # its env and pass_env: what the slots and migrations see (child_env)
        self._client: httpx.Client | None = None
        self.settings = spec.local
        self.health_path = spec.health_path
        self.state_dir = Path(state_dir).absolute()
        self.workdir = Path(workdir).absolute() if workdir else self.state_dir
        self.haproxy_bin = haproxy_bin
        self.start_grace = start_grace
        self.stop_timeout = stop_timeout
        self.health_timeout = health_timeout
        self.migrate_timeout = migrate_timeout
        self.router = HAProxyRouter(service, env, spec.local.listen, spec.local.slots, self.state_dir,
                                    haproxy_bin=haproxy_bin)

    @property
    def last_router_call_seconds(self) -> float | None:
        """The runtime API exchange of the last weight change (the flip time the thread reports)."""
        return self.router.last_call_seconds

    # -- the protocol ----------------------------------------------------------------------------

    def status(self) -> Traffic:
        """What runs in each slot and the router's live weights. Never starts or stops anything:
        a router that does not answer is reported as down (router_up=False, weights 0), and the
        caller decides (commands/traffic.py refuses to act on it). A service whose router was never
        started (or was stopped on purpose) reports nothing routed."""
        router_up = True
        weights = {s: 0 for s in SLOTS}
        if not self.router.started():
            pass  # a service never routed: no router yet, nothing routed (the first start brings one)
        else:
            try:
                weights = self.router.weights()
            except PlatformError as exc:
                log.warning("%s/%s: router is not up: %s", self.service, self.env, exc)
                router_up = False
        if router_up and self.router.started() and weights != self.router.saved_weights():
            self.router.follow(weights)  # someone used the runtime API by hand: follow the router
        slots = {}
        for slot in SLOTS:
            record = self._record(slot)
            running = self._slot_alive(record)
            slots[slot] = SlotState(
                slot=slot,
                version=record.get("version") if running else None,
                running=running,
                weight=weights[slot],
                address=self.settings.slots[slot],
            )
        return Traffic(slots=slots, router_up=router_up)

    def start(self, slot: str, version: str) -> None:
        self._check_slot(slot)
        if not version or not version.strip():
            raise PlatformError("cannot start an empty version")
        self.router.ensure_running()
        with StateLock.at(self._path(f"{slot}.lock")):
            self._stop_slot(slot)
            port = self._port(slot)
            command = self._command(self.settings.run, version=version, port=port)
            log_path = self._path(f"{slot}.log")
            if log_path.exists():
                os.replace(log_path, self._path(f"{slot}.log.1"))  # keep the previous run's output
            env = child_env(self.spec, self._recess_env(slot, version, port))
            with open(log_path, "wb") as out:
                try:
                    proc = subprocess.Popen(
                        command,
                        shell=True,
                        cwd=self.workdir,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # own session and process group: the bot can go
                    )
                except OSError as exc:
                    raise PlatformError(f"cannot run {command!r}: {exc}") from None
            with _children_guard:
                _children[proc.pid] = proc
            record = {
                "version": version,
                "pid": proc.pid,
                "proc_start": proc_start(proc.pid),
                "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "port": port,
                "command": command,
            }
            write_atomic(self._path(f"{slot}.json"), json.dumps(record, indent=2) + "\n")
            write_atomic(self._path(f"{slot}.pid"), f"{proc.pid}\n")
            log.info("%s/%s: started %s in %s (pid %d)", self.service, self.env, version, slot, proc.pid)

            deadline = time.monotonic() + self.start_grace
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.02)
            code = proc.poll()
            if code is not None:
                self._forget_slot(slot)
                raise PlatformError(
                    f"{self.service} {version} exited at once in slot {slot} (exit code {code})",
                    output=tail(log_path),
                )

    def stop(self, slot: str, version: str | None = None) -> None:
        """Stops the slot; with `version`, only when that version is what runs there."""
        self._check_slot(slot)
        with StateLock.at(self._path(f"{slot}.lock")):
            if version is not None:
                record = self._record(slot)
                if self._slot_alive(record) and record.get("version") != version:
                    raise PlatformError(f"slot {slot} runs {record.get('version')}, not {version}: not stopping it")
            self._stop_slot(slot)

    def health(self, slot: str) -> Health:
        self._check_slot(slot)
        record = self._record(slot)
        if not self._slot_alive(record):
            if not record:
                return Health(ok=False, detail=f"nothing runs in slot {slot}", exited=True)
            code = _exit_code(record.get("pid"))
            how = f" with exit code {code}" if code is not None else ""
            last = tail(self._path(f"{slot}.log"), 600).strip()
            detail = f"the process of {record.get('version')} in slot {slot} exited{how}"
            return Health(ok=False, detail=detail + (f"; its last output:\n{last}" if last else ""), exited=True)
        url = self.base_url(slot) + self.health_path
        try:
            resp = self._http().get(url)
        except httpx.HTTPError as exc:
            return Health(ok=False, detail=f"GET {url}: no answer ({type(exc).__name__}: {exc})")
        body = resp.text.strip().replace("\n", " ")[:200]
        return Health(ok=resp.status_code == 200, status=resp.status_code, detail=f"GET {url}: {resp.status_code} {body}")

    def _http(self) -> httpx.Client:
        """One client for every health probe: building one costs more than the probe itself.
        trust_env=False: a proxy from the environment must not stand between us and localhost."""
        if self._client is None:
            self._client = httpx.Client(timeout=self.health_timeout, trust_env=False)
        return self._client

    def shift(self, weights: Mapping[str, int]) -> None:
        self.router.set_weights(weights)

    def prepared_shift(self, weights: Mapping[str, int]) -> contextlib.AbstractContextManager[PreparedFlip]:
        """The weight change made ready to fire (HAProxyRouter.prepared): releases flip back to back."""
        return self.router.prepared(weights)

    def migrate(self, slot: str, version: str, env: Mapping[str, str]) -> Result:
        self._check_slot(slot)
        if not self.settings.migrate:
            return Result(ok=True, output="no migrate command")
        port = self._port(slot)
        command = self._command(self.settings.migrate, version=version, port=port)
        full_env = child_env(self.spec, {**self._recess_env(slot, version, port), **dict(env)})
        try:
            ran = run_hook(command, cwd=self.workdir, env=full_env, timeout=self.migrate_timeout)
        except OSError as exc:
            raise PlatformError(f"cannot run {command!r}: {exc}") from None
        if ran.timed_out:
            return Result(ok=False, output=_trim(ran.output + f"\n(timed out after {self.migrate_timeout} s; {GROUP_KILLED})"))
        return Result(ok=ran.code == 0, output=_trim(ran.output), exit_code=ran.code)

    def base_url(self, slot: str) -> str:
        self._check_slot(slot)
        return "http://" + self.settings.slots[slot]

    def router_stats(self) -> dict[str, RouterStats]:
        return self.router.stats()

    def drain(self, slot: str, timeout: float) -> None:
        self._check_slot(slot)
        self.router.drain(slot, timeout)

    def probe_public(self) -> Health:
        """One request for the health path at the public address, through HAProxy."""
        return self.router.probe_public(self.health_path, timeout=self.health_timeout)

    def watch_router(self) -> Revival | None:
        """The router watchdog's check: revives a dead HAProxy with the weights it had."""
        return self.router.revive()

    # -- beyond the protocol ---------------------------------------------------------------------

    def ensure_router(self) -> None:
        """Starts HAProxy unless one runs for this service (never stops a live one)."""
        self.router.ensure_running()

    def router_config(self, weights: Mapping[str, int]) -> str:
        return self.router.config(weights)

    def router_running(self) -> bool:
        return self.router.answers()

    def shutdown(self) -> None:
        """Stop both slots and HAProxy (tests and the demo's clean-up; deploys never call it)."""
        for slot in SLOTS:
            self.stop(slot)
        self.router.stop()

    # -- slots -----------------------------------------------------------------------------------

    def _check_slot(self, slot: str) -> None:
        if slot not in SLOTS:
            raise PlatformError(f"unknown slot {slot!r}: expected blue or green")

    def _port(self, slot: str) -> int:
        return int(self.settings.slots[slot].rsplit(":", 1)[1])

    def _command(self, template: str, *, version: str, port: int) -> str:
        # Only these two placeholders: shell text such as ${HOME} or awk '{print}' stays as is.
        # The version is quoted, so a version string can never become shell syntax.
        return template.replace("{port}", str(port)).replace("{version}", shlex.quote(version))

    def _recess_env(self, slot: str, version: str, port: int) -> dict[str, str]:
        return {
            "RECESS_SERVICE": self.service,
            "RECESS_VERSION": version,
            "RECESS_SLOT": slot,
            "RECESS_PORT": str(port),
            "RECESS_ENV": self.env,
        }

    def _record(self, slot: str) -> dict[str, Any]:
        try:
            data = json.loads(self._path(f"{slot}.json").read_text())
        except (FileNotFoundError, ValueError):
            data = {}
        if not data.get("pid"):
            try:
                data["pid"] = int(self._path(f"{slot}.pid").read_text().strip())
            except (FileNotFoundError, ValueError):
                return {}
        return data

    def _slot_alive(self, record: Mapping[str, Any]) -> bool:
        pid = record.get("pid")
        if not pid:
            return False
        _reap(pid)
        proc = proc_stat(pid)
        if proc is None or proc["state"] in "ZX":
            return False
        # The same pid with another start time is a different process that reused the number.
        expected = record.get("proc_start")
        return expected is None or proc["start"] == expected

    def _stop_slot(self, slot: str) -> None:
        record = self._record(slot)
        pid = record.get("pid")
        if pid:
            leader = proc_stat(pid)
            reused = leader is not None and record.get("proc_start") not in (None, leader["start"])
            if not reused and _group_alive(pid):
                log.info("%s/%s: stopping slot %s (pid %d)", self.service, self.env, slot, pid)
                _signal_group(pid, signal.SIGTERM)
                deadline = time.monotonic() + self.stop_timeout
                while _group_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if _group_alive(pid):
                    log.warning("%s/%s: slot %s ignored SIGTERM for %.0f s: SIGKILL",
                                self.service, self.env, slot, self.stop_timeout)
                    _signal_group(pid, signal.SIGKILL)
                    deadline = time.monotonic() + 2
                    while _group_alive(pid) and time.monotonic() < deadline:
                        time.sleep(0.02)
        self._forget_slot(slot)

    def _forget_slot(self, slot: str) -> None:
        pid = self._record(slot).get("pid")
        with _children_guard:
            _children.pop(pid, None)
        for name in (f"{slot}.pid", f"{slot}.json"):
            with contextlib.suppress(FileNotFoundError):
                self._path(name).unlink()

    def _path(self, name: str) -> Path:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        return self.state_dir / name


# -- processes -----------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    _reap(pid)
    proc = proc_stat(pid)
    return proc is not None and proc["state"] not in "ZX"


def _reap(pid: int) -> None:
    with _children_guard:
        child = _children.get(pid)
    if child is not None:
        child.poll()


def _exit_code(pid: int | None) -> int | None:
    with _children_guard:
        child = _children.get(pid) if pid else None
    return child.poll() if child is not None else None


def _group_alive(pgid: int) -> bool:
    """True while any process of the group is alive (zombies do not count)."""
    _reap(pgid)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        proc = proc_stat(int(entry.name))
        if proc is not None and proc["pgrp"] == pgid and proc["state"] not in "ZX":
            return True
    return False


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _trim(output: str) -> str:
    return output if len(output) <= OUTPUT_CHARS else "...\n" + output[-OUTPUT_CHARS:]
