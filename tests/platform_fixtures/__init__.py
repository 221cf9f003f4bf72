"""Helpers for the platform driver tests: free ports, configs, and keep-alive traffic."""

from __future__ import annotations

import http.client
import socket
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from commands.config import Config, parse_config

HERE = Path(__file__).parent
DEMO_RUN = f"{sys.executable} -m demo.app --port {{port}} --version {{version}}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_config(base_dir: Path, *, run: str = DEMO_RUN, migrate: str | None = None) -> Config:
    """A config with one `local` service, web, on three free ports; state under base_dir."""
    local: dict[str, Any] = {
        "listen": f"127.0.0.1:{free_port()}",
        "slots": {"blue": f"127.0.0.1:{free_port()}", "green": f"127.0.0.1:{free_port()}"},
        "run": run,
    }
    if migrate:
        local["migrate"] = migrate
    data = {"services": {"web": {"platform": "local", "health_path": "/api/v1/health", "local": local}}}
    return parse_config(data, base_dir=base_dir)


def command_config(base_dir: Path, **commands: str) -> Config:
    data = {"services": {"web": {"platform": "command", "command": commands}}}
    return parse_config(data, base_dir=base_dir)


def get(address: str, path: str = "/version", timeout: float = 2.0) -> tuple[int, str]:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.02) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class KeepAliveClients:
    """N threads, each with one keep-alive connection to `address`, asking GET /version in a loop.

    A request fails when it raises or answers anything but 200; a failed connection is replaced.
    """

    def __init__(self, address: str, clients: int = 20) -> None:
        self.host, port = address.rsplit(":", 1)
        self.port = int(port)
        self.clients = clients
        self.ok = 0
        self.failed: list[str] = []
        self.versions: Counter[str] = Counter()
        self.connections_opened = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self) -> KeepAliveClients:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)

    def _run(self) -> None:
        conn = None
        while not self._stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
                with self._lock:
                    self.connections_opened += 1
            try:
                conn.request("GET", "/version")
                resp = conn.getresponse()
                body = resp.read().decode()
                outcome = None if resp.status == 200 else f"HTTP {resp.status}: {body[:80]}"
            except (OSError, http.client.HTTPException) as exc:
                outcome = f"{type(exc).__name__}: {exc}"
                conn.close()
                conn = None
            with self._lock:
                if outcome is None:
                    self.ok += 1
                    self.versions[body] += 1
                else:
                    self.failed.append(outcome)
        if conn is not None:
            conn.close()
