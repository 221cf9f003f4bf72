"""The Slack outbox: every channel post, thread reply and card update goes through SQLite.

Deploys never wait on Slack. Domain code records what should be said; one sender thread delivers
it in order. When Slack answers 429 or 5xx (after slack_sdk's own retries) or cannot be reached,
the message stays queued and is retried with backoff, so progress catches up when Slack answers
again, even across a restart. Cards are rendered from the store when sent, so an update always
shows the latest state and stale updates are skipped.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from storage.db import Store, dumps, iso, utcnow

log = logging.getLogger("recess.outbox")

# Slack errors that a retry will not fix: the message is dropped (and logged) so later ones flow.
PERMANENT = {
    "channel_not_found", "not_in_channel", "is_archived", "invalid_blocks", "invalid_auth",
    "msg_too_long", "no_text", "message_not_found", "cant_update_message", "account_inactive",
    "token_revoked", "missing_scope", "invalid_arguments", "too_many_attachments",
}

MAX_BROKEN_ATTEMPTS = 5

CardRenderer = Callable[[int], tuple[str, list[dict[str, Any]]]]


class Outbox:
    def __init__(
        self,
        store: Store,
        client: WebClient,
        *,
        render_card: CardRenderer | None = None,
        max_backoff: float = 30.0,
    ) -> None:
        self.store = store
        self.client = client
        self.render_card = render_card
        self.max_backoff = max_backoff
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what the rest of recess calls ----------------------------------------------------------

    def post(self, channel: str, text: str, blocks: list[dict] | None = None, *, deploy_id: int | None = None, thread: bool = False, broadcast: bool = False) -> int:
        """A channel message; with `thread`, a reply in the deploy's card thread."""
        payload = {"channel": channel, "text": text, "blocks": blocks, "thread": thread, "broadcast": broadcast}
        return self._enqueue("post", payload, deploy_id)

    def post_card(self, deploy_id: int, channel: str) -> int:
        return self._enqueue("card.post", {"channel": channel}, deploy_id)

    def update_card(self, deploy_id: int) -> int:
        return self._enqueue("card.update", {}, deploy_id)

    def _enqueue(self, method: str, payload: dict[str, Any], deploy_id: int | None) -> int:
        cur = self.store.execute(
            "INSERT INTO outbox (deploy_id, method, payload, created_at) VALUES (?, ?, ?, ?)",
            (deploy_id, method, dumps(payload), iso(utcnow())),
        )
        self._wake.set()
        return cur.lastrowid

    # -- the sender -----------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="recess-outbox", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=5)

    def pending(self) -> int:
        return self.store.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0]

    def flush(self, timeout: float = 10.0) -> bool:
        """Waits until everything queued so far was delivered (or dropped). For tests and the demo."""
        with self._idle:
            return self._idle.wait_for(lambda: self.pending() == 0, timeout=timeout)

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                backoff = self._step(backoff)
            except Exception:  # the store itself failed (locked, disk): never let the sender die
                log.exception("outbox: store error; trying again in %.1f s", backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)

    def _step(self, backoff: float) -> float:
        """Delivers the oldest queued message; returns the backoff to use next."""
        row = self.store.row("SELECT * FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT 1")
        if row is None:
            with self._idle:
                self._idle.notify_all()
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            return backoff
        try:
            result_ts = self._deliver(row)
        except SlackApiError as exc:
            error = exc.response.get("error") if exc.response is not None else str(exc)
            if error in PERMANENT:
                log.error("outbox %s: Slack refused %s for good: %s", row["id"], row["method"], error)
                self._mark(row["id"], error=error)
                return backoff
            self._retry_later(row, f"slack: {error}", backoff)
            return min(backoff * 2, self.max_backoff)
        except (OSError, TimeoutError) as exc:  # connection refused, timeouts: Slack is away, keep trying
            self._retry_later(row, f"{type(exc).__name__}: {exc}", backoff)
            return min(backoff * 2, self.max_backoff)
        except Exception as exc:  # a message recess cannot build: a few tries, then drop it, loudly
            if row["attempts"] >= MAX_BROKEN_ATTEMPTS:
                log.exception("outbox %s: dropping %s after %d tries", row["id"], row["method"], row["attempts"] + 1)
                self._mark(row["id"], error=f"{type(exc).__name__}: {exc}"[:500])
                return backoff
            self._retry_later(row, f"{type(exc).__name__}: {exc}", backoff)
            return min(backoff * 2, self.max_backoff)
        self._mark(row["id"], result_ts=result_ts)
        return 0.5

    def _retry_later(self, row: dict[str, Any], error: str, backoff: float) -> None:
        self.store.execute("UPDATE outbox SET attempts = attempts + 1, error = ? WHERE id = ?", (error[:500], row["id"]))
        log.warning("outbox %s: %s failed (%s); retrying in %.1f s", row["id"], row["method"], error, backoff)
        self._stop.wait(backoff)

    def _mark(self, row_id: int, *, result_ts: str | None = None, error: str | None = None) -> None:
        self.store.execute(
            "UPDATE outbox SET sent_at = ?, result_ts = ?, error = ?, attempts = attempts + 1 WHERE id = ?",
            (iso(utcnow()), result_ts, error, row_id),
        )
        with self._idle:
            self._idle.notify_all()

    def _card(self, deploy_id: int) -> dict[str, Any] | None:
        return self.store.row("SELECT id, channel, card_ts FROM deploys WHERE id = ?", (deploy_id,))

    def _deliver(self, row: dict[str, Any]) -> str | None:
        payload = json.loads(row["payload"])
        method, deploy_id = row["method"], row["deploy_id"]
        if method == "post":
            kwargs: dict[str, Any] = {"channel": payload["channel"], "text": payload["text"]}
            if payload.get("blocks"):
                kwargs["blocks"] = payload["blocks"]
            if payload.get("thread") and deploy_id is not None:
                card = self._card(deploy_id)
                if card and card["card_ts"]:
                    kwargs["channel"] = card["channel"]
                    kwargs["thread_ts"] = card["card_ts"]
                    if payload.get("broadcast"):
                        kwargs["reply_broadcast"] = True
            resp = self.client.chat_postMessage(**kwargs)
            return resp.get("ts")
        if self.render_card is None or deploy_id is None:
            return None
        if method == "card.post":
            text, blocks = self.render_card(deploy_id)
            resp = self.client.chat_postMessage(channel=payload["channel"], text=text, blocks=blocks)
            self.store.execute(
                "UPDATE deploys SET card_ts = ?, channel = ? WHERE id = ?",
                (resp.get("ts"), resp.get("channel") or payload["channel"], deploy_id),
            )
            return resp.get("ts")
        if method == "card.update":
            newer = self.store.row(
                "SELECT id FROM outbox WHERE sent_at IS NULL AND method = 'card.update' AND deploy_id = ? AND id > ?",
                (deploy_id, row["id"]),
            )
            card = self._card(deploy_id)
            if newer or not card or not card["card_ts"]:
                return None  # a later update will show the same state, or the card never posted
            text, blocks = self.render_card(deploy_id)
            self.client.chat_update(channel=card["channel"], ts=card["card_ts"], text=text, blocks=blocks)
            return card["card_ts"]
        raise ValueError(f"unknown outbox method {method!r}")
