"""GET /metrics: recess in Prometheus' text format (prometheus_client).

Most numbers come from SQLite at scrape time (the store is the source of truth, so a restart
loses no count): deploys by outcome, deploy and step durations, rollback times, what is live, the
window, the outbox, and the DORA four keys. Two are counted in this process, since nothing stores
them: OFREP answers by status and router flip times. docs/dashboard.md lists every metric.

Step and deploy durations are summed incrementally: a finished row never changes, so each scrape
reads only the rows finished since the last one (below the oldest unfinished row, everything is
counted).
"""

from __future__ import annotations

import bisect
import hmac
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bot.runtime import Runtime
from commands import dashboard
from commands.dashboard import fingerprint as dash_fingerprint
from commands.freezes import current_calendar
from storage import deploys as rows
from storage.db import parse_iso

log = logging.getLogger("recess.metrics")

DEPLOY_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
STEP_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
ROLLBACK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
FLIP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class _Buckets:
    """Cumulative histogram counts for fixed bounds."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def add(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def family_buckets(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for bound, n in zip((*[repr(float(b)) for b in self.bounds], "+Inf"), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


def _seconds(start: str | None, end: str | None) -> float | None:
    a, b = parse_iso(start), parse_iso(end)
    if a is None or b is None:
        return None
    return max((b - a).total_seconds(), 0.0)


class _Finished:
    """Histograms over rows that never change once finished (steps, deploys), summed
    incrementally: each scrape reads only rows finished since the last one. Below the oldest
    unfinished row everything is counted; counted ids above it are remembered."""

    def __init__(self, table: str, label_sql: str, start_sql: str, where: str, bounds: tuple[float, ...]) -> None:
        self.table, self.label_sql, self.start_sql, self.where, self.bounds = table, label_sql, start_sql, where, bounds
        self.buckets: dict[tuple[str, ...], _Buckets] = {}
        self.below = 0
        self.counted: set[int] = set()
        self.lock = threading.Lock()

    def update(self, store: Any) -> dict[tuple[str, ...], _Buckets]:
        with self.lock:
            found = store.execute(
                f"SELECT id, {self.label_sql}, {self.start_sql}, finished_at FROM {self.table}"
                f" WHERE id > ? AND finished_at IS NOT NULL AND {self.where}", (self.below,)).fetchall()
            for row in found:
                if row[0] in self.counted:
                    continue
                self.counted.add(row[0])
                seconds = _seconds(row[-2], row[-1])
                if seconds is None:
                    continue
                labels = tuple(row[1:-2])
                b = self.buckets.get(labels)
                if b is None:
                    b = self.buckets[labels] = _Buckets(self.bounds)
                b.add(seconds)
            oldest_open = store.execute(f"SELECT min(id) FROM {self.table} WHERE id > ? AND finished_at IS NULL",
                                        (self.below,)).fetchone()[0]
            below = (oldest_open - 1) if oldest_open is not None else max(self.counted, default=self.below)
            if below > self.below:
                self.below = below
                self.counted = {i for i in self.counted if i > below}
            return dict(self.buckets)


class StoreCollector:
    """What the store says, collected at each scrape."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._steps = _Finished("steps", "name", "started_at", "1", STEP_BUCKETS)
        self._deploys = _Finished("deploys", "service, env", "started_at", "kind = 'deploy' AND started_at IS NOT NULL",
                                  DEPLOY_BUCKETS)
        self._dora: tuple[Any, list[Metric]] | None = None

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        store, cfg = self.rt.store, self.rt.cfg
        deploys = CounterMetricFamily("recess_deploys", "Finished deploys by outcome (their final status)",
                                      labels=["service", "env", "outcome"])
        # Every row counted from the (service, env, status) index, less the few rollback rows (their
        # own partial index): no scan of the table.
        finished = "status IN ('succeeded', 'failed', 'rolled_back', 'cancelled', 'rejected')"
        counts: dict[tuple[str, str, str], int] = {}
        for r in store.rows(f"SELECT service, env, status, count(*) AS n FROM deploys WHERE {finished} GROUP BY service, env, status"):
            counts[(r["service"], r["env"], r["status"])] = r["n"]
        for r in store.rows(f"SELECT service, env, status, count(*) AS n FROM deploys INDEXED BY deploys_rollbacks"
                            f" WHERE kind = 'rollback' AND {finished} GROUP BY service, env, status"):
            counts[(r["service"], r["env"], r["status"])] -= r["n"]
        # A release's own row is not a deployment of any service (its `service` is the release's
        # name): its members are, each counted above under its service. Rollbacks of releases
        # were taken out with the other rollbacks.
        for r in store.rows(f"SELECT service, env, status, count(*) AS n FROM deploys INDEXED BY deploys_release"
                            f" WHERE release_id > 0 AND release_id = id AND kind = 'release' AND {finished}"
                            f" GROUP BY service, env, status"):
            counts[(r["service"], r["env"], r["status"])] -= r["n"]
        for labels, n in sorted(counts.items()):
            if n > 0:
                deploys.add_metric(list(labels), n)
        yield deploys

        family = HistogramMetricFamily("recess_deploy_duration_seconds", "Deploy run time, start to end",
                                       labels=["service", "env"])
        for labels, b in sorted(self._deploys.update(store).items()):
            family.add_metric(list(labels), b.family_buckets(), b.sum)
        yield family

        family = HistogramMetricFamily("recess_deploy_step_duration_seconds", "Pipeline step durations", labels=["step"])
        for labels, b in sorted(self._steps.update(store).items()):
            family.add_metric(list(labels), b.family_buckets(), b.sum)
        yield family

        rollback = _Buckets(ROLLBACK_BUCKETS)
        for r in store.rows("SELECT created_at, traffic_at FROM deploys INDEXED BY deploys_rollbacks"
                            f" WHERE kind = 'rollback' AND traffic_at IS NOT NULL AND NOT {rows.PARENT_SQL}"):
            seconds = _seconds(r["created_at"], r["traffic_at"])
            if seconds is not None:
                rollback.add(seconds)
        family = HistogramMetricFamily("recess_rollback_seconds", "Rollbacks: from the click to traffic moved")
        family.add_metric([], rollback.family_buckets(), rollback.sum)
        yield family

        live = GaugeMetricFamily("recess_live_info", "The version serving each service and environment (always 1)",
                                 labels=["service", "env", "version"])
        for service in cfg.services:
            for env in cfg.service_environments(service):
                d = rows.live(store, service, env)
                if d is not None:  # cfg.services: never a release's name
                    live.add_metric([service, env, d["version"]], 1)
        yield live

        yield from self._dora_families(self.rt.now())

    def _dora_families(self, now: Any) -> list[Metric]:
        """The four keys per service (and 'all') over 30 and 90 days, recomputed at most once a
        minute: numbers over 30 and 90 days barely move in a minute, and computing them is most of
        a scrape's cost when the store changed."""
        store, cfg = self.rt.store, self.rt.cfg
        key = now.replace(second=0, microsecond=0)
        if self._dora is not None and self._dora[0] == key:
            return self._dora[1]
        freq = GaugeMetricFamily("recess_dora_deployment_frequency", "Successful deploys per week",
                                 labels=["service", "env", "days"])
        lead = GaugeMetricFamily("recess_dora_lead_time_seconds", "Median time from commit to live",
                                 labels=["service", "env", "days"])
        cfr = GaugeMetricFamily("recess_dora_change_failure_rate", "Failed changes over changes that moved traffic",
                                labels=["service", "env", "days"])
        restore = GaugeMetricFamily("recess_dora_time_to_restore_seconds", "Median time from a failing switch to the restoring one",
                                    labels=["service", "env", "days"])
        for days in dashboard.DORA_DAYS:
            for d in dashboard.dora_all(cfg, store, now=now, days=days):
                labels = [d.service or "all", d.env, str(days)]
                freq.add_metric(labels, d.frequency.value or 0.0)
                for family, value in ((lead, d.lead_time.value), (cfr, d.failure_rate.value), (restore, d.restore.value)):
                    if value is not None:
                        family.add_metric(labels, value)
        families = [freq, lead, cfr, restore]
        self._dora = (key, families)
        return families


class NowCollector:
    """What is true this instant: cheap, read at every scrape."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        store = self.rt.store
        # Member rows count, one per service; a release's own row does not (see docs/dashboard.md).
        counts = store.row("SELECT (SELECT count(*) FROM deploys WHERE status IN ('running', 'needs_attention')"
                           f" AND NOT {rows.PARENT_SQL}) AS running,"
                           " (SELECT count(*) FROM outbox WHERE sent_at IS NULL) AS outbox")
        yield GaugeMetricFamily("recess_deploys_in_progress", "Deploys running or needing attention", value=counts["running"])
        safe = current_calendar(self.rt.cfg, store).is_safe(self.rt.now())
        yield GaugeMetricFamily("recess_window_safe", "1 when deploying now is safe for every school, else 0",
                                value=1 if safe else 0)
        yield GaugeMetricFamily("recess_outbox_pending", "Slack messages not yet sent", value=counts["outbox"])


class Metrics:
    """The registries of one running recess (tests run several in one process): counters kept in
    this process, what is true now, and what the store's history says. The history's text is
    kept until the store changes (deploys, steps, approvals, audit, freezes) or a minute passes
    (the DORA periods slide), so a scrape while nothing happens costs a few index lookups."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.registry = CollectorRegistry(auto_describe=False)
        self.ofrep_requests = Counter("recess_ofrep_requests", "OFREP answers by HTTP status", ["status"],
                                      registry=self.registry)
        self.router_flip = Histogram("recess_router_flip_seconds", "Router weight changes (one call each)",
                                     buckets=FLIP_BUCKETS, registry=self.registry)
        self.now = CollectorRegistry(auto_describe=False)
        self.now.register(NowCollector(rt))
        self.history = CollectorRegistry(auto_describe=False)
        self.history.register(StoreCollector(rt))
        self._history: tuple[Any, bytes] | None = None
        self._lock = threading.Lock()

    def ofrep_answered(self, status: int) -> None:
        self.ofrep_requests.labels(str(status)).inc()

    def _history_key(self) -> tuple[Any, ...]:
        steps = self.rt.store.row("SELECT (SELECT max(id) FROM steps) AS last,"
                                  " (SELECT count(*) FROM steps WHERE finished_at IS NULL) AS open")
        minute = self.rt.now().replace(second=0, microsecond=0)
        return (*dash_fingerprint(self.rt.store), steps["last"], steps["open"], minute)

    def render(self) -> bytes:
        with self._lock:
            key = self._history_key()
            if self._history is None or self._history[0] != key:
                self._history = (key, generate_latest(self.history))
            history = self._history[1]
        return generate_latest(self.registry) + generate_latest(self.now) + history


def attach(rt: Runtime) -> Metrics:
    metrics = rt.extras.get("metrics")
    if metrics is None:
        metrics = rt.extras["metrics"] = Metrics(rt)
        deployer = rt.extras.get("deployer")
        if deployer is not None:
            deployer.traffic.flip_observers.append(metrics.router_flip.observe)
    return metrics


def routes(rt: Runtime) -> list[Route]:
    metrics = attach(rt)
    variable = rt.cfg.metrics.token_env
    token = os.environ.get(variable, "") if variable else None
    if variable and not token:
        log.warning("[metrics] token_env names %s, which is not set: GET /metrics refuses every scrape", variable)

    async def scrape(request: Request) -> Response:
        if variable is not None:
            scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
            if not token or scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
                return JSONResponse({"error": f"GET /metrics needs Authorization: Bearer with the token in ${variable}"},
                                    status_code=401, headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
        body = await run_in_threadpool(metrics.render)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return [Route("/metrics", scrape, methods=["GET"])]
