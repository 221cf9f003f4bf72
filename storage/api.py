"""REST API queries: idempotency keys, and the deploy listings the API answers.

An idempotency key belongs to one token. It is stored in the same transaction as the deploy it
created, with a digest of the body that came with it, so a retry (after a timeout, a lost
answer, a restart of either side) answers the same deploy and never makes a second one.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from storage import deploys as rows
from storage.db import Store, iso, utcnow

KEEP_KEYS = dt.timedelta(days=30)  # a retry comes within minutes; a month covers any re-run of a CI job


def remember_key(store: Store, *, token: str, key: str, body_sha256: str, deploy_id: int) -> None:
    """Raises sqlite3.IntegrityError when another request stored the key first. Keys older than
    KEEP_KEYS are forgotten on the way (the table stays the size of a month of CI requests)."""
    store.execute("DELETE FROM api_idempotency WHERE created_at < ?", (iso(utcnow() - KEEP_KEYS),))
    store.execute(
        "INSERT INTO api_idempotency (token, key, body_sha256, deploy_id, created_at) VALUES (?, ?, ?, ?, ?)",
        (token, key, body_sha256, deploy_id, iso(utcnow())),
    )


def recall_key(store: Store, *, token: str, key: str) -> dict[str, Any] | None:
    return store.row("SELECT * FROM api_idempotency WHERE token = ? AND key = ? AND created_at >= ?",
                     (token, key, iso(utcnow() - KEEP_KEYS)))


def listing(store: Store, *, service: str | None, env: str | None, status: str | None, limit: int,
            members: bool = True) -> list[dict[str, Any]]:
    """Deploys (and rollbacks), newest first, filtered by whichever of service, env and status are
    given. `members=False` leaves out the member rows of releases (a release is its parent row);
    a member rolled back on its own is not a member and stays."""
    where: list[str] = []
    params: list[Any] = []
    if not members:
        where.append("NOT (release_id IS NOT NULL AND release_id != id AND kind = "
                     "(SELECT CASE p.kind WHEN 'rollback' THEN 'rollback' ELSE 'deploy' END FROM deploys p "
                     "WHERE p.id = deploys.release_id))")  # as storage.deploys.members chooses them
    for column, value in (("service", service), ("env", env), ("status", status)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    found = store.rows(f"SELECT * FROM deploys {clause} ORDER BY id DESC LIMIT ?", [*params, limit])
    return [rows._typed(r) for r in found]


def approvals(store: Store, deploy_id: int) -> list[dict[str, Any]]:
    return store.rows("SELECT user, at FROM approvals WHERE deploy_id = ? ORDER BY at, user", (deploy_id,))


def in_progress(store: Store, service: str, env: str) -> dict[str, Any] | None:
    """The newest deploy of the service that is not over yet (pending to running)."""
    marks = ", ".join("?" for _ in rows.ACTIVE)
    return rows._typed(store.row(
        f"SELECT * FROM deploys WHERE service = ? AND env = ? AND status IN ({marks}) ORDER BY id DESC LIMIT 1",
        (service, env, *rows.ACTIVE),
    ))
