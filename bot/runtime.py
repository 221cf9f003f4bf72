"""Everything a running recess holds: config, store, Slack client, policy, clock, workers.

Built once by `recess serve` (or a test) and handed to the Bolt app factory and the HTTP server.
The clock is injectable so queues and windows are tested at any instant without waiting.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.health import HealthReport
from bot.health import check as health_check
from bot.outbox import Outbox
from bot.slack_client import make_client
from bot.webhooks import Webhooks
from commands.config import Config
from commands.policy import Policy
from storage.db import Store

log = logging.getLogger("recess")

Clock = Callable[[], dt.datetime]


def system_clock() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Runtime:
    cfg: Config
    store: Store
    client: WebClient
    policy: Policy
    clock: Clock
    outbox: Outbox
    worker: ThreadPoolExecutor
    scheduler: BackgroundScheduler
    signing_secret: str
    extras: dict[str, Any] = field(default_factory=dict)
    webhooks: Webhooks | None = None  # signed deploy and flag events out (bot/webhooks.py)
    # Answers to people run on executors of their own, never behind pipelines and bakes (`worker`):
    # slash commands and card clicks on `answers`, rollback clicks on `rollbacks`.
    answers: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=32, thread_name_prefix="recess-answer"))
    rollbacks: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=8, thread_name_prefix="recess-rollback"))

    def now(self) -> dt.datetime:
        return self.clock()

    def submit(self, fn: Callable[..., Any], *args: Any, on: ThreadPoolExecutor | None = None, **kwargs: Any) -> None:
        """Hands work off the listener pool (to `worker`, or the executor `on`); errors are
        logged, never raised into Bolt."""

        def guarded() -> None:
            try:
                fn(*args, **kwargs)
            except Exception:
                log.exception("background work %s failed", getattr(fn, "__name__", fn))

        (on or self.worker).submit(guarded)

    def start(self) -> None:
        self.outbox.start()
        if self.webhooks is not None:
            self.webhooks.start()
        if not self.scheduler.running:
            self.scheduler.start()
            log.info("scheduler started: queued deploys, retirements and the watchdogs run from now on")
        for hook in self.extras.get("on_start", []):
            hook(self)

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        self.outbox.stop()
        if self.webhooks is not None:
            self.webhooks.stop()
        for pool in (self.worker, self.answers, self.rollbacks):
            pool.shutdown(wait=False, cancel_futures=True)

    def health(self) -> HealthReport:
        """What /healthz answers: a real write to the store, the scheduler, stuck deploys, the outbox."""
        return health_check(self.store, self.cfg, now=self.now(), scheduler_running=self.scheduler.running)

    def healthy(self) -> bool:
        return self.health().ok


def usergroup_members(client: WebClient) -> Callable[[str], list[str]]:
    def members_of(group: str) -> list[str]:
        resp = client.usergroups_users_list(usergroup=group)
        return list(resp.get("users") or [])

    return members_of


def build_runtime(
    cfg: Config,
    *,
    client: WebClient | None = None,
    clock: Clock = system_clock,
    signing_secret: str | None = None,
) -> Runtime:
    client = client or make_client()
    store = Store(cfg.database_path)
    policy = Policy(cfg, usergroup_members(client))
    outbox = Outbox(store, client)
    rt = Runtime(
        cfg=cfg,
        store=store,
        client=client,
        policy=policy,
        clock=clock,
        outbox=outbox,
        worker=ThreadPoolExecutor(max_workers=16, thread_name_prefix="recess-work"),
        scheduler=BackgroundScheduler(timezone=dt.UTC, job_defaults={"coalesce": True, "misfire_grace_time": None}),
        signing_secret=signing_secret if signing_secret is not None else os.environ.get("SLACK_SIGNING_SECRET", ""),
    )
    from bot.deploying import attach_deployer

    def describe(deploy_id: int) -> dict[str, Any] | None:
        from bot.api import deploy_json
        from storage import deploys as rows

        d = rows.get(store, deploy_id)
        return deploy_json(rt, d) if d else None

    rt.webhooks = Webhooks(store, cfg.webhooks, describe)
    attach_deployer(rt)
    return rt


def user_timezone(rt: Runtime, user: str) -> str:
    """The Slack user's timezone (users.info, cached for an hour); UTC when Slack cannot say."""
    cache: dict[str, tuple[dt.datetime, str]] = rt.extras.setdefault("tz_cache", {})
    hit = cache.get(user)
    now = dt.datetime.now(dt.UTC)
    if hit and now - hit[0] < dt.timedelta(hours=1):
        return hit[1]
    lookup = rt.extras.get("lookup_client")
    if lookup is None:
        # Asked before the listener acks: one try with a short timeout, never Slack's retries.
        lookup = rt.extras["lookup_client"] = make_client(rt.client.token, rt.client.base_url, timeout=2, retries=False)
    try:
        tz = lookup.users_info(user=user).get("user", {}).get("tz") or "UTC"
    except (SlackApiError, Exception):
        return "UTC"
    cache[user] = (now, tz)
    return tz
