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


def rollback_in_flight(d: Deployer, row: dict[str, Any]) -> dict[str, Any] | None:
    """Recovery of a rollback on Railway, read from Railway: the deployment `deploymentRollback`
    made when the bot died before it read its ID (the mutation returns a Boolean only).

    It is the service instance's latest deployment, runs the rollback's target version, and is
    newer than the deployment that served when the rollback began (a v1 deployment newer than the
    v2 one can only be a redeploy of v1). It is recorded in the rollback's target slot, as
    `shift` would have done, and returned (with `retained`: the deployment it copies, when recess
    knew it); None when Railway made no such deployment (the bot died before the mutation)."""
    from platforms.railway import version_of
    from storage import deploys as rows

    if row["kind"] != "rollback" or not row["green_slot"] or not row["blue_slot"] or rows.steps(d.store, row["id"]):
        return None  # not the one-click rollback (a redeploy through the pipeline has steps and is recovered as one)
    platform = d.platform_for(row["service"], row["env"])

    try:
        latest = platform.latest_deployment()  # type: ignore[attr-defined]
        left_id = platform.deployment_in(row["blue_slot"])  # type: ignore[attr-defined]
        left = platform.deployment(left_id) if left_id else None  # type: ignore[attr-defined]
    except PlatformError as exc:
        log.warning("deploy %s: could not read Railway's deployments: %s", row["id"], exc)
        return None
    if not latest or version_of(latest) != row["version"]:
        return None
    if left is not None and (latest["id"] == left["id"] or str(latest.get("createdAt")) <= str(left.get("createdAt"))):
        return None
    retained = platform.deployment_in(row["green_slot"])  # type: ignore[attr-defined]
    platform.adopt(row["green_slot"], latest["id"])  # type: ignore[attr-defined]
    return {**latest, "retained": retained if retained != latest["id"] else None}


def decide_rollback(d: Deployer, row: dict[str, Any], rolling: dict[str, Any], stands: bool) -> str:
    """The end of a rollback recovery found in flight on Railway (rollback_in_flight), after
    its deployment was followed: what Railway shows now decides, and the thread says it."""
    from commands.pipeline import end_attention
    from commands.recovery import _stands, _tell
    from commands.states import move

    platform = d.platform_for(row["service"], row["env"])
    dep_id = rolling["id"]
    url = d.cfg.services[row["service"]].railway.public_url  # type: ignore[union-attr]
    if stands:
        _stands(d, row, d.clock(), "deploymentRollback")
        _tell(d, row, f"the bot was killed after asking Railway to roll back to {row['version']}. Railway's rollback "
                      f"deployment {dep_id} finished (SUCCESS) and serves {row['version']} on {url}; the rollback "
                      f"stands and deploy #{row['rollback_of']} is rolled back.")
        return "finished: Railway rolled back"
    try:
        final = platform.deployment(dep_id)  # type: ignore[attr-defined]
        serving, _ = platform.deployments_now()  # type: ignore[attr-defined]
    except PlatformError as exc:
        end_attention(d, row, f"recovery could not read Railway's rollback deployment {dep_id}: {exc}",
                      who="recovery of ")
        return "needs attention: Railway unreadable"
    from platforms.railway import version_of

    if final["status"] in IN_PROGRESS:
        end_attention(d, row, f"Railway's rollback deployment {dep_id} of {row['version']} is still {final['status']} "
                              f"after the health timeout", who="recovery of ")
        return "needs attention: rollback deployment in progress"
    if rolling.get("retained"):  # the retained deployment is still there for another click
        platform.adopt(row["green_slot"], rolling["retained"])  # type: ignore[attr-defined]
    now_serves = (f"deployment {serving['id']} ({version_of(serving)}, {serving['status']}) serves"
                  if serving else "no deployment serves")
    outcome = f"Railway's rollback deployment {dep_id} of {row['version']} ended {final['status']}; {now_serves}"
    move(d.store, row["id"], "running", "failed", finished_at=d.clock(), outcome=outcome[:500])
    _tell(d, row, f"the bot was killed after asking Railway to roll back to {row['version']}. {outcome}. "
                  f"Click Roll back again if it is still needed.")
    return "Railway's rollback deployment failed"


def attention_advice(platform: Platform, row: dict[str, Any]) -> str:
    """What a person does about a `needs_attention` deploy of a Railway service, in Railway's
    terms: which deployment serves (read from Railway now), where to look, how to go back."""
    from platforms.railway import version_of

    rw = platform.railway  # type: ignore[attr-defined]

    def named(dep: dict[str, Any]) -> str:
        return f"deployment {dep['id']} ({version_of(dep) or 'unknown version'}, {dep['status']})"

    try:
        serving, latest = platform.deployments_now()  # type: ignore[attr-defined]
        seen = (f"Railway shows {named(serving)} serving" if serving else "Railway shows no deployment serving")
        if latest and (serving is None or latest["id"] != serving["id"]):
            seen += f" and {named(latest)} as the latest"
    except PlatformError as exc:
        seen = f"recess could not read Railway's deployments ({exc})"
    return (f"A person needs to look now, in Railway: {seen}. Open service {rw.service_id} (project {rw.project_id}, "
            f"environment {rw.environments[row['env']]}) in Railway's dashboard and check its deployments: which one "
            f"is active, whether one is still building or failed, and its deploy logs. To go back to a previous "
            f"version, use Rollback on that deployment there (Railway's `deploymentRollback`); there is no router or "
            f"slot of recess's to fix, and `recess down` does not apply to Railway services. Once one deployment "
            f"serves and its healthcheck passes, recess notices within a minute and closes deploy #{row['id']}; "
            f"until then the service stays held.")


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
        what = (f"the bot was killed after asking Railway to roll back to {row['version']}. Railway's rollback "
                f"deployment {deployment_id} is" if row["kind"] == "rollback"
                else f"Railway deployment {deployment_id} of {row['version']} is still")
        d.notify.thread(row["id"], f":recycle: Recovery: {what} {dep['status']}; following it to its end before deciding.")
        spec = d.cfg.services[row["service"]]
        final = platform.follow(deployment_id, spec.health_timeout.total_seconds())  # type: ignore[attr-defined]
    except PlatformError as exc:
        log.warning("deploy %s: could not follow Railway deployment %s: %s", row["id"], deployment_id, exc)
        return f"could not follow Railway deployment {deployment_id}: {exc}"
    return f"Railway deployment {deployment_id} ended {final['status']}"
