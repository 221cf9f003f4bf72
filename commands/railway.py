"""What the deploy domain does differently on Railway, in one place: checks at `/deploy`, the
thread's words about Railway's deployments, and recovery of a deployment still in progress.

Railway hands traffic over itself (platforms/railway.py sets `hands_over`); the pipeline,
rollback and recovery call in here at a few marked points and are otherwise unchanged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from platforms.base import Platform, PlatformError

if TYPE_CHECKING:
    from commands.config import Config
    from commands.deploys import Deployer

log = logging.getLogger("recess.railway")


def request_problem(cfg: Config, service: str, env: str, *, canary: list[int] | None) -> str | None:
    """Why `/deploy` of a Railway service cannot be accepted as asked (None when it can)."""
    spec = cfg.services[service]
    if spec.platform != "railway" or spec.railway is None:
        return None
    if canary is not None:
        return (f"{service} runs on Railway, which cannot split traffic between two deployments, so `--canary` is "
                f"not possible there. Deploy without it: Railway moves all traffic once the new deployment's "
                f"healthcheck ({spec.health_path}) answers 200, and recess watches {spec.railway.public_url} after.")
    if not os.environ.get(spec.railway.token_env, "").strip():
        return (f"{service} cannot be deployed: the Railway token variable {spec.railway.token_env} "
                f"(services.{service}.railway.token_env) is not set in recess's environment. Nothing was stored.")
    if env not in spec.railway.environments:
        return f"services.{service}.railway.environments has no Railway environment ID for {env!r}"
    return None


def preflight_problems(cfg: Config) -> list[str]:
    """Start-up and `recess config check` errors: each names the key."""
    out = []
    for name, spec in cfg.services.items():
        if spec.platform == "railway" and spec.railway is not None:
            if not os.environ.get(spec.railway.token_env, "").strip():
                out.append(f"services.{name}.railway.token_env: the variable {spec.railway.token_env} is not set "
                           f"(a Railway {spec.railway.token_kind} token)")
    return out


@contextmanager
def waits_told(d: Deployer, service: str, env: str, say: Callable[[str], None]) -> Iterator[None]:
    """While a deploy runs on Railway, every rate-limit wait is said in its thread."""
    client = None
    try:
        client = getattr(d.platform_for(service, env), "client", None)
    except Exception:  # the platform cannot even be made: the pipeline says why at its first step
        client = None
    if client is None or not hasattr(client, "on_wait"):
        yield
        return
    client.on_wait = lambda text: say(f":hourglass_flowing_sand: {text}")
    try:
        yield
    finally:
        client.on_wait = None


def preflight_warnings(cfg: Config) -> list[str]:
    """Things that work but surprise: a health_timeout shorter than a Railway deployment takes."""
    out = []
    for name, spec in cfg.services.items():
        if spec.platform == "railway" and spec.health_timeout.total_seconds() < 300:
            out.append(f"{cfg.source}: services.{name}.health_timeout is {spec.health_timeout.total_seconds():.0f} s; "
                       f"on Railway it counts from the deploy call, through the build or image pull and Railway's "
                       f"own healthcheck (300 s by default): consider \"10m\"")
    return out


def started_note(platform: Platform, row: dict[str, Any], green: str) -> str:
    """start_green's line: the new deployment's ID and the one serving before (kept in SQLite
    with the step, so the thread and the history say which Railway deployments a deploy moved)."""
    new = platform.deployment_in(green)  # type: ignore[attr-defined]
    before = platform.deployment_in("blue" if green == "green" else "green")  # type: ignore[attr-defined]
    was = f"; deployment {before} serves until Railway's healthcheck passes" if before and row.get("blue_slot") else ""
    return f"{row['version']} is Railway deployment {new}{was}"


IN_PROGRESS = ("INITIALIZING", "QUEUED", "WAITING", "BUILDING", "DEPLOYING")


def in_progress(d: Deployer, row: dict[str, Any]) -> bool:
    """Whether the deployment recess started for this deploy is still building or deploying."""
    platform = d.platform_for(row["service"], row["env"])
    deployment_id = platform.deployment_in(row["green_slot"]) if row["green_slot"] else None  # type: ignore[attr-defined]
    if deployment_id is None:
        return False
    try:
        return platform.deployment(deployment_id)["status"] in IN_PROGRESS  # type: ignore[attr-defined]
    except PlatformError:
        return False


def follow_in_progress(d: Deployer, row: dict[str, Any]) -> str | None:
    """Recovery on Railway: a deployment recess started that is still BUILDING or DEPLOYING is
    followed to its end before anything is decided (Railway would hand over on its own anyway).
    Returns what happened in words, or None when nothing was in progress."""
    platform = d.platform_for(row["service"], row["env"])
    green = row["green_slot"]
    deployment_id = platform.deployment_in(green) if green else None  # type: ignore[attr-defined]
    if deployment_id is None:
        return None
    try:
        dep = platform.deployment(deployment_id)  # type: ignore[attr-defined]
        if dep["status"] not in IN_PROGRESS:
            return None
        d.notify.thread(row["id"], f":recycle: Recovery: Railway deployment {deployment_id} of {row['version']} is still "
                                   f"{dep['status']}; following it to its end before deciding.")
        spec = d.cfg.services[row["service"]]
        final = platform.follow(deployment_id, spec.health_timeout.total_seconds())  # type: ignore[attr-defined]
    except PlatformError as exc:
        log.warning("deploy %s: could not follow Railway deployment %s: %s", row["id"], deployment_id, exc)
        return f"could not follow Railway deployment {deployment_id}: {exc}"
    return f"Railway deployment {deployment_id} ended {final['status']}"
