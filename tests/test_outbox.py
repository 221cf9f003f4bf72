"""The Slack outbox keeps going: store errors, Slack outages and broken messages never stop it.

Its delivery promises (what is retried, order per deploy, never twice) are in test_outbox_guarantees.py.
"""

from __future__ import annotations

import sqlite3

from bot.outbox import Outbox
from bot.slack_client import make_client
from storage.db import Store


def test_the_sender_survives_a_locked_database_and_delivers_later(tmp_path, slack):
    store = Store(tmp_path / "r.db")
    outbox = Outbox(store, make_client("xoxb-t", slack.api_url), max_backoff=0.2)
    original = store.row
    failures = [sqlite3.OperationalError("database is locked")]

    def row(sql, params=()):  # noqa: ANN001
        if failures:
            raise failures.pop()
        return original(sql, params)

    store.row = row
    outbox.start()
    try:
        outbox.post("C0DEPLOYS", "after the lock")
        assert outbox.flush(timeout=10)
        assert slack.texts() == ["after the lock"]
    finally:
        outbox.stop()


def test_a_message_recess_cannot_build_is_dropped_after_a_few_tries_and_the_rest_flow(tmp_path, slack):
    store = Store(tmp_path / "r.db")

    def broken(deploy_id):  # noqa: ANN001
        raise KeyError("no such card")

    outbox = Outbox(store, make_client("xoxb-t", slack.api_url), render_card=broken, max_backoff=0.05)
    store.execute("INSERT INTO deploys (id, service, env, version, requester, status, created_at, updated_at)"
                  " VALUES (1, 'web', 'production', 'v2', 'U1', 'pending', 'x', 'x')")
    outbox.start()
    try:
        outbox.post_card(1, "C0DEPLOYS")
        outbox.post("C0DEPLOYS", "the next message")
        assert outbox.flush(timeout=10)
        assert slack.texts() == [
            "the next message",
            "recess could not post a message for deploy #1: recess could not build it (KeyError, 5 tries); see the log",
        ]
        assert store.row("SELECT error FROM outbox WHERE method = 'card.post'")["error"].startswith("KeyError")
    finally:
        outbox.stop()
