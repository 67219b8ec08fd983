"""Per-tenant limits: requests per window (429 + ``Retry-After``), concurrent jobs (429) and stored bytes (413).
Every refusal says which limit was hit, its value and the setting that raises it. A limit of 0 is off.

Requests are counted in fixed windows of `Settings.rate_limit_window_s`. With a Redis broker the counters
live in Redis (``INCR`` + ``EXPIRE``), so every API process of a deployment shares them; otherwise (the
embedded default) they live in each API process, so ``l2 serve --api-workers N`` admits up to N times the
limit. A fixed window admits at most twice the limit
across one window boundary; that is the price of one round trip per request instead of a sorted set. If Redis
cannot be reached the request is let through (a limiter outage must not take the API down) and logged.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.auth import Caller, CallerDep
from api.errors import PayloadTooLarge, TooManyRequests
from store.models import Checkpoint, Dataset, Job, ResumableUpload
from store.settings import Settings

log = logging.getLogger(__name__)

REDIS_SCHEMES = ("redis://", "rediss://", "redis+socket://")
JOB_RETRY_AFTER_S = 30.0  # a job slot frees when a job finishes; minutes, typically, so poll gently


class MemoryWindows:
    """Fixed-window request counters in this process (the embedded default runs one API process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, int], int] = {}

    def hit(self, tenant_id: str, window: int) -> int:
        with self._lock:
            if len(self._counts) > 10_000:  # drop windows that have passed
                self._counts = {k: v for k, v in self._counts.items() if k[1] >= window}
            key = (tenant_id, window)
            self._counts[key] = self._counts.get(key, 0) + 1
            return self._counts[key]


class RedisWindows:
    """Fixed-window request counters shared by every API process through Redis."""

    def __init__(self, url: str, window_s: float) -> None:
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        self._ttl = max(1, math.ceil(window_s) + 1)

    def hit(self, tenant_id: str, window: int) -> int:
        key = f"l2:ratelimit:{tenant_id}:{window}"
        pipe = self._redis.pipeline()
        pipe.incr(key)
        pipe.expire(key, self._ttl)
        return int(pipe.execute()[0])


class RateLimiter:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.limit = settings.rate_limit_per_window
        self.window_s = settings.rate_limit_window_s
        self.clock = clock
        use_redis = settings.broker_url.startswith(REDIS_SCHEMES)
        self.windows = RedisWindows(settings.broker_url, self.window_s) if use_redis else MemoryWindows()

    def check(self, tenant_id: str) -> None:
        if not self.limit:
            return
        now = self.clock()
        window = int(now // self.window_s)
        try:
            count = self.windows.hit(tenant_id, window)
        except Exception as exc:  # the limiter's store is down: serve rather than refuse
            log.warning("rate limiter unavailable (%s: %s); request let through", type(exc).__name__, exc)
            return
        if count > self.limit:
            retry_after = (window + 1) * self.window_s - now
            raise TooManyRequests(
                f"rate limit reached: at most {self.limit} requests per {self.window_s:g} s per tenant "
                f"(L2_RATE_LIMIT_PER_WINDOW); retry after {math.ceil(retry_after)} s",
                retry_after,
            )


async def enforce_rate_limit(request: Request, caller: CallerDep) -> None:
    """Router dependency: count the request against the caller's tenant (429 past the limit). The in-process
    counter is a dict update and runs on the event loop; the Redis one does network I/O, so a worker thread
    runs it (issue 12: a status poll should not queue for the thread pool more than it must)."""
    limiter = request.app.state.rate_limiter
    if isinstance(limiter.windows, MemoryWindows):
        limiter.check(caller.tenant_id)
    else:
        await run_in_threadpool(limiter.check, caller.tenant_id)


def check_concurrent_jobs(session: Session, caller: Caller, settings: Settings) -> None:
    """Refuse (429) a new job while the tenant already has `max_concurrent_jobs` queued or running."""
    limit = settings.max_concurrent_jobs
    if not limit:
        return
    active = session.execute(
        select(func.count())
        .select_from(Job)
        .where(Job.tenant_id == caller.tenant_id, Job.state.in_(("queued", "running")))
    ).scalar_one()
    if active >= limit:
        raise TooManyRequests(
            f"concurrent job limit reached: this tenant has {active} queued or running jobs and the limit is "
            f"{limit} (L2_MAX_CONCURRENT_JOBS); wait for one to finish or cancel one, then resubmit",
            JOB_RETRY_AFTER_S,
        )


def stored_bytes(session: Session, tenant_id: str) -> int:
    """What the tenant stores: checkpoints, uploaded datasets, artifacts, and the full declared length of
    every unfinished resumable upload (its bytes are promised, so they are reserved)."""
    sums = (
        select(func.coalesce(func.sum(Checkpoint.size_bytes), 0)).where(Checkpoint.tenant_id == tenant_id),
        select(func.coalesce(func.sum(Dataset.size_bytes), 0)).where(
            Dataset.tenant_id == tenant_id, Dataset.source == "upload"
        ),
        select(func.coalesce(func.sum(Job.artifact_bytes), 0)).where(Job.tenant_id == tenant_id),
        select(func.coalesce(func.sum(ResumableUpload.length), 0)).where(
            ResumableUpload.tenant_id == tenant_id, ResumableUpload.resource_id.is_(None)
        ),
    )
    return sum(int(session.execute(q).scalar_one()) for q in sums)


def quota_left(session: Session, caller: Caller, settings: Settings) -> int | None:
    """Bytes the tenant may still store; None when there is no quota."""
    if not settings.max_stored_bytes:
        return None
    return max(0, settings.max_stored_bytes - stored_bytes(session, caller.tenant_id))


def quota_message(settings: Settings, left: int, size: int | None = None) -> str:
    wanted = f"this upload needs {size} bytes but " if size is not None else "this upload does not fit: "
    return (
        f"stored-bytes quota exceeded: {wanted}only {left} of the tenant's {settings.max_stored_bytes} bytes "
        "are left (L2_MAX_STORED_BYTES); nothing was stored. Delete checkpoints or datasets you no longer "
        "need, or ask the operator to raise the quota"
    )


def check_quota(session: Session, caller: Caller, settings: Settings, size: int) -> None:
    """Refuse (413) an upload of ``size`` bytes that would take the tenant past its stored-bytes quota."""
    left = quota_left(session, caller, settings)
    if left is not None and size > left:
        raise PayloadTooLarge(quota_message(settings, left, size))
