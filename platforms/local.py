"""The `local` platform: each slot is a process on this host, HAProxy routes the public address.

Everything the driver knows lives in its state directory (one per service and environment), so a
new bot process picks up where the last one stopped:

    blue.pid, blue.json, blue.log       the slot's process: pid, version, start time, output
    green.pid, green.json, green.log
    haproxy.cfg, haproxy.pid            the generated router configuration and HAProxy's pid
    haproxy.sock                        HAProxy's runtime API (admin level)
    weights.json                        the last weights set through the runtime API
    *.lock                              serialises changes across threads and processes

Slot processes and HAProxy run in their own sessions, detached from the bot: stopping or
restarting the bot never stops the service. Traffic moves with the runtime API (`set server
... weight`), which needs no reload and keeps every keep-alive connection open. See
docs/blue-green.md.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import fcntl
import hashlib
import io
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

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

if TYPE_CHECKING:
    from commands.config import Service

log = logging.getLogger(__name__)

HAPROXY_MISSING = "HAProxy is not installed: apt-get install haproxy"
LOG_TAIL_CHARS = 3000
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
        self.settings = spec.local
        self.health_path = spec.health_path
        self.state_dir = Path(state_dir).absolute()
        self.workdir = Path(workdir).absolute() if workdir else self.state_dir
        self.haproxy_bin = haproxy_bin
        self.start_grace = start_grace
        self.stop_timeout = stop_timeout
        self.health_timeout = health_timeout
        self.migrate_timeout = migrate_timeout
        self.backend = service  # HAProxy backend name; service names are valid identifiers
        self.last_router_call_seconds: float | None = None  # duration of the last weight change

    # -- the protocol ----------------------------------------------------------------------------

    def status(self) -> Traffic:
        router_up = True
        weights = {s: 0 for s in SLOTS}
        try:
            self.ensure_router()
            weights = self._live_weights()
        except PlatformError as exc:
            log.warning("%s/%s: router is not up: %s", self.service, self.env, exc)
            router_up = False
        if router_up and weights != self._saved_weights():
            # Someone used the runtime API by hand: follow the router. Under the lock, so a shift
            # running meanwhile is not overwritten by what was read before it.
            with _StateLock.at(self._path("router.lock")):
                weights = self._live_weights()
                if weights != self._saved_weights():
                    self._save_weights(weights)
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
        self.ensure_router()
        with _StateLock.at(self._path(f"{slot}.lock")):
            self._stop_slot(slot)
            port = self._port(slot)
            command = self._command(self.settings.run, version=version, port=port)
            log_path = self._path(f"{slot}.log")
            if log_path.exists():
                os.replace(log_path, self._path(f"{slot}.log.1"))  # keep the previous run's output
            env = {**os.environ, **self._recess_env(slot, version, port)}
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
                "proc_start": _proc_start(proc.pid),
                "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "port": port,
                "command": command,
            }
            _write_atomic(self._path(f"{slot}.json"), json.dumps(record, indent=2) + "\n")
            _write_atomic(self._path(f"{slot}.pid"), f"{proc.pid}\n")
            log.info("%s/%s: started %s in %s (pid %d)", self.service, self.env, version, slot, proc.pid)

            deadline = time.monotonic() + self.start_grace
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.02)
            code = proc.poll()
            if code is not None:
                self._forget_slot(slot)
                raise PlatformError(
                    f"{self.service} {version} exited at once in slot {slot} (exit code {code})",
                    output=_tail(log_path),
                )

    def stop(self, slot: str) -> None:
        self._check_slot(slot)
        with _StateLock.at(self._path(f"{slot}.lock")):
            self._stop_slot(slot)

    def health(self, slot: str) -> Health:
        self._check_slot(slot)
        record = self._record(slot)
        if not self._slot_alive(record):
            if not record:
                return Health(ok=False, detail=f"nothing runs in slot {slot}", exited=True)
            code = _exit_code(record.get("pid"))
            how = f" with exit code {code}" if code is not None else ""
            tail = _tail(self._path(f"{slot}.log"), 600).strip()
            detail = f"the process of {record.get('version')} in slot {slot} exited{how}"
            return Health(ok=False, detail=detail + (f"; its last output:\n{tail}" if tail else ""), exited=True)
        url = self.base_url(slot) + self.health_path
        try:
            # trust_env=False: a proxy from the environment must not stand between us and localhost.
            with httpx.Client(timeout=self.health_timeout, trust_env=False) as client:
                resp = client.get(url)
        except httpx.HTTPError as exc:
            return Health(ok=False, detail=f"GET {url}: no answer ({type(exc).__name__}: {exc})")
        body = resp.text.strip().replace("\n", " ")[:200]
        return Health(ok=resp.status_code == 200, status=resp.status_code, detail=f"GET {url}: {resp.status_code} {body}")

    def shift(self, weights: Mapping[str, int]) -> None:
        target = checked_weights(weights)
        with _StateLock.at(self._path("router.lock")):
            try:
                current = self._live_weights()
            except PlatformError:
                self.ensure_router()  # not running (or not yet): start it with the saved weights
                current = self._live_weights()
            # Raise before lowering: if a request lands between the two commands it meets a split,
            # never a backend with every weight at 0 (which HAProxy answers with 503).
            order = sorted(SLOTS, key=lambda s: target[s] <= current[s])
            command = ";".join(f"set server {self.backend}/{s} weight {target[s]}" for s in order)
            started = time.perf_counter()
            answer = self._admin(command)
            self.last_router_call_seconds = time.perf_counter() - started
            if answer.strip():
                raise PlatformError(f"HAProxy refused the weights {format_weights(target)}", output=answer.strip())
            self._save_weights(target)
            live = self._live_weights()
            if live != target:
                raise PlatformError(
                    f"HAProxy reports {format_weights(live)} after setting {format_weights(target)}"
                )
        log.info("%s/%s: weights %s (%.2f ms)", self.service, self.env, format_weights(target),
                 self.last_router_call_seconds * 1000)

    def migrate(self, slot: str, version: str, env: Mapping[str, str]) -> Result:
        self._check_slot(slot)
        if not self.settings.migrate:
            return Result(ok=True, output="no migrate command")
        port = self._port(slot)
        command = self._command(self.settings.migrate, version=version, port=port)
        full_env = {**os.environ, **self._recess_env(slot, version, port), **dict(env)}
        try:
            done = subprocess.run(
                command,
                shell=True,
                cwd=self.workdir,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=self.migrate_timeout,
            )
        except subprocess.TimeoutExpired as exc:
            output = (exc.output or b"").decode(errors="replace")
            return Result(ok=False, output=_trim(output + f"\n(timed out after {self.migrate_timeout} s)"))
        output = done.stdout.decode(errors="replace")
        return Result(ok=done.returncode == 0, output=_trim(output), exit_code=done.returncode)

    def base_url(self, slot: str) -> str:
        self._check_slot(slot)
        return "http://" + self.settings.slots[slot]

    def router_stats(self) -> dict[str, RouterStats]:
        text = self._admin("show stat")
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        stats: dict[str, RouterStats] = {}
        for row in rows:
            if row.get("pxname") != self.backend or row.get("svname") not in SLOTS:
                continue
            stats[row["svname"]] = RouterStats(
                requests=_int(row.get("stot")),
                responses_5xx=_int(row.get("hrsp_5xx")),
                connection_errors=_int(row.get("econ")) + _int(row.get("eresp")),
                current_sessions=_int(row.get("scur")),
            )
        return stats

    def drain(self, slot: str, timeout: float) -> None:
        self._check_slot(slot)
        deadline = time.monotonic() + timeout
        while True:
            try:
                sessions = self.router_stats().get(slot, RouterStats()).current_sessions
            except PlatformError:
                return  # no router, no sessions to wait for
            if sessions == 0:
                return
            if time.monotonic() >= deadline:
                log.warning("%s/%s: slot %s still holds %d sessions after %.0f s of drain",
                            self.service, self.env, slot, sessions, timeout)
                return
            time.sleep(0.1)

    # -- beyond the protocol ---------------------------------------------------------------------

    def ensure_router(self) -> None:
        """Start HAProxy unless one already answers on this service's admin socket.

        The configuration is generated at every start with the last weights set through the
        runtime API, so HAProxy coming back after a crash routes where it routed before.
        """
        if self._router_answers():
            return
        with _StateLock.at(self._path("router.lock")):
            if self._router_answers():
                return  # another thread or process started it while we waited
            binary = self._haproxy_binary()
            self._stop_router_process()  # one that runs but does not answer is of no use
            config = self.router_config(self._saved_weights())
            config_path = self._path("haproxy.cfg")
            _write_atomic(config_path, config)
            with contextlib.suppress(FileNotFoundError):
                self._socket_path().unlink()
            out_path = self._path("haproxy.log")
            with open(out_path, "wb") as out:
                try:
                    done = subprocess.run(
                        [binary, "-f", str(config_path)],
                        cwd=self.state_dir,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        timeout=15,
                    )
                except (OSError, subprocess.TimeoutExpired) as exc:
                    raise PlatformError(f"cannot run {binary}: {exc}") from None
            if done.returncode != 0:
                raise PlatformError(
                    f"HAProxy did not start for {self.service} (exit code {done.returncode})",
                    output=_tail(out_path),
                )
            deadline = time.monotonic() + 5
            while not self._router_answers():
                if time.monotonic() > deadline:
                    raise PlatformError("HAProxy started but its admin socket does not answer",
                                        output=_tail(out_path))
                time.sleep(0.02)
            log.info("%s/%s: HAProxy started on %s", self.service, self.env, self.settings.listen)

    def router_config(self, weights: Mapping[str, int]) -> str:
        """The HAProxy configuration for this service, with the given weights."""
        s = self.settings
        servers = "\n".join(
            f"    server {slot} {s.slots[slot]} weight {int(weights.get(slot, 0))}" for slot in SLOTS
        )
        lines = f"""\
# Generated by recess for service {self.service} ({self.env}). Do not edit: it is rewritten at
# every HAProxy start with the live weights. Traffic moves through the runtime API, not this file.
global
    daemon
    pidfile {self._path("haproxy.pid")}
    stats socket {self._socket_path()} mode 600 level admin
    maxconn 2000

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    # A request that meets a slot going away is tried again (on the other slot if needed).
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout
    # Start even when a slot's host name does not resolve yet.
    default-server init-addr last,libc,none

frontend public
    bind {s.listen}
    default_backend {self.backend}

backend {self.backend}
    balance roundrobin
{servers}
"""
        return lines  # ends with a newline: HAProxy refuses a file without one

    def router_running(self) -> bool:
        return self._router_answers()

    def shutdown(self) -> None:
        """Stop both slots and HAProxy (tests and the demo's clean-up; deploys never call it)."""
        for slot in SLOTS:
            self.stop(slot)
        with _StateLock.at(self._path("router.lock")):
            self._stop_router_process()
            with contextlib.suppress(FileNotFoundError):
                self._socket_path().unlink()

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
        proc = _proc_stat(pid)
        if proc is None or proc["state"] in "ZX":
            return False
        # The same pid with another start time is a different process that reused the number.
        expected = record.get("proc_start")
        return expected is None or proc["start"] == expected

    def _stop_slot(self, slot: str) -> None:
        record = self._record(slot)
        pid = record.get("pid")
        if pid:
            leader = _proc_stat(pid)
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

    # -- router ----------------------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        return self.state_dir / name

    def _socket_path(self) -> Path:
        path = self.state_dir / "haproxy.sock"
        if len(str(path)) <= 90:
            return path
        # HAProxy refuses a stats socket path over 97 bytes (the kernel's limit is 108): deep state
        # directories get a stable short name in the temp folder instead, derived from the state
        # directory.
        digest = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"recess-{digest}.sock"

    def _haproxy_binary(self) -> str:
        found = shutil.which(self.haproxy_bin)
        if not found:
            raise PlatformError(HAPROXY_MISSING)
        return found

    def _admin(self, command: str, timeout: float = 3.0) -> str:
        """One runtime API exchange: commands separated by ';' run in that one connection."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(str(self._socket_path()))
                sock.sendall(command.encode() + b"\n")
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        except OSError as exc:
            raise PlatformError(f"HAProxy's admin socket does not answer ({exc})") from None
        return b"".join(chunks).decode(errors="replace")

    def _router_answers(self) -> bool:
        try:
            return "Name: HAProxy" in self._admin("show info", timeout=1.0)
        except PlatformError:
            return False

    def _live_weights(self) -> dict[str, int]:
        answer = self._admin(";".join(f"get weight {self.backend}/{s}" for s in SLOTS))
        parts = [p.strip() for p in answer.split("\n\n") if p.strip()]
        try:
            values = [int(p.split()[0]) for p in parts]
        except (ValueError, IndexError):
            values = []
        if len(values) != len(SLOTS):
            raise PlatformError("unexpected answer to 'get weight' from HAProxy", output=answer.strip())
        return dict(zip(SLOTS, values, strict=True))

    def _saved_weights(self) -> dict[str, int]:
        try:
            data = json.loads(self._path("weights.json").read_text())
            return {s: int(data.get(s, 0)) for s in SLOTS}
        except (FileNotFoundError, ValueError, TypeError, AttributeError):
            return {s: 0 for s in SLOTS}

    def _save_weights(self, weights: Mapping[str, int]) -> None:
        data = {s: int(weights[s]) for s in SLOTS}
        data_text = json.dumps({**data, "updated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})
        _write_atomic(self._path("weights.json"), data_text + "\n")

    def _stop_router_process(self) -> None:
        try:
            pid = int(self._path("haproxy.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return
        proc = _proc_stat(pid)
        if proc is None or proc["state"] in "ZX" or proc["comm"] != "haproxy":
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 3
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            self._path("haproxy.pid").unlink()


# -- processes -----------------------------------------------------------------------------------


def _proc_stat(pid: int) -> dict[str, Any] | None:
    """State, process group, start time and name of a process from /proc, or None if there is none."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The name is in parentheses and may itself contain spaces or parentheses.
    name = raw[raw.find("(") + 1 : raw.rfind(")")]
    fields = raw[raw.rfind(")") + 2 :].split()
    return {"comm": name, "state": fields[0], "pgrp": int(fields[2]), "start": int(fields[19])}


def _proc_start(pid: int) -> int | None:
    proc = _proc_stat(pid)
    return proc["start"] if proc else None


def _alive(pid: int) -> bool:
    _reap(pid)
    proc = _proc_stat(pid)
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
        proc = _proc_stat(int(entry.name))
        if proc is not None and proc["pgrp"] == pgid and proc["state"] not in "ZX":
            return True
    return False


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# -- files ---------------------------------------------------------------------------------------


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - chars))
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def _trim(output: str) -> str:
    return output if len(output) <= OUTPUT_CHARS else "...\n" + output[-OUTPUT_CHARS:]


def _int(value: str | None) -> int:
    try:
        return int(value) if value else 0
    except ValueError:
        return 0


class _StateLock:
    """Serialises changes to one piece of state: across this process's threads (re-entrant) and
    across processes (flock), e.g. the bot and a `recess` command run by hand."""

    _locks: dict[Path, _StateLock] = {}
    _guard = threading.Lock()

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rlock = threading.RLock()
        self.depth = 0
        self.fd: int | None = None

    @classmethod
    @contextlib.contextmanager
    def at(cls, path: Path) -> Iterator[None]:
        with cls._guard:
            lock = cls._locks.setdefault(path, cls(path))
        with lock.rlock:
            if lock.depth == 0:
                lock.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(lock.fd, fcntl.LOCK_EX)
            lock.depth += 1
            try:
                yield
            finally:
                lock.depth -= 1
                if lock.depth == 0 and lock.fd is not None:
                    fcntl.flock(lock.fd, fcntl.LOCK_UN)
                    os.close(lock.fd)
                    lock.fd = None
