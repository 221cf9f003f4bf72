"""Checks made before recess touches Slack: anything that would fail later fails now, clearly."""

from __future__ import annotations

import os
import shutil

from commands.config import Config, ConfigError
from commands.freezes import current_calendar
from storage.db import Store

# OFREP keys that are examples, not secrets: a server started with one is open to anyone who read
# the example configuration.
PLACEHOLDER_KEYS = {"change-me", "changeme", "change_me", "replace-me", "secret", "password", "test", "example"}
MIN_KEY_LENGTH = 16


def preflight(cfg: Config) -> list[str]:
    """Raises ConfigError with a message naming the file and what is wrong; returns warnings
    (things that work but that an operator should know)."""
    for n, key in enumerate(cfg.flags.api_keys, start=1):
        if key.strip().lower() in PLACEHOLDER_KEYS or len(key) < MIN_KEY_LENGTH:
            raise ConfigError(
                f"{cfg.source}: flags.api_keys: key #{n} is a placeholder or shorter than {MIN_KEY_LENGTH} characters; "
                f"set a random one (python3 -c 'import secrets; print(secrets.token_urlsafe(24))'), "
                f"or leave api_keys empty to keep OFREP closed")
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
    from commands.railway import preflight_problems

    railway = preflight_problems(cfg)
    if railway:
        raise ConfigError("\n".join(f"{cfg.source}: {p}" for p in railway))
    from commands.railway import preflight_warnings

    warnings = preflight_warnings(cfg)
    if not cfg.access.deployers:
        for name, env in cfg.environments.items():
            if env.respect_windows:
                warnings.append(f"{cfg.source}: environments.{name} respects school windows, but [access] deployers "
                                f"is empty, so anyone in the workspace can request deploys to it")
    for i, hook in enumerate(cfg.webhooks):
        if not os.environ.get(hook.secret_env):
            warnings.append(f"{cfg.source}: webhooks[{i}].secret_env: {hook.secret_env} is not set, so deliveries to "
                            f"{hook.url} cannot be signed and are dropped (each with an error line in the log)")
    return warnings
