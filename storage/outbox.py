"""Outbox queries: the Slack messages recess has queued, one lane per deploy, and their states.

A row moves `queued -> sending -> sent`, or ends `dropped`; `sent_at` is set when it ends either
way, so "unsent" is `sent_at IS NULL`. Rows are ordered within their `lane` (one per deploy, one
for messages that belong to no deploy, one per channel notice), never across lanes: the sender
takes the oldest unsent row of each lane, and of those the oldest whose `next_at` has come.
A row in `sending` may already be in Slack (the process died, or the answer was lost, after the
post): it is looked up there before it is posted again.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from storage.db import Store, dumps, iso, parse_iso

GENERAL = "general"  # the lane of messages that belong to no deploy
# Webhook deliveries (bot/webhooks.py) are outbox rows too, in lanes of their own that start with
# this prefix; a sender of their own takes them, so a slow receiver never holds up Slack.
WEBHOOK_LANES = "webhook:"


def lane_of(deploy_id: int | None) -> str:
    return GENERAL if deploy_id is None else f"deploy:{deploy_id}"


def enqueue(store: Store, *, method: str, payload: dict[str, Any], deploy_id: int | None, lane: str,
            at: dt.datetime) -> int:
    cur = store.execute(
        "INSERT INTO outbox (deploy_id, method, payload, created_at, lane) VALUES (?, ?, ?, ?, ?)",
        (deploy_id, method, dumps(payload), iso(at), lane),
    )
    return cur.lastrowid


def enqueue_once(store: Store, *, method: str, payload: dict[str, Any], deploy_id: int | None, lane: str,
                 at: dt.datetime) -> bool:
    """Like enqueue, unless the outbox_webhook_once index says this (lane, event, deploy) is queued
    already; True when this call queued it."""
    cur = store.execute(
        "INSERT OR IGNORE INTO outbox (deploy_id, method, payload, created_at, lane) VALUES (?, ?, ?, ?, ?)",
        (deploy_id, method, dumps(payload), iso(at), lane),
    )
    return cur.rowcount == 1


def webhook_events(store: Store, deploy_id: int) -> set[tuple[str, str]]:
    """(lane, event) of every webhook delivery queued for the deploy so far."""
    return {(r["lane"], r["event"]) for r in store.rows(
        "SELECT lane, json_extract(payload, '$.event') AS event FROM outbox WHERE method = 'webhook' AND deploy_id = ?",
        (deploy_id,))}


def _family(family: str) -> str:
    """The lanes one sender takes: Slack's (`slack`) or the webhooks' (`webhook`)."""
    return "lane LIKE 'webhook:%'" if family == "webhook" else "lane NOT LIKE 'webhook:%'"


def _heads(family: str = "slack") -> str:
    return ("SELECT o.* FROM outbox o JOIN (SELECT min(id) AS id FROM outbox WHERE sent_at IS NULL AND "
            f"{_family(family)} GROUP BY lane) h ON h.id = o.id")


def next_due(store: Store, now: dt.datetime, family: str = "slack") -> dict[str, Any] | None:
    """The oldest row that heads its lane and whose retry time has come."""
    return store.row(f"{_heads(family)} WHERE o.next_at IS NULL OR o.next_at <= ? ORDER BY o.id LIMIT 1", (iso(now),))


def next_retry_at(store: Store, family: str = "slack") -> dt.datetime | None:
    """When the earliest lane head waiting out a backoff may be tried again."""
    found = store.row(f"SELECT min(next_at) AS at FROM ({_heads(family)} WHERE o.next_at IS NOT NULL)")
    return parse_iso(found["at"]) if found else None


def unsent(store: Store, family: str = "slack") -> int:
    return store.execute(f"SELECT count(*) FROM outbox WHERE sent_at IS NULL AND {_family(family)}").fetchone()[0]


def get(store: Store, row_id: int) -> dict[str, Any] | None:
    return store.row("SELECT * FROM outbox WHERE id = ?", (row_id,))


def card(store: Store, deploy_id: int) -> dict[str, Any] | None:
    return store.row("SELECT id, channel, card_ts FROM deploys WHERE id = ?", (deploy_id,))


def newer_update_queued(store: Store, deploy_id: int, row_id: int) -> bool:
    return store.row(
        "SELECT id FROM outbox WHERE sent_at IS NULL AND method = 'card.update' AND deploy_id = ? AND id > ? LIMIT 1",
        (deploy_id, row_id),
    ) is not None


def notice_told(store: Store, text: str, *, since: dt.datetime) -> bool:
    """True when a channel notice with this text was queued at or after `since`."""
    return store.row(
        "SELECT id FROM outbox WHERE method = 'notice' AND created_at >= ? AND json_extract(payload, '$.text') = ? LIMIT 1",
        (iso(since), text),
    ) is not None


def begin_sending(store: Store, row_id: int, *, channel: str, thread_ts: str | None) -> None:
    """Written before chat.postMessage: from here on the row may be in Slack."""
    store.execute("UPDATE outbox SET state = 'sending', channel = ?, thread_ts = ? WHERE id = ?",
                  (channel, thread_ts, row_id))


def mark_sent(store: Store, row_id: int, *, ts: str | None, at: dt.datetime, card_of: int | None = None,
              channel: str | None = None) -> None:
    """The row is in Slack as `ts`; with `card_of`, that message is the deploy's card (its thread)."""
    with store.transaction():
        store.execute(
            "UPDATE outbox SET state = 'sent', sent_at = ?, result_ts = ?, error = NULL, next_at = NULL,"
            " attempts = attempts + 1 WHERE id = ?",
            (iso(at), ts, row_id),
        )
        if card_of is not None and ts:
            store.execute("UPDATE deploys SET card_ts = ?, channel = ? WHERE id = ?", (ts, channel, card_of))


def retry_later(store: Store, row_id: int, *, error: str, next_at: dt.datetime, not_posted: bool) -> None:
    """Another try at `next_at`. `not_posted`: Slack's answer proves the post did not happen, so
    a row in `sending` goes back to `queued`; otherwise it stays as it was (and is looked up)."""
    store.execute(
        "UPDATE outbox SET attempts = attempts + 1, error = ?, next_at = ?,"
        " state = CASE WHEN ? THEN 'queued' ELSE state END WHERE id = ?",
        (error[:500], iso(next_at), 1 if not_posted else 0, row_id),
    )


def drop(store: Store, row_id: int, *, error: str, at: dt.datetime, notice: dict[str, Any] | None = None) -> int | None:
    """Gives up on a row; with `notice` (method, payload, deploy_id, lane), queues it in the same
    transaction, so a dropped message is never silently lost. Returns the notice's row ID."""
    with store.transaction():
        store.execute(
            "UPDATE outbox SET state = 'dropped', sent_at = ?, error = ?, next_at = NULL, attempts = attempts + 1"
            " WHERE id = ?",
            (iso(at), error[:500], row_id),
        )
        if notice is None:
            return None
        return enqueue(store, at=at, **notice)
