"""The Slack outbox: every channel post, thread reply and card update goes through SQLite.

Deploys never wait on Slack. Domain code records what should be said; one sender thread delivers
it. Three promises:

- Only transient failures are retried: HTTP 429 (after its `Retry-After`), 5xx, network errors
  and timeouts, and Slack's `ratelimited`, `service_unavailable`, `internal_error`, `fatal_error`,
  `request_timeout` and `team_added_to_org`, with backoff, for at most `give_up_after` (24 h)
  since the row was queued. Anything else, or anything past that, is dropped with an error log
  line and a short notice in the channel, and the rest flow. A notice that is refused too is only
  logged.
- Order holds within a lane: one deploy's card post, card updates and thread lines, in the order
  they were queued; messages of no deploy in theirs. A row waiting out a backoff holds up its own
  lane only. The outbox retries by itself (its client has no retry handlers), so no lane sleeps
  inside slack_sdk while others wait.
- Nothing is posted twice. Each chat.postMessage carries its outbox row ID in the message's
  `metadata`, and the row is `sending` from just before the call until it is recorded as sent. A
  row found `sending` (the process died after the post, or the answer was lost: a timeout, a 5xx,
  `internal_error`) is first looked up in the channel's history since it was queued
  (`conversations.history`, or `conversations.replies` of its thread, with
  `include_all_metadata`); when it is there, its `ts` is recorded (a card's becomes its thread)
  and it is not posted again.

Cards are rendered from the store when sent, so an update always shows the latest state and an
update with a newer one queued behind it is skipped.
"""

from __future__ import annotations

import copy
import datetime as dt
import http.client
import json
import logging
import threading
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from commands.config import format_duration
from storage import outbox as rows
from storage.db import Store, is_transient, parse_iso, utcnow

log = logging.getLogger("recess.outbox")

EVENT_TYPE = "recess_outbox"  # the metadata event type that carries a message's outbox row ID

# Slack errors worth another try (Slack's documented transient errors). Of these, the ones whose
# documentation says "some aspect of the operation may have succeeded" leave a post uncertain.
TRANSIENT = {"ratelimited", "rate_limited", "service_unavailable", "team_added_to_org",
             "internal_error", "fatal_error", "request_timeout"}
UNCERTAIN = {"internal_error", "fatal_error", "request_timeout"}

MAX_BROKEN_ATTEMPTS = 5  # a message recess cannot build: a few tries, then it is dropped
HISTORY_PAGES = 10  # at most this many pages of 200 messages are searched for a lost post
CLOCK_SKEW = dt.timedelta(minutes=5)  # Slack's clock against ours, when bounding that search
NOTICE_QUIET = dt.timedelta(hours=1)  # the same notice is not repeated within this time

CardRenderer = Callable[[int], tuple[str, list[dict[str, Any]]]]
Clock = Callable[[], dt.datetime]


@dataclass(frozen=True)
class Failure:
    """What one failed attempt means for its row."""

    error: str  # for the log, the row and the notice: Slack's error name, or the exception
    transient: bool  # another try may succeed
    posted_maybe: bool  # the post may have reached Slack although the call failed
    retry_after: float | None = None  # seconds Slack asked us to wait
    broken: bool = False  # recess itself could not build the message


def classify(exc: BaseException) -> Failure:
    """Sorts a failed Slack call (or a failure to build its message) by what to do next."""
    if isinstance(exc, SlackApiError) and exc.response is not None:
        status = exc.response.status_code
        try:
            error = exc.response.get("error") or f"HTTP {status}"
        except (AttributeError, TypeError, ValueError):  # a body that is not JSON
            error = f"HTTP {status}"
        if status == 429 or error in ("ratelimited", "rate_limited"):
            return Failure(error, True, False, _retry_after(exc.response.headers))
        if status >= 500 or error in UNCERTAIN:
            return Failure(error, True, True)
        return Failure(error, error in TRANSIENT, False)
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, ConnectionRefusedError):
        return Failure("connection refused", True, False)  # never reached Slack
    if isinstance(exc, ConnectionRefusedError):
        return Failure("connection refused", True, False)
    if isinstance(exc, OSError | TimeoutError | http.client.HTTPException):
        return Failure(f"{type(exc).__name__}: {exc}", True, True)
    if is_transient(exc):  # the store was locked while building the message
        return Failure(f"store: {exc}", True, True)
    return Failure(f"{type(exc).__name__}: {exc}", False, True, broken=True)


def _retry_after(headers: Any) -> float | None:
    for key, value in (headers or {}).items():
        if key.lower() == "retry-after":
            value = value[0] if isinstance(value, list) else value
            try:
                return max(float(value), 0.0)
            except (TypeError, ValueError):
                return None
    return None


def _text_of(row: dict[str, Any]) -> str:
    try:
        return json.loads(row["payload"]).get("text") or row["method"]
    except ValueError:
        return row["method"]


def _without_retry_handlers(client: WebClient) -> WebClient:
    """The same client, but a 429 comes back at once: the outbox waits it out per lane."""
    sender = copy.copy(client)
    sender.retry_handlers = []
    return sender


class Outbox:
    def __init__(
        self,
        store: Store,
        client: WebClient,
        *,
        render_card: CardRenderer | None = None,
        max_backoff: float = 30.0,
        give_up_after: dt.timedelta = dt.timedelta(hours=24),
        clock: Clock = utcnow,
    ) -> None:
        self.store = store
        self.client = client
        self.render_card = render_card
        self.max_backoff = max_backoff
        self.give_up_after = give_up_after
        self.clock = clock
        self._slack = _without_retry_handlers(client)
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
        row_id = rows.enqueue(self.store, method=method, payload=payload, deploy_id=deploy_id,
                              lane=rows.lane_of(deploy_id), at=self.clock())
        self._wake.set()
        return row_id

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

    def wake(self) -> None:
        """Looks at the queue again now (after a test moved the clock, say)."""
        self._wake.set()

    def pending(self) -> int:
        return rows.unsent(self.store)

    def flush(self, timeout: float = 10.0) -> bool:
        """Waits until everything queued so far was delivered (or dropped). For tests and the demo."""
        with self._idle:
            return self._idle.wait_for(lambda: self.pending() == 0, timeout=timeout)

    def _run(self) -> None:
        store_backoff = 0.5
        while not self._stop.is_set():
            self._wake.clear()
            try:
                if self.send_next():
                    store_backoff = 0.5
                    continue
                wait = self._until_next_retry()
            except Exception:  # the store itself failed (locked, disk): never let the sender die
                log.exception("outbox: store error; trying again in %.1f s", store_backoff)
                wait, store_backoff = store_backoff, min(store_backoff * 2, self.max_backoff)
            self._wake.wait(wait)

    def _until_next_retry(self) -> float:
        """Seconds to sleep when nothing is due: until the earliest backoff ends, at most 1 s
        (the clock may be a test's, moved by hand)."""
        at = rows.next_retry_at(self.store)
        if at is None:
            return 1.0
        return min(max((at - self.clock()).total_seconds(), 0.01), 1.0)

    def send_next(self) -> bool:
        """Delivers (or drops, or delays) the next due message; False when none is due."""
        row = rows.next_due(self.store, self.clock())
        if row is None:
            with self._idle:
                self._idle.notify_all()
            return False
        self._attempt(row)
        with self._idle:
            self._idle.notify_all()
        return True

    def _attempt(self, row: dict[str, Any]) -> None:
        posting = False  # True while chat.postMessage itself is the call that may fail
        try:
            if row["method"] == "card.update":
                self._update_card(row)
                return
            kwargs = self._message(row)
            if row["state"] == "sending":
                found = self._find_in_slack(row)
                if found is not None:
                    log.info("outbox %s: already in Slack as %s (found in the channel's history); not posted again",
                             row["id"], found)
                    self._sent(row, found, row["channel"])
                    return
            rows.begin_sending(self.store, row["id"], channel=kwargs["channel"], thread_ts=kwargs.get("thread_ts"))
            posting = True
            resp = self._slack.chat_postMessage(
                **kwargs, metadata={"event_type": EVENT_TYPE, "event_payload": {"outbox_id": row["id"]}})
            posting = False
            self._sent(row, resp.get("ts"), resp.get("channel") or kwargs["channel"])
        except Exception as exc:
            self._failed(row, exc, posting=posting)

    def _sent(self, row: dict[str, Any], ts: str | None, channel: str | None) -> None:
        is_card = row["method"] == "card.post"
        rows.mark_sent(self.store, row["id"], ts=ts, at=self.clock(),
                       card_of=row["deploy_id"] if is_card else None, channel=channel)

    def _failed(self, row: dict[str, Any], exc: Exception, *, posting: bool) -> None:
        failure = classify(exc)
        now = self.clock()
        queued_at = parse_iso(row["created_at"])
        attempts = row["attempts"] + 1
        if failure.transient or (failure.broken and attempts < MAX_BROKEN_ATTEMPTS):
            give_up_at = queued_at + self.give_up_after
            if failure.transient and now >= give_up_at:
                self._drop(row, failure.error, f"Slack kept answering {failure.error} for {format_duration(self.give_up_after)}")
                return
            delay = failure.retry_after if failure.retry_after is not None else min(0.5 * 2 ** row["attempts"], self.max_backoff)
            next_at = min(now + dt.timedelta(seconds=delay), give_up_at)
            # Only an answer to the post itself can prove that it did not happen.
            not_posted = posting and not failure.posted_maybe
            rows.retry_later(self.store, row["id"], error=failure.error, next_at=next_at, not_posted=not_posted)
            log.warning("outbox %s: %s failed (%s); trying again in %.1f s", row["id"], row["method"], failure.error,
                        (next_at - now).total_seconds())
            return
        if failure.broken:
            self._drop(row, failure.error, f"recess could not build it ({type(exc).__name__}, {attempts} tries)",
                       exc_info=exc)
            return
        self._drop(row, failure.error, f"Slack said {failure.error}")

    def _drop(self, row: dict[str, Any], error: str, why: str, *, exc_info: BaseException | None = None) -> None:
        """Gives up on a row: an error log line, and a notice in its channel unless the row is a
        notice itself (a refused notice is only logged: no loop) or the channel was told the same
        in the last hour (a deleted card refuses every update)."""
        about = f" for deploy #{row['deploy_id']}" if row["deploy_id"] is not None else ""
        log.error("outbox %s: dropped %s%s: %s; its text: %.200s", row["id"], row["method"], about, why,
                  _text_of(row), exc_info=exc_info)
        now = self.clock()
        channel = self._channel_of(row)
        text = f"recess could not post a message{about}: {why}; see the log"
        notice = None
        if row["method"] != "notice" and channel and not rows.notice_told(self.store, text, since=now - NOTICE_QUIET):
            notice = {
                "method": "notice",
                "payload": {"channel": channel, "text": text, "about": row["id"]},
                "deploy_id": row["deploy_id"],
                "lane": f"notice:{row['id']}",
            }
        rows.drop(self.store, row["id"], error=error, at=now, notice=notice)
        if notice:
            self._wake.set()

    def _channel_of(self, row: dict[str, Any]) -> str | None:
        if row["channel"]:
            return row["channel"]
        try:
            channel = json.loads(row["payload"]).get("channel")
        except ValueError:
            channel = None
        if not channel and row["deploy_id"] is not None:
            channel = (rows.card(self.store, row["deploy_id"]) or {}).get("channel")
        return channel

    # -- building and finding messages ----------------------------------------------------------

    def _message(self, row: dict[str, Any]) -> dict[str, Any]:
        """chat.postMessage's arguments for a post, a card or a notice."""
        payload = json.loads(row["payload"])
        method, deploy_id = row["method"], row["deploy_id"]
        if method == "notice":
            return {"channel": payload["channel"], "text": payload["text"]}
        if method == "card.post":
            if self.render_card is None or deploy_id is None:
                raise ValueError("a card post needs a deploy and a card renderer")
            text, blocks = self.render_card(deploy_id)
            return {"channel": payload["channel"], "text": text, "blocks": blocks}
        if method != "post":
            raise ValueError(f"unknown outbox method {method!r}")
        kwargs: dict[str, Any] = {"channel": payload["channel"], "text": payload["text"]}
        if payload.get("blocks"):
            kwargs["blocks"] = payload["blocks"]
        if payload.get("thread") and deploy_id is not None:
            card = rows.card(self.store, deploy_id)
            if card and card["card_ts"]:
                kwargs["channel"] = card["channel"]
                kwargs["thread_ts"] = card["card_ts"]
                if payload.get("broadcast"):
                    kwargs["reply_broadcast"] = True
        return kwargs

    def _find_in_slack(self, row: dict[str, Any]) -> str | None:
        """The ts of the message that carries this row's ID, if Slack has it; None when it is not
        there, or when the history cannot be read (then the row is posted, and that is logged)."""
        oldest = f"{(parse_iso(row['created_at']) - CLOCK_SKEW).timestamp():.6f}"
        args: dict[str, Any] = {"channel": row["channel"], "oldest": oldest, "include_all_metadata": True, "limit": 200}
        read = self._slack.conversations_history
        if row["thread_ts"]:
            read, args["ts"] = self._slack.conversations_replies, row["thread_ts"]
        cursor = None
        for _ in range(HISTORY_PAGES):
            try:
                resp = read(**args, cursor=cursor) if cursor else read(**args)
            except SlackApiError as exc:
                failure = classify(exc)
                if failure.transient:
                    raise
                log.warning("outbox %s: cannot read the channel's history to check for an earlier post (%s); "
                            "posting it, so it may show twice (the app needs channels:history and groups:history)",
                            row["id"], failure.error)
                return None
            for message in resp.get("messages") or []:
                metadata = message.get("metadata") or {}
                if metadata.get("event_type") == EVENT_TYPE and \
                        (metadata.get("event_payload") or {}).get("outbox_id") == row["id"]:
                    return message.get("ts")
            cursor = (resp.get("response_metadata") or {}).get("next_cursor")
            if not resp.get("has_more") or not cursor:
                return None
        log.warning("outbox %s: not found in the last %d pages of history; posting it", row["id"], HISTORY_PAGES)
        return None

    def _update_card(self, row: dict[str, Any]) -> None:
        deploy_id = row["deploy_id"]
        card = rows.card(self.store, deploy_id) if deploy_id is not None else None
        if (self.render_card is None or not card or not card["card_ts"]
                or rows.newer_update_queued(self.store, deploy_id, row["id"])):
            self._sent(row, None, None)  # a later update shows the same state, or the card never posted
            return
        text, blocks = self.render_card(deploy_id)
        self._slack.chat_update(channel=card["channel"], ts=card["card_ts"], text=text, blocks=blocks)
        self._sent(row, card["card_ts"], card["channel"])
