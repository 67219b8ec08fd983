"""Prometheus metrics of one app instance (its own registry, so several apps in one test process do not
clash).

Job counts and durations are read from the database at scrape time: the worker processes finish jobs, not the
API, so the database is the one place that knows them. ``l2_job_duration_seconds`` is therefore a histogram of
the jobs finished in the last `DURATION_WINDOW` (it can go down as old jobs leave the window). Queue depth is
Redis ``LLEN`` of each queue for a Redis broker, else the number of queued job rows.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import redis
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from store.models import JOB_STATES, Job, utcnow
from store.queues import QUEUES

log = logging.getLogger(__name__)

DURATION_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
DURATION_WINDOW = timedelta(days=7)
DURATION_ROW_LIMIT = 50_000


def redis_queue_depths(broker_url: str, queues=QUEUES) -> dict[str, int]:
    client = redis.Redis.from_url(broker_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        return {q: int(client.llen(q)) for q in queues}
    finally:
        client.close()


class DatabaseCollector(Collector):
    def __init__(self, ctx) -> None:
        self.ctx = ctx

    def collect(self):
        try:
            with self.ctx.session_factory() as session:
                yield from self._jobs_by_state(session)
                yield from self._durations(session)
                yield from self._queue_depth(session)
        except Exception:  # a scrape must not fail because the database hiccuped; /readyz reports that
            log.warning("metrics: database unavailable", exc_info=True)

    def _jobs_by_state(self, session):
        counts = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
        gauge = GaugeMetricFamily("l2_jobs", "Jobs by state (all tenants)", labels=["state"])
        for state in JOB_STATES:
            gauge.add_metric([state], counts.get(state, 0))
        yield gauge

    def _durations(self, session):
        since = utcnow() - DURATION_WINDOW
        rows = session.execute(
            select(Job.state, Job.started_at, Job.finished_at)
            .where(Job.finished_at.is_not(None), Job.started_at.is_not(None), Job.finished_at >= since)
            .order_by(Job.finished_at.desc())
            .limit(DURATION_ROW_LIMIT)
        ).all()
        family = HistogramMetricFamily(
            "l2_job_duration_seconds",
            "Run time (started → finished) of jobs finished in the last 7 days",
            labels=["state"],
        )
        for state in ("succeeded", "failed", "canceled"):
            durations = [max(0.0, (f - s).total_seconds()) for st, s, f in rows if st == state]
            buckets = [(str(float(b)), sum(d <= b for d in durations)) for b in DURATION_BUCKETS]
            buckets.append(("+Inf", len(durations)))
            family.add_metric([state], buckets, sum(durations))
        yield family

    def _queue_depth(self, session):
        gauge = GaugeMetricFamily("l2_queue_depth", "Messages waiting per queue", labels=["queue"])
        url = self.ctx.settings.broker_url
        depths = None
        if url.startswith(("redis://", "rediss://")):
            try:
                depths = redis_queue_depths(url)
            except Exception:
                log.warning("metrics: Redis unavailable; queue depth from the database", exc_info=True)
        if depths is None:
            rows = dict(
                session.execute(
                    select(Job.queue, func.count()).where(Job.state == "queued").group_by(Job.queue)
                ).all()
            )
            depths = {q: rows.get(q, 0) for q in QUEUES}
        for queue, depth in depths.items():
            gauge.add_metric([queue], depth)
        yield gauge


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.upload_bytes = Counter(
            "l2_upload_bytes", "Bytes received in accepted uploads", ["kind"], registry=self.registry
        )
        for kind in ("checkpoint", "dataset"):
            self.upload_bytes.labels(kind=kind)

    def attach_database(self, ctx) -> None:
        self.registry.register(DatabaseCollector(ctx))

    def render(self) -> bytes:
        return generate_latest(self.registry)
