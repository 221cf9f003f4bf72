"""Helpers for the platform driver tests: free ports and configs (keep-alive traffic: tests/kit/load.py)."""

from __future__ import annotations

import http.client
import sys
import time
from pathlib import Path
from typing import Any

from commands.config import Config, parse_config
from tests.kit.ports import free_port  # noqa: F401 (also imported from here)

HERE = Path(__file__).parent
DEMO_RUN = f"{sys.executable} -m demo.app --port {{port}} --version {{version}}"




def local_config(base_dir: Path, *, run: str = DEMO_RUN, migrate: str | None = None) -> Config:
    """A config with one `local` service, web, on three free ports; state under base_dir."""
    local: dict[str, Any] = {
        "listen": f"127.0.0.1:{free_port()}",
        "slots": {"blue": f"127.0.0.1:{free_port()}", "green": f"127.0.0.1:{free_port()}"},
        "run": run,
    }
    if migrate:
        local["migrate"] = migrate
    # The demo app's failure knobs reach its processes only when named (platforms/environment.py).
    knobs = ["DEMO_EXIT_AT_START", "DEMO_FAIL_AFTER_SECONDS", "DEMO_HEALTH_FAIL", "DEMO_ACCESS_LOG"]
    data = {"services": {"web": {"platform": "local", "health_path": "/api/v1/health", "local": local,
                                 "pass_env": knobs}}}
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
