"""Checks made before recess touches Slack: anything that would fail later fails now, clearly."""

from __future__ import annotations

import shutil

from commands.config import Config, ConfigError
from commands.freezes import current_calendar
from storage.db import Store


def preflight(cfg: Config) -> None:
    """Raises ConfigError with a message naming the file and what is wrong."""
    try:
        current_calendar(cfg, Store(cfg.database_path))
    except ValueError as exc:  # a holiday calendar that does not parse
        raise ConfigError(f"{cfg.source}: {exc}") from None
    for name, svc in cfg.services.items():
        if svc.migrations and not cfg.path(svc.migrations).is_dir():
            raise ConfigError(f"{cfg.source}: services.{name}.migrations: no such folder {svc.migrations!r} (relative to the config's folder)")
    if any(s.migrations for s in cfg.services.values()):
        from commands.migrations import LintUsageError, check_linter

        try:
            check_linter()
        except LintUsageError as exc:
            raise ConfigError(f"{cfg.source}: services with `migrations` need the squawk linter: {exc}") from None
    if any(s.platform == "local" for s in cfg.services.values()) and not shutil.which("haproxy"):
        raise ConfigError(f"{cfg.source}: services with platform 'local' need HAProxy: apt-get install haproxy")
