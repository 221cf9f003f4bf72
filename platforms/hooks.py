"""Runs one shell hook (a `command` platform operation, a smoke test) so that a timeout ends it all.

`subprocess.run(..., shell=True, timeout=...)` kills only the shell on timeout: a child it started
(`kubectl ... &`, a script's own subprocess) lives on and can still move traffic minutes later.
Here each hook runs in its own session, so it and everything it starts share one process group,
and on timeout that whole group gets SIGTERM, then SIGKILL after a short grace:

    result = run_hook("./shift.sh", cwd=workdir, env=env, timeout=60)
    code, stdout, stderr = result          # code is None when the hook ran out of time
    if result.timed_out:
        raise SomeError(f"shift command timed out after {seconds(60)}; {GROUP_KILLED}")

Whatever the hook printed before it was killed is kept. A process that must outlive its hook (a
server the `start` hook launches) has to leave the group itself (`setsid`, or the platform's own
daemon, like `docker run -d`) and must not hold the hook's stdout or stderr open.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from platforms.environment import child_env

GRACE = 2.0  # seconds between SIGTERM and SIGKILL
GROUP_KILLED = "its process group was killed"


class HookResult(NamedTuple):
    code: int | None  # None: the hook ran out of time and its process group was killed
    stdout: str
    stderr: str

    @property
    def timed_out(self) -> bool:
        return self.code is None

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_hook(
    command: str,
    *,
    cwd: str | Path | None,
    env: Mapping[str, str] | None,
    timeout: float | None,
    grace: float = GRACE,
) -> HookResult:
    """Runs `command` with the shell, in a session of its own; raises OSError if it cannot start.

    `env` is the hook's whole environment (build it with platforms.environment.child_env); None
    gives it the base allow-list only, never recess's own environment."""
    proc = subprocess.Popen(
        command,
        shell=True,
        cwd=cwd,
        env=dict(env) if env is not None else child_env(None),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as first:
        _end_group(proc, grace)
        try:
            out, err = proc.communicate(timeout=grace)
        except subprocess.TimeoutExpired as exc:
            # Something left the group and still holds the pipes: keep what arrived, stop reading.
            out, err = exc.stdout or first.stdout, exc.stderr or first.stderr
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            proc.wait()
        return HookResult(None, _text(out), _text(err))
    except BaseException:
        _end_group(proc, 0)
        proc.wait()
        raise
    return HookResult(proc.returncode, _text(out), _text(err))


def seconds(limit: float) -> str:
    """A timeout as people wrote it: "60 s", "0.5 s"."""
    return f"{limit:.0f} s" if limit >= 10 else f"{limit:g} s"


def _end_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM to the hook's whole process group; SIGKILL to what is left after `grace` seconds."""
    pgid = proc.pid  # start_new_session: the shell leads its own session and group
    if not _signal_group(pgid, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()  # reap the shell, or it stays in the group as a zombie
        if not _signal_group(pgid, 0):
            return
        time.sleep(0.02)
    _signal_group(pgid, signal.SIGKILL)


def _signal_group(pgid: int, sig: int) -> bool:
    """False when no process of the group is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a member changed its user; it still exists
    return True


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data
