"""Readiness checks: can this process reach its database and its message broker, and is any worker alive
to run what it enqueues? Workers report themselves every `Settings.worker_heartbeat_s` (`worker.liveness`);
one not heard from for `WORKER_MISSED_REPORTS` of those intervals counts as gone."""

from __future__ import annotations

from datetime import timedelta

import redis
from sqlalchemy import create_engine, select, text

from api.deps import AppContext
from store.models import WorkerHeartbeat, utcnow

TIMEOUT_S = 3
WORKER_MISSED_REPORTS = 3


def check_database(ctx: AppContext) -> str:
    with ctx.session_factory() as session:
        session.execute(text("SELECT 1"))
    return "ok"


def check_broker(url: str) -> str:
    if url.startswith(("redis://", "rediss://")):
        client = redis.Redis.from_url(url, socket_connect_timeout=TIMEOUT_S, socket_timeout=TIMEOUT_S)
        try:
            client.ping()
        finally:
            client.close()
        return "ok"
    if url.startswith("sqla+"):
        engine = create_engine(url.removeprefix("sqla+"))
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        finally:
            engine.dispose()
        return "ok"
    return "not checked (unknown broker scheme)"


class NoWorker(RuntimeError):
    """No worker has reported itself recently: queued jobs would wait."""


def check_workers(ctx: AppContext) -> str:
    window = timedelta(seconds=WORKER_MISSED_REPORTS * ctx.settings.worker_heartbeat_s)
    with ctx.session_factory() as session:
        rows = session.execute(
            select(WorkerHeartbeat.queues).where(WorkerHeartbeat.last_seen >= utcnow() - window)
        ).all()
    if not rows:
        raise NoWorker(
            f"no worker has reported in the last {window.total_seconds():.0f} s, so jobs stay queued; start one "
            "with 'l2 worker' (or 'l2 serve' without --no-worker)"
        )
    queues = sorted({q for (names,) in rows for q in names.split(",") if q})
    return f"ok ({len(rows)} alive; queues {', '.join(queues)})"


def readiness(ctx: AppContext) -> tuple[bool, dict[str, str]]:
    checks: dict[str, str] = {}
    ok = True
    for name, check in (
        ("database", lambda: check_database(ctx)),
        ("broker", lambda: check_broker(ctx.settings.broker_url)),
        ("workers", lambda: check_workers(ctx)),
    ):
        try:
            checks[name] = check()
        except Exception as exc:
            ok = False
            checks[name] = (
                f"unavailable: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            )
    return ok, checks
