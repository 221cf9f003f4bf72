"""The build step's helper: makes a version ready to start, whatever the platform.

    built = build_version(cfg, platform, "web", "production", "v2", progress=post_line)
    built is None            no build configured: the step is skipped
    built.skipped            the image exists already (rollbacks and redeploys never rebuild)

A `docker` service builds (or pulls) IMAGE:VERSION through its driver (DockerPlatform.build). Any
other platform may set `[services.NAME] build = "shell command"`, run with the shell in the
configuration's folder, with the allow-listed environment and the deploy's RECESS_* values. A
failure raises PlatformError carrying the last 40 lines of output.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from platforms.base import Platform, PlatformError
from platforms.docker import FAIL_LINES, Built
from platforms.environment import child_env
from platforms.hooks import GROUP_KILLED, run_hook, seconds

if TYPE_CHECKING:
    from commands.config import Config

BUILD_TIMEOUT = 3600.0
PROGRESS_EVERY = 5.0  # seconds between two edits of the progress line


class Throttled:
    """Passes a progress text on at most once every `every` seconds (the first one at once)."""

    def __init__(self, say: Callable[[str], None], every: float = PROGRESS_EVERY,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.say, self.every, self.monotonic = say, every, monotonic
        self.last_at: float | None = None
        self.last_text = ""

    def __call__(self, text: str) -> None:
        now = self.monotonic()
        if self.last_at is not None and now - self.last_at < self.every:
            return
        self.last_at, self.last_text = now, text
        self.say(text)


def build_version(cfg: Config, platform: Platform, service: str, env: str, version: str, *,
                  progress: Callable[[str], None] = lambda text: None, rollback: bool = False,
                  timeout: float = BUILD_TIMEOUT) -> Built | None:
    """With `rollback`, nothing is built: the version was built when it was first deployed (a
    docker rollback whose image is gone fails, rather than build today's code under its tag)."""
    spec = cfg.services[service]
    build = getattr(platform, "build", None)
    if spec.platform == "docker" and callable(build):
        return build(version, progress, may_build=not rollback)
    if not spec.build:
        return None
    if rollback:
        return Built("skipped: a rollback returns to a version built before", skipped=True)
    env_vars = child_env(spec, {"RECESS_SERVICE": service, "RECESS_VERSION": version, "RECESS_ENV": env})
    started = time.monotonic()
    progress("running the build command")
    try:
        ran = run_hook(spec.build, cwd=cfg.base_dir, env=env_vars, timeout=timeout)
    except OSError as exc:
        raise PlatformError(f"cannot run the build command: {exc}") from None
    last = "\n".join(ran.output.strip().splitlines()[-FAIL_LINES:])
    if ran.timed_out:
        raise PlatformError(f"the build command ran longer than {seconds(timeout)}; {GROUP_KILLED}", output=last)
    if ran.code != 0:
        raise PlatformError(f"the build command exited {ran.code}", output=last)
    return Built(f"the build command succeeded in {time.monotonic() - started:.1f} s")
