"""Wires the deploy domain into a running bot: Slack through the outbox, platforms, the scheduler."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable

from bot.runtime import Runtime
from commands.deploys import Deployer
from platforms.base import Platform

log = logging.getLogger(__name__)


class OutboxNotifier:
    """The deploy domain's Notifier: every message is queued in SQLite and sent in order."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._lines: dict[tuple[int, str], int] = {}  # (deploy, key) -> outbox row of the posted line
        self._lines_guard = threading.Lock()

    def _card_of(self, deploy_id: int) -> tuple[int, str]:
        """Where a deploy's news goes: a release member's to its release's card and thread, with the
        member's name in front; everything else to its own."""
        from storage import deploys as rows

        d = rows.get(self.rt.store, deploy_id)
        if rows.is_member(d):
            return d["release_id"], f"*{d['service']}*: "
        return deploy_id, ""

    def post_card(self, deploy_id: int) -> None:
        self.rt.outbox.post_card(deploy_id, self.rt.cfg.bot.channel)
        self._events(deploy_id)

    def update_card(self, deploy_id: int) -> None:
        self.rt.outbox.update_card(self._card_of(deploy_id)[0])
        self._events(deploy_id)

    def _events(self, deploy_id: int) -> None:
        """Every change the card is told of may be a webhook event (bot/webhooks.py); derived
        from the stored deploy, so telling twice queues nothing twice."""
        if self.rt.webhooks is not None and self.rt.cfg.webhooks:
            try:
                self.rt.webhooks.observe(deploy_id)
            except Exception:  # an event not queued is caught up by the next notice; never fail a deploy
                log.exception("deploy %s: could not queue its webhook events", deploy_id)

    def thread(self, deploy_id: int, text: str, *, broadcast: bool = False, offer_rollback: bool = False) -> None:
        deploy_id, prefix = self._card_of(deploy_id)
        text = prefix + text
        blocks = None
        if offer_rollback:
            from bot.views.deploy import thread_rollback_blocks
            from storage import deploys as rows

            d = rows.get(self.rt.store, deploy_id)
            blocks = thread_rollback_blocks(text, d) if d else None
        self.rt.outbox.post(self.rt.cfg.bot.channel, text, blocks, deploy_id=deploy_id, thread=True, broadcast=broadcast)
        self._events(deploy_id)

    def thread_line(self, deploy_id: int, key: str, text: str) -> None:
        """A thread reply that later calls with the same `key` edit in place (the build's progress).

        The first call posts through the outbox; an edit is one `chat.update` of the posted message,
        made here and not queued: a progress edit that fails or finds the line not yet posted is
        skipped, and the next one shows the newer state anyway."""
        from storage import outbox as outbox_rows

        deploy_id, prefix = self._card_of(deploy_id)
        key, text = f"{prefix}{key}", prefix + text
        with self._lines_guard:
            row_id = self._lines.get((deploy_id, key))
            if row_id is None:
                self._lines[(deploy_id, key)] = self.rt.outbox.post(self.rt.cfg.bot.channel, text, deploy_id=deploy_id,
                                                                    thread=True)
                return
        row = outbox_rows.get(self.rt.store, row_id)
        if not row or not row.get("result_ts") or not row.get("channel"):
            return
        try:
            self.rt.client.chat_update(channel=row["channel"], ts=row["result_ts"], text=text)
        except Exception as exc:  # a progress edit is never worth failing a deploy for
            log.warning("deploy %s: could not edit its %s line: %s", deploy_id, key, exc)

    def channel(self, text: str) -> None:
        self.rt.outbox.post(self.rt.cfg.bot.channel, text)


class PlatformCache:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._made: dict[tuple[str, str], Platform] = {}
        self._lock = threading.Lock()

    def __call__(self, service: str, env: str) -> Platform:
        with self._lock:
            if (service, env) not in self._made:
                factory = self.rt.extras.get("platform_factory")
                if factory is None:
                    from platforms import make_platform as factory
                self._made[(service, env)] = factory(self.rt.cfg, service, env)
            return self._made[(service, env)]


def scheduler_arm(rt: Runtime) -> Callable[[str, dt.datetime, Callable[[], None]], None]:
    def arm(job_id: str, at: dt.datetime, fn: Callable[[], None]) -> None:
        # The job only nudges the domain, which re-reads SQLite and the (injectable) clock.
        rt.scheduler.add_job(lambda: rt.submit(fn), "date", run_date=at, id=job_id, replace_existing=True,
                             misfire_grace_time=None)

    return arm


def attach_deployer(rt: Runtime) -> Deployer:
    deployer = Deployer(
        cfg=rt.cfg,
        store=rt.store,
        policy=rt.policy,
        notify=OutboxNotifier(rt),
        platform_for=PlatformCache(rt),
        clock=rt.clock,
        run_async=lambda fn: rt.submit(fn),
        arm=scheduler_arm(rt),
    )
    rt.extras["deployer"] = deployer
    from bot.views.deploy import render_card

    rt.outbox.render_card = lambda deploy_id: render_card(rt, deploy_id)

    def on_start(rt: Runtime) -> None:
        from commands.recovery import recover_all

        deployer.watch_routers()  # a router that died while recess was down comes back first
        recover_all(deployer)
        deployer.rearm()
        deployer.rearm_retirements()
        rt.scheduler.add_job(lambda: rt.submit(deployer.run_due), "interval", seconds=30, id="queue-sweep", replace_existing=True)
        rt.scheduler.add_job(lambda: rt.submit(deployer.retire_due), "interval", seconds=30, id="retire-sweep", replace_existing=True)
        # The watchdogs: dead routers every few seconds, deploys no one drives every 30 s. The
        # router check reads /proc only, so it costs nothing while HAProxy lives.
        rt.scheduler.add_job(deployer.watch_routers, "interval", seconds=rt.extras.get("router_watch_seconds", 3),
                             id="router-watchdog", replace_existing=True, max_instances=1)
        rt.scheduler.add_job(lambda: rt.submit(deployer.watch_deploys), "interval", seconds=30, id="deploy-watchdog",
                             replace_existing=True)

    rt.extras.setdefault("on_start", []).append(on_start)
    return deployer


def deployer_of(rt: Runtime) -> Deployer:
    return rt.extras["deployer"]
