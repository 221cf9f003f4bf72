"""Signed webhooks out: deploy and flag events POSTed to the `[[webhooks]]` receivers.

Events are derived from the stored deploy, never from memory: whenever the deploy's card or
thread is told something (bot/deploying.py), the events the deploy has reached (requested,
approved, started, then succeeded, failed or rolled back) are queued once per receiver; the
outbox's unique index makes a second notice of the same event a no-op, so a restart or a race
never sends one twice and never skips one.

Deliveries are outbox rows in lanes of their own (`webhook:<receiver>:deploy:<id>`), taken by a
sender thread of their own: in order per deploy and receiver, retried with backoff for 24 hours
on network errors, timeouts, 408, 429 and 5xx, dropped (with an error log line) on any other
answer. Slack's sender never sees them, so a receiver that is down never delays a Slack message.

Each POST carries `X-Recess-Event`, `X-Recess-Delivery` (the same on every retry of it) and
`X-Recess-Signature: t=UNIX,v1=HEX`, HEX being the HMAC-SHA256 of f"{t}.{body}" with the secret:
a receiver refuses a stale `t`, so a captured delivery cannot be replayed (docs/ci.md).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from commands.config import Webhook
from storage import deploys as deploy_rows
from storage import outbox as rows
from storage.db import Store, parse_iso, utcnow

log = logging.getLogger("recess.webhooks")

RETRY_STATUS = (408, 425, 429, 500, 502, 503, 504)
GIVE_UP_AFTER = dt.timedelta(hours=24)
MAX_BACKOFF = 600.0  # seconds between tries, at most


def sign(secret: str, timestamp: int, body: str) -> str:
    """The X-Recess-Signature header value: t=UNIX,v1=HEX, HEX = HMAC-SHA256(secret, f"{t}.{body}")."""
    mac = hmac.new(secret.encode(), f"{timestamp}.{body}".encode(), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str, body: str, *, now: float, tolerance: float = 300) -> bool:
    """What a receiver does (and docs/ci.md shows): the signature matches and `t` is fresh."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - t) > tolerance:
        return False
    expected = sign(secret, t, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def receiver_id(hook: Webhook) -> str:
    return hashlib.sha256(hook.url.encode()).hexdigest()[:10]


def reached(d: dict[str, Any]) -> list[str]:
    """The events a deploy has reached so far, in the order they happen."""
    events = ["deploy.requested"]
    if d.get("approved_at"):
        events.append("deploy.approved")
    if d.get("started_at"):
        events.append("deploy.started")
    if d["status"] == "succeeded":
        events.append("deploy.succeeded")
    if d["status"] == "failed":
        events.append("deploy.failed")
    if d["status"] == "rolled_back":
        events.append("deploy.rolled_back")
    return events


class Webhooks:
    def __init__(self, store: Store, hooks: list[Webhook], describe: Callable[[int], dict[str, Any] | None], *,
                 clock: Callable[[], dt.datetime] = utcnow, wall: Callable[[], float] = time.time,
                 http: httpx.Client | None = None) -> None:
        self.store = store
        self.hooks = list(hooks)
        self.describe = describe  # deploy id -> the deploy as the REST API shows it
        self.clock = clock  # stamps rows and backoffs (the outbox's wall clock)
        self.wall = wall  # Unix seconds for the signature's t
        self.http = http or httpx.Client(timeout=httpx.Timeout(10.0, connect=5.0), follow_redirects=False)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None

    # -- queueing -----------------------------------------------------------------------------

    def observe(self, deploy_id: int) -> None:
        """Queues the events the deploy (and the deploy a rollback undoes) reached, once each."""
        if not any(e.startswith("deploy.") for h in self.hooks for e in h.events):
            return
        d = deploy_rows.get(self.store, deploy_id)
        if d is None:
            return
        targets = [d]
        if d.get("rollback_of"):
            undone = deploy_rows.get(self.store, d["rollback_of"])
            if undone is not None:
                targets.insert(0, undone)
        # No transaction of its own (this may run inside the caller's): every caller queues the
        # events in the order they happen, and one already queued is skipped, so a lane's order holds.
        queued = False
        for target in targets:
            events = reached(target)
            done = rows.webhook_events(self.store, target["id"])
            body = None
            for hook in self.hooks:
                lane = f"{rows.WEBHOOK_LANES}{receiver_id(hook)}:deploy:{target['id']}"
                for event in events:
                    if event not in hook.events or (lane, event) in done:
                        continue
                    body = body or self.describe(target["id"])
                    queued |= self._queue(hook, event, target["id"], {"deploy": body}, lane)
        if queued:
            self._wake.set()

    def flag_changed(self, detail: dict[str, Any]) -> None:
        hooks = [h for h in self.hooks if "flag.changed" in h.events]
        for hook in hooks:
            self._queue(hook, "flag.changed", None, {"flag": detail}, f"{rows.WEBHOOK_LANES}{receiver_id(hook)}:flags")
        if hooks:
            self._wake.set()

    def _queue(self, hook: Webhook, event: str, deploy_id: int | None, data: dict[str, Any], lane: str) -> bool:
        delivery = uuid.uuid4().hex
        body = json.dumps({"event": event, "delivery": delivery, "at": self.clock().isoformat(), **data},
                          separators=(",", ":"), default=str)
        payload = {"url": hook.url, "event": event, "delivery": delivery, "body": body}
        return rows.enqueue_once(self.store, method="webhook", payload=payload, deploy_id=deploy_id, lane=lane,
                                 at=self.clock())

    # -- the sender ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None and self.hooks:
            self._thread = threading.Thread(target=self._run, name="recess-webhooks", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=5)

    def pending(self) -> int:
        return rows.unsent(self.store, "webhook")

    def flush(self, timeout: float = 10.0) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self.pending() == 0, timeout=timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                if self.send_next():
                    continue
                at = rows.next_retry_at(self.store, "webhook")
                wait = 1.0 if at is None else min(max((at - self.clock()).total_seconds(), 0.01), 1.0)
            except Exception:  # the store failed (locked, disk): the sender must not die
                log.exception("webhooks: store error; trying again in 1 s")
                wait = 1.0
            self._wake.wait(wait)

    def send_next(self) -> bool:
        row = rows.next_due(self.store, self.clock(), "webhook")
        if row is None:
            with self._idle:
                self._idle.notify_all()
            return False
        self._attempt(row)
        with self._idle:
            self._idle.notify_all()
        return True

    def _attempt(self, row: dict[str, Any]) -> None:
        payload = json.loads(row["payload"])
        hook = next((h for h in self.hooks if h.url == payload["url"]), None)
        if hook is None:
            self._drop(row, "the receiver is no longer in [[webhooks]]")
            return
        secret = os.environ.get(hook.secret_env)
        if not secret:
            self._drop(row, f"{hook.secret_env} is not set, so the delivery cannot be signed")
            return
        body = payload["body"]
        headers = {"Content-Type": "application/json", "User-Agent": "recess-webhooks",
                   "X-Recess-Event": payload["event"], "X-Recess-Delivery": payload["delivery"],
                   "X-Recess-Signature": sign(secret, int(self.wall()), body)}
        try:
            resp = self.http.post(hook.url, content=body.encode(), headers=headers)
        except httpx.HTTPError as exc:
            self._retry(row, f"{type(exc).__name__}: {exc}")
            return
        if 200 <= resp.status_code < 300:
            rows.mark_sent(self.store, row["id"], ts=None, at=self.clock())
            return
        if resp.status_code in RETRY_STATUS:
            self._retry(row, f"HTTP {resp.status_code}")
            return
        self._drop(row, f"the receiver answered HTTP {resp.status_code}")

    def _retry(self, row: dict[str, Any], error: str) -> None:
        now = self.clock()
        give_up_at = parse_iso(row["created_at"]) + GIVE_UP_AFTER
        if now >= give_up_at:
            self._drop(row, f"{error}, for 24 h")
            return
        delay = min(1.0 * 2 ** row["attempts"], MAX_BACKOFF)
        next_at = min(now + dt.timedelta(seconds=delay), give_up_at)
        rows.retry_later(self.store, row["id"], error=error, next_at=next_at, not_posted=True)
        log.warning("webhook %s (%s to %s) failed: %s; trying again in %.0f s", row["id"],
                    json.loads(row["payload"])["event"], json.loads(row["payload"])["url"], error, delay)

    def _drop(self, row: dict[str, Any], why: str) -> None:
        payload = json.loads(row["payload"])
        log.error("webhook %s: dropped %s to %s: %s", row["id"], payload["event"], payload["url"], why)
        rows.drop(self.store, row["id"], error=why, at=self.clock())
