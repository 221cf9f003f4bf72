"""Where deploys land: one protocol (platforms.base), one driver per kind of platform.

    platform = make_platform(cfg, "web", "production")
    platform.start("green", "v2.4.1"); platform.shift({"blue": 0, "green": 100})
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from platforms.base import (
    SLOTS,
    Health,
    Platform,
    PlatformError,
    Result,
    RouterStats,
    SlotState,
    Traffic,
    other_slot,
)
from platforms.command import CommandPlatform
from platforms.docker import DockerPlatform
from platforms.local import LocalPlatform
from platforms.railway import RailwayPlatform

if TYPE_CHECKING:
    from commands.config import Config

__all__ = [
    "SLOTS",
    "CommandPlatform",
    "DockerPlatform",
    "Health",
    "LocalPlatform",
    "Platform",
    "PlatformError",
    "RailwayPlatform",
    "Result",
    "RouterStats",
    "SlotState",
    "Traffic",
    "make_platform",
    "other_slot",
]


def make_platform(cfg: Config, service: str, env: str) -> Platform:
    """The driver for `service` in `env`, keeping its state under `<state_dir>/<service>.<env>/`.

    Commands run in the configuration file's folder, so relative paths in them mean what they
    mean in the file.
    """
    spec = cfg.services.get(service)
    if spec is None:
        known = ", ".join(sorted(cfg.services)) or "none configured"
        raise PlatformError(f"unknown service {service!r} (known: {known})")
    if env not in cfg.service_environments(service):
        raise PlatformError(
            f"service {service!r} is not deployed to {env!r} "
            f"(its environments: {', '.join(cfg.service_environments(service))})"
        )
    state_dir = cfg.state_dir / f"{service}.{env}"
    if spec.platform == "local":
        return LocalPlatform(service, env, spec, state_dir, workdir=cfg.base_dir)
    if spec.platform == "docker":
        return DockerPlatform(service, env, spec, state_dir, workdir=cfg.base_dir)
    if spec.platform == "command":
        return CommandPlatform(service, env, spec, state_dir, workdir=cfg.base_dir)
    if spec.platform == "railway":
        return RailwayPlatform(service, env, spec, state_dir)
    raise PlatformError(f"service {service!r}: unknown platform {spec.platform!r}")
