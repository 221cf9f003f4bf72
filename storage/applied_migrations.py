"""Which SQL migrations recess has applied, per service and environment.

A deploy lints only the files not recorded here, so re-deploying a version does not re-report
migrations that already ran. Names are file names (`0003_add_preferred_name.sql`), not paths.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from storage.db import Store, iso, utcnow


def applied(store: Store, service: str, env: str) -> set[str]:
    rows = store.rows(
        "SELECT name FROM applied_migrations WHERE service = ? AND env = ?", (service, env)
    )
    return {r["name"] for r in rows}


def mark_applied(
    store: Store,
    service: str,
    env: str,
    names: Iterable[str | Path],
    deploy_id: int | None,
) -> None:
    """Records the names as applied by this deploy; a name recorded before keeps its first record."""
    at = iso(utcnow())
    with store.transaction() as conn:
        for name in names:
            conn.execute(
                "INSERT INTO applied_migrations (service, env, name, applied_at, deploy_id) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (service, env, name) DO NOTHING",
                (service, env, name.name if isinstance(name, Path) else str(name), at, deploy_id),
            )
