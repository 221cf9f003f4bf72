"""Ack first, always: every slash command and card click is acknowledged within 300 ms, whatever
the store, Slack or squawk are doing.

A listener hands its whole answer to `answer`, which runs it on recess's own `answers` executor
and waits a short budget (100 ms). A fast answer (nearly all of them: a few milliseconds) is the
ack itself, as before. A slow one (another process holds the database's write lock, Slack is slow
to tell a user's timezone, squawk is linting) is acked with a short "working on it", and the answer
follows through `respond()` once it is ready. Work that fails after the ack is always told to the
user, with what to do; nothing fails silently.

    @app.command("/window")
    def window_command(ack, command, respond):
        answer(rt, ack, respond, lambda: handle_window(rt, command["user_id"], command.get("text", "")))
"""

from __future__ import annotations

import concurrent.futures
import logging
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

log = logging.getLogger("recess.acks")

# Seconds a listener waits for its answer before it acks with "working on it": well under the
# 300 ms every ack must meet, leaving room for the edge's own checks before the listener runs.
BUDGET = 0.10
WORKING = ":hourglass_flowing_sand: Working on it; the answer follows here in a moment."


def failure_reply(ref: str, what: str = "your command") -> dict[str, Any]:
    return {"text": f":boom: recess could not finish {what} (ref {ref}): nothing was changed by the part that failed. "
                    f"Check the deploy channel, then try again; the operator finds the details in the logs under that ref.",
            "response_type": "ephemeral"}


def answer(rt: Any, ack: Callable[..., Any], respond: Callable[..., Any], work: Callable[[], dict[str, Any]], *,
           budget: float = BUDGET, on: ThreadPoolExecutor | None = None, what: str = "your command",
           after: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Acks with `work()`'s reply when it is ready within `budget`, else with WORKING and sends
    the reply through `respond` later. `after(reply)` runs once the reply is out (off the listener)."""
    pool = on or rt.answers
    ref = uuid.uuid4().hex[:8]

    def guarded() -> dict[str, Any]:
        try:
            return work()
        except Exception:
            log.exception("%s failed (ref %s)", what, ref)
            return failure_reply(ref, what)

    future = pool.submit(guarded)
    try:
        reply = future.result(timeout=budget)
    except concurrent.futures.TimeoutError:
        ack(text=WORKING, response_type="ephemeral")

        def deliver(done: concurrent.futures.Future) -> None:
            reply = done.result()
            try:
                respond(**{**_plain(reply), "response_type": "ephemeral", "replace_original": False})
            except Exception:
                log.exception("could not deliver the answer to %s (ref %s)", what, ref)
            if after is not None:
                _run_after(after, reply, ref)

        future.add_done_callback(deliver)
        return
    ack(**_plain(reply))
    if after is not None:
        pool.submit(_run_after, after, reply, ref)


def later(rt: Any, respond: Callable[..., Any], work: Callable[[], str | None], *,
          on: ThreadPoolExecutor | None = None, what: str = "your click") -> None:
    """For clicks, acked already: runs `work` on recess's executor; a message it returns, or the
    failure with its ref, goes to the user ephemerally."""
    ref = uuid.uuid4().hex[:8]

    def run() -> None:
        try:
            note = work()
        except Exception:
            log.exception("%s failed (ref %s)", what, ref)
            note = failure_reply(ref, what)["text"]
        if note:
            try:
                respond(text=note, response_type="ephemeral", replace_original=False)
            except Exception:
                log.exception("could not tell the user about %s (ref %s)", what, ref)

    (on or rt.answers).submit(run)


def _plain(reply: dict[str, Any]) -> dict[str, Any]:
    """What ack() and respond() take: text, blocks, response_type (no private keys)."""
    return {k: v for k, v in reply.items() if k in ("text", "blocks", "response_type")}


def _run_after(after: Callable[[dict[str, Any]], None], reply: dict[str, Any], ref: str) -> None:
    try:
        after(reply)
    except Exception:
        log.exception("follow-up work failed (ref %s)", ref)
