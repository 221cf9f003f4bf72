"""The HAProxy router: one per service and environment, for every platform that routes through it.

The router owns these files in the service's state directory:

    haproxy.cfg      generated at every (re)start, with the last weights set
    haproxy.pid      the running HAProxy's pid (it daemonises: detached from the bot)
    haproxy.sock     its runtime API (admin level); traffic moves with `set server ... weight`
    haproxy.state    `show servers state`, written after every weight change and loaded by a
                     restarted HAProxy (`server-state-file`), so it routes where it routed before
    weights.json     the last weights set, for the generated configuration
    haproxy.log      what HAProxy printed when it started

Three promises (docs/RELIABILITY.md): a live HAProxy is never stopped because its admin socket is
slow; a dead one is started again with the weights it had (`revive`, called by the router
watchdog); and weights move raise-before-lower, so no request meets a backend with every weight 0.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import hashlib
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from platforms.base import (
    SLOTS,
    Health,
    PlatformError,
    RouterStats,
    checked_weights,
    format_weights,
)
from platforms.host import StateLock, alive, as_int, proc_stat, tail, write_atomic

log = logging.getLogger("recess.router")

HAPROXY_MISSING = "HAProxy is not installed: apt-get install haproxy"


class RouterDown(PlatformError):
    """The router does not answer: nothing about the traffic can be read or changed."""


@dataclass(frozen=True)
class Revival:
    """What the watchdog did about a dead router."""

    weights: dict[str, int]
    down_for: float | None  # seconds between the last time it was seen alive and now; None: unknown
    error: str | None = None  # set when it could not be started again


class PreparedFlip:
    """One runtime API exchange split in two: `send()` writes the prepared command on the open
    connection, `answer()` reads HAProxy's reply and returns the seconds since the send."""

    def __init__(self, sock: socket.socket, command: str) -> None:
        self.sock = sock
        self.command = (command + "\n").encode()
        self.sent_at: float | None = None
        self.reply: str | None = None
        self.seconds: float | None = None

    def send(self) -> None:
        self.sent_at = time.perf_counter()
        try:
            self.sock.sendall(self.command)
        except OSError as exc:
            raise RouterDown(f"HAProxy's admin socket does not answer ({exc})") from None

    def answer(self) -> float:
        chunks = []
        try:
            while chunk := self.sock.recv(65536):
                chunks.append(chunk)
        except OSError as exc:
            raise RouterDown(f"HAProxy's admin socket does not answer ({exc})") from None
        self.seconds = time.perf_counter() - (self.sent_at or time.perf_counter())
        self.reply = b"".join(chunks).decode(errors="replace")
        return self.seconds


class HAProxyRouter:
    """The router in front of one service's two slots, in one environment."""

    def __init__(
        self,
        service: str,
        env: str,
        listen: str,
        slots: Mapping[str, str],
        state_dir: Path,
        *,
        haproxy_bin: str = "haproxy",
        admin_timeout: float = 3.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.env = env
        self.listen = listen
        self.slots = dict(slots)
        self.state_dir = Path(state_dir).absolute()
        self.haproxy_bin = haproxy_bin
        self.admin_timeout = admin_timeout
        self.monotonic = monotonic
        self.backend = service  # service names are valid HAProxy identifiers
        self.last_call_seconds: float | None = None  # the runtime API exchange of the last weight change
        self._last_seen_alive: float | None = None

    # -- reading ---------------------------------------------------------------------------------

    def pid(self) -> int | None:
        """The pid of this service's HAProxy when it is alive, else None. Reads /proc only."""
        try:
            pid = int(self._path("haproxy.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None
        proc = proc_stat(pid)
        if proc is None or proc["state"] in "ZX" or proc["comm"] != "haproxy":
            return None
        return pid

    def started(self) -> bool:
        """True once HAProxy was started for this service (and not stopped on purpose since)."""
        return (self.state_dir / "haproxy.cfg").exists()

    def answers(self, timeout: float = 1.0) -> bool:
        try:
            return "Name: HAProxy" in self.admin("show info", timeout=timeout)
        except PlatformError:
            return False

    def weights(self) -> dict[str, int]:
        """The live weights, from the runtime API. Raises RouterDown when it does not answer."""
        answer = self.admin(";".join(f"get weight {self.backend}/{s}" for s in SLOTS))
        parts = [p.strip() for p in answer.split("\n\n") if p.strip()]
        try:
            values = [int(p.split()[0]) for p in parts]
        except (ValueError, IndexError):
            values = []
        if len(values) != len(SLOTS):
            raise PlatformError("unexpected answer to 'get weight' from HAProxy", output=answer.strip())
        return dict(zip(SLOTS, values, strict=True))

    def saved_weights(self) -> dict[str, int]:
        try:
            data = json.loads(self._path("weights.json").read_text())
            return {s: int(data.get(s, 0)) for s in SLOTS}
        except (FileNotFoundError, ValueError, TypeError, AttributeError):
            return {s: 0 for s in SLOTS}

    def stats(self) -> dict[str, RouterStats]:
        text = self.admin("show stat")
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        stats: dict[str, RouterStats] = {}
        for row in rows:
            if row.get("pxname") != self.backend or row.get("svname") not in SLOTS:
                continue
            stats[row["svname"]] = RouterStats(
                requests=as_int(row.get("stot")),
                responses_5xx=as_int(row.get("hrsp_5xx")),
                connection_errors=as_int(row.get("econ")) + as_int(row.get("eresp")),
                current_sessions=as_int(row.get("scur")),
            )
        return stats

    def drain(self, slot: str, timeout: float, *, sleep: Callable[[float], None] = time.sleep) -> None:
        """Waits (up to `timeout` s, on the router's monotonic clock) until HAProxy holds no
        session on `slot`; a router that does not answer holds none."""
        deadline = self.monotonic() + timeout
        while True:
            try:
                sessions = self.stats().get(slot, RouterStats()).current_sessions
            except PlatformError:
                return
            if sessions == 0:
                return
            if self.monotonic() >= deadline:
                log.warning("%s/%s: slot %s still holds %d sessions after %.0f s of drain",
                            self.service, self.env, slot, sessions, timeout)
                return
            sleep(0.1)

    def probe_public(self, path: str, timeout: float = 2.0) -> Health:
        """One request to the public address, through the router, as a school's browser makes it."""
        host, _, port = self.listen.rpartition(":")
        if host in ("", "0.0.0.0", "*", "::", "[::]"):
            host = "127.0.0.1"
        url = f"http://{host}:{port}{path}"
        try:
            with httpx.Client(timeout=timeout, trust_env=False) as client:
                resp = client.get(url)
        except httpx.HTTPError as exc:
            return Health(ok=False, detail=f"GET {url}: no answer ({type(exc).__name__})")
        return Health(ok=resp.status_code == 200, status=resp.status_code, detail=f"GET {url}: {resp.status_code}")

    # -- changing --------------------------------------------------------------------------------

    def set_weights(self, weights: Mapping[str, int]) -> None:
        """Moves traffic in one runtime API exchange, raising before lowering. Never 0 and 0."""
        target = checked_weights(weights)
        if not any(target.values()):
            raise PlatformError("refusing to set every weight to 0: that routes the service to nothing")
        with StateLock.at(self._path("router.lock")):
            self.ensure_running()
            current = self.weights()
            # Raise before lowering: if a request lands between the two commands it meets a split,
            # never a backend with every weight at 0 (which HAProxy answers with 503).
            order = sorted(SLOTS, key=lambda s: target[s] <= current[s])
            command = ";".join(f"set server {self.backend}/{s} weight {target[s]}" for s in order)
            started = time.perf_counter()
            answer = self.admin(command)
            self.last_call_seconds = time.perf_counter() - started
            if answer.strip():
                raise PlatformError(f"HAProxy refused the weights {format_weights(target)}", output=answer.strip())
            self._save(target)
            live = self.weights()
            if live != target:
                raise PlatformError(f"HAProxy reports {format_weights(live)} after setting {format_weights(target)}")
        log.info("%s/%s: weights %s (%.2f ms)", self.service, self.env, format_weights(target),
                 self.last_call_seconds * 1000)

    @contextlib.contextmanager
    def prepared(self, weights: Mapping[str, int]) -> Iterator[PreparedFlip]:
        """A weight change made ready to fire: the router's lock held, its state read, the
        command written and the admin connection open. The body calls `send()` and then
        `answer()` on the yielded flip when the moment comes, so several routers flip back to
        back (a release sends to every router before it reads any answer). Not sent: nothing
        changed."""
        target = checked_weights(weights)
        if not any(target.values()):
            raise PlatformError("refusing to set every weight to 0: that routes the service to nothing")
        with StateLock.at(self._path("router.lock")):
            self.ensure_running()
            current = self.weights()
            order = sorted(SLOTS, key=lambda s: target[s] <= current[s])  # raise before lowering
            command = ";".join(f"set server {self.backend}/{s} weight {target[s]}" for s in order)
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.admin_timeout)
                sock.connect(str(self.socket_path()))
            except OSError as exc:
                raise RouterDown(f"HAProxy's admin socket does not answer ({exc})") from None
            flip = PreparedFlip(sock, command)
            try:
                yield flip
            finally:
                sock.close()
            if flip.sent_at is None:
                return
            if flip.reply is None:
                flip.answer()
            self.last_call_seconds = flip.seconds
            if (flip.reply or "").strip():
                raise PlatformError(f"HAProxy refused the weights {format_weights(target)}", output=(flip.reply or "").strip())
            self._save(target)
            live = self.weights()
            if live != target:
                raise PlatformError(f"HAProxy reports {format_weights(live)} after setting {format_weights(target)}")
        log.info("%s/%s: weights %s (%.2f ms, prepared)", self.service, self.env, format_weights(target),
                 (self.last_call_seconds or 0) * 1000)

    def follow(self, live: Mapping[str, int]) -> None:
        """Someone changed the weights by hand through the runtime API: remember theirs."""
        with StateLock.at(self._path("router.lock")):
            if dict(live) != self.saved_weights():
                self._save(dict(live))

    def ensure_running(self) -> bool:
        """Starts HAProxy when none runs for this service; True when it started one now.

        A live HAProxy whose admin socket is slow is left alone (PlatformError): stopping it would
        drop every connection of every school. The configuration is generated with the last
        weights, and the server-state file carries them too.
        """
        if self.answers():
            return False
        with StateLock.at(self._path("router.lock")):
            if self.answers():
                return False  # another thread or process started it while we waited
            pid = self.pid()
            if pid is not None:
                raise RouterDown(f"HAProxy of {self.service} (pid {pid}) runs but its admin socket does not answer; "
                                 f"recess leaves it running")
            self._start()
            return True

    def revive(self) -> Revival | None:
        """The watchdog's check: None while HAProxy lives (or was never started, or was stopped on
        purpose); else starts it again with the weights it had and says for how long it was down."""
        if not self.started():
            return None
        if self.pid() is not None or self.answers(timeout=0.5):
            self._last_seen_alive = self.monotonic()
            return None
        weights = self.saved_weights()
        seen = self._last_seen_alive
        try:
            started = self.ensure_running()
        except PlatformError as exc:
            return Revival(weights, None if seen is None else self.monotonic() - seen, error=f"{exc} {exc.output}".strip())
        now = self.monotonic()
        self._last_seen_alive = now
        if not started:
            return None
        return Revival(weights, None if seen is None else now - seen)

    def stop(self) -> None:
        """Stops HAProxy on purpose (tests, the demo's clean-up): the watchdog will not revive it."""
        with StateLock.at(self._path("router.lock")):
            pid = self.pid()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 3
                while alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.02)
                if alive(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            for name in ("haproxy.pid", "haproxy.cfg"):
                with contextlib.suppress(FileNotFoundError):
                    self._path(name).unlink()
            with contextlib.suppress(FileNotFoundError):
                self.socket_path().unlink()

    def config(self, weights: Mapping[str, int]) -> str:
        """The HAProxy configuration for this service, with the given weights."""
        servers = "\n".join(
            f"    server {slot} {self.slots[slot]} weight {int(weights.get(slot, 0))}" for slot in SLOTS
        )
        return f"""\
# Generated by recess for service {self.service} ({self.env}). Do not edit: it is rewritten at
# every HAProxy start with the live weights. Traffic moves through the runtime API, not this file.
global
    daemon
    pidfile {self._path("haproxy.pid")}
    stats socket {self.socket_path()} mode 600 level admin
    server-state-file {self._path("haproxy.state")}
    maxconn 2000

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    # A restarted HAProxy takes each server's weight from the state file written at every change.
    load-server-state-from-file global
    # A request that meets a slot going away is tried again (on the other slot if needed).
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout
    # Start even when a slot's host name does not resolve yet.
    default-server init-addr last,libc,none

frontend public
    bind {self.listen}
    default_backend {self.backend}

backend {self.backend}
    balance roundrobin
{servers}
"""  # ends with a newline: HAProxy refuses a file without one

    # -- the runtime API -------------------------------------------------------------------------

    def admin(self, command: str, timeout: float | None = None) -> str:
        """One runtime API exchange: commands separated by ';' run in that one connection."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.admin_timeout if timeout is None else timeout)
                sock.connect(str(self.socket_path()))
                sock.sendall(command.encode() + b"\n")
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        except OSError as exc:
            raise RouterDown(f"HAProxy's admin socket does not answer ({exc})") from None
        return b"".join(chunks).decode(errors="replace")

    def socket_path(self) -> Path:
        path = self.state_dir / "haproxy.sock"
        if len(str(path)) <= 90:
            return path
        # HAProxy refuses a stats socket path over 97 bytes (the kernel's limit is 108): deep state
        # directories get a stable short name in the temp folder instead, derived from the state
        # directory.
        digest = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"recess-{digest}.sock"

    # -- inside ----------------------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        return self.state_dir / name

    def _save(self, weights: Mapping[str, int]) -> None:
        data = {s: int(weights[s]) for s in SLOTS}
        stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        write_atomic(self._path("weights.json"), json.dumps({**data, "updated_at": stamp}) + "\n")
        try:
            state = self.admin(f"show servers state {self.backend}")
        except PlatformError as exc:
            log.warning("%s/%s: could not write the server-state file: %s", self.service, self.env, exc)
            return
        if state.startswith("1"):
            write_atomic(self._path("haproxy.state"), state if state.endswith("\n") else state + "\n")

    def _start(self) -> None:
        binary = shutil.which(self.haproxy_bin)
        if not binary:
            raise PlatformError(HAPROXY_MISSING)
        config_path = self._path("haproxy.cfg")
        write_atomic(config_path, self.config(self.saved_weights()))
        with contextlib.suppress(FileNotFoundError):
            self.socket_path().unlink()
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
            raise PlatformError(f"HAProxy did not start for {self.service} (exit code {done.returncode})",
                                output=tail(out_path))
        deadline = time.monotonic() + 5
        while not self.answers():
            if time.monotonic() > deadline:
                raise PlatformError("HAProxy started but its admin socket does not answer", output=tail(out_path))
            time.sleep(0.02)
        log.info("%s/%s: HAProxy started on %s with weights %s", self.service, self.env, self.listen,
                 format_weights(self.saved_weights()))
