"""The deploy state machine as data, and the one function that moves a deploy.

Statuses are names and transitions are a table: every status change is one conditional update
(`storage.deploys.transition`), so a double click, a Slack retry or a second runner changes nothing
the second time. Cards, thread lines and history are derived from the stored status. The pipeline,
rollback and recovery import this module, never one another's.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

from storage import deploys as rows
from storage.db import Store

events = logging.getLogger("recess.events")

TERMINAL = ("succeeded", "failed", "rolled_back", "cancelled", "rejected")
ATTENTION = "needs_attention"

# The deploy state machine, as data: which statuses each status may move to.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "pending": ("approved", "queued", "running", "rejected", "cancelled"),
    "approved": ("queued", "running", "cancelled", "pending"),  # pending again: a --now needs one more approval
    "queued": ("queued", "running", "cancelled", "pending"),
    "running": ("succeeded", "failed", "rolled_back", "needs_attention"),
    "needs_attention": ("succeeded", "failed"),
    "succeeded": ("rolled_back",),
}


def move(store: Store, deploy_id: int, from_: str | tuple[str, ...], to: str, *, actor: str | None = None,
         **values: Any) -> bool:
    """Applies one transition of TRANSITIONS as a conditional update; True when this call made it.
    Each move is one structured log line (`log_event`)."""
    froms = (from_,) if isinstance(from_, str) else tuple(from_)
    for f in froms:
        if to not in TRANSITIONS.get(f, ()):
            raise ValueError(f"the deploy state machine has no transition {f} -> {to}")
    # Retried while another process holds the write lock: a lost status write is a stuck deploy.
    moved = store.retrying(lambda: rows.transition(store, deploy_id, froms, to, **values))
    if moved and events.isEnabledFor(logging.INFO):
        row = rows.get(store, deploy_id) or {"id": deploy_id}
        log_event(to, row, actor=actor, outcome=values.get("outcome"))
    return moved


def requester_text(row: dict[str, Any]) -> str:
    """Who asked for a deploy, as Slack shows it: a mention for a person, the token's name for
    the REST API (with whom the CI job named, `requested_by`)."""
    requester = row.get("requester") or ""
    by = row.get("requested_by")
    if requester.startswith("api:"):
        return f"API token `{requester[4:]}`" + (f" for {by}" if by else "")
    return f"<@{requester}>" + (f" (for {by})" if by else "")


def log_event(event: str, row: dict[str, Any], *, actor: str | None = None, **extra: Any) -> None:
    """One line per deploy event (requested, approved, queued, running, each step, the end), in
    key=value form: `deploy=12 event=approved service=web env=production version=v2 actor=U0APPROVER1`."""
    fields = {"deploy": row.get("id"), "event": event, "kind": row.get("kind"), "service": row.get("service"),
              "env": row.get("env"), "version": row.get("version"), "actor": actor, **extra}
    events.info(" ".join(f"{k}={_logfmt(v)}" for k, v in fields.items() if v is not None))


def _logfmt(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' ="\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'
    return text


def crash_point(step: str, when: str) -> None:
    """Fault injection for the crash-recovery tests and benchmark: RECESS_CRASH_AT=shift:after
    SIGKILLs this process right after the router flip. Never set in production."""
    target = os.environ.get("RECESS_CRASH_AT")
    if target and target in (f"{step}:{when}", step if when == "during" else None):
        os.kill(os.getpid(), signal.SIGKILL)
