"""`recess serve` as a real child process, for the tests and the benchmarks that kill it.

`Serve(config, slack_url)` spawns `recess serve` on a free loopback port with the fake Slack's
API URL, a signing secret and a bot token; its stdout and stderr (the bot's log) go to a file
that `log()` reads, so a failure can show what the bot said. `wait_healthy()` waits for
/healthz 200 (and fails at once, with the log, if the process exits first); `kill()` is
SIGKILL; `restart()` starts a new process on the same configuration, so on the same database;
`stop()` is SIGTERM, then SIGKILL if it does not stop in time. `Bot` is a `Serve` already
healthy when made, as the crash-recovery tests start theirs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from tests.kit.ports import free_port
from tests.kit.signer import SlackSender

SECRET = "test-signing-secret"
PYTHON_CLI = (sys.executable, "-m", "bot.cli")


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:  # noqa: ANN401
    """The predicate's first truthy value, polled every 50 ms; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Serve:
    """One `recess serve` process; `args` go after `serve` (e.g. "--standby")."""

    def __init__(self, config: Path, slack_url: str, *args: str, secret: str = SECRET, crash_at: str | None = None,
                 env: dict[str, str] | None = None, log: Path | None = None, log_level: str = "INFO",
                 port: int | None = None, cwd: Path | None = None, command: Sequence[str] = PYTHON_CLI,
                 bot_token: str = "xoxb-test") -> None:
        self.config, self.slack_url, self.args = config, slack_url, args
        self.options = {"secret": secret, "env": env, "log_level": log_level, "cwd": cwd, "command": command,
                        "bot_token": bot_token}
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log or config.parent / f"serve-{self.port}.log"
        self.sender = SlackSender(self.url, secret)
        child_env = {k: v for k, v in os.environ.items() if k not in ("RECESS_CRASH_AT", "SLACK_APP_TOKEN")}
        child_env.update({"RECESS_CONFIG": str(config), "SLACK_API_URL": slack_url, "SLACK_SIGNING_SECRET": secret,
                          "SLACK_BOT_TOKEN": bot_token, "RECESS_LOG_LEVEL": log_level, **(env or {})})
        if crash_at:
            child_env["RECESS_CRASH_AT"] = crash_at
        self.spawned = time.monotonic()
        with self.log_path.open("ab") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [*command, "--config", str(config), "serve", "--host", "127.0.0.1", "--port", str(self.port), *args],
                cwd=cwd, env=child_env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def healthy(self) -> bool:
        try:
            return httpx.get(self.url + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_healthy(self, timeout: float = 30.0, poll: float = 0.05) -> float:
        """Waits for /healthz 200; returns the seconds since the process was spawned."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"recess serve exited {self.proc.returncode}; its log ({self.log_path}):\n{self.log()}")
            if self.healthy():
                return time.monotonic() - self.spawned
            if time.monotonic() > deadline:
                raise RuntimeError(f"recess serve did not answer /healthz within {timeout:.0f} s; its log "
                                   f"({self.log_path}):\n{self.log()}")
            time.sleep(poll)

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self, timeout: float = 20.0) -> int:
        """SIGKILL, as a crash would; returns the exit code (-9)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(timeout=timeout)

    def restart(self, *, crash_at: str | None = None, log: Path | None = None, timeout: float = 60.0) -> Serve:
        """SIGKILLs this process, then starts a new one on the same configuration, so on the same
        database (on a new port), and waits for its /healthz (unless it is told where to crash)."""
        self.kill()
        again = Serve(self.config, self.slack_url, *self.args, **self.options, crash_at=crash_at, log=log)
        if not crash_at:
            again.wait_healthy(timeout)
        return again

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Bot(Serve):
    """A `Serve` that answers /healthz once made (the crash-recovery tests' bot), logging warnings only."""

    def __init__(self, config: Path, slack_url: str, *args: str, crash_at: str | None = None, timeout: float = 60.0,
                 **options: Any) -> None:  # noqa: ANN401
        options.setdefault("log_level", "WARNING")
        super().__init__(config, slack_url, *args, crash_at=crash_at, **options)
        try:
            self.wait_healthy(timeout)  # 60 s by default: a busy machine boots slowly
        except BaseException:
            self.stop()
            raise
