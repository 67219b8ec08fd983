"""The losses a running job reported over time (`store.models.JobLossPoint`, written by `worker.progress`), for
the web page's loss curves. Tenant-scoped like every read: the job must be the caller's."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth import Caller
from api.services import jobs
from store.models import Job, JobLossPoint

MAX_POINTS = 2000  # a curve needs no more; longer runs are thinned evenly (first and last kept)


def points(session: Session, caller: Caller, job_id: str, *, after_seq: int = 0) -> list[JobLossPoint]:
    """The job's points with ``seq`` > ``after_seq``, oldest first, at most `MAX_POINTS` (evenly thinned)."""
    return points_of(session, jobs.get(session, caller, job_id), after_seq=after_seq)


def points_of(session: Session, job: Job, *, after_seq: int = 0) -> list[JobLossPoint]:
    """`points` of a job already read through `jobs.get` (so already the caller's): no second lookup."""
    rows = list(
        session.execute(
            select(JobLossPoint)
            .where(JobLossPoint.job_id == job.id, JobLossPoint.seq > after_seq)
            .order_by(JobLossPoint.seq)
        ).scalars()
    )
    if len(rows) <= MAX_POINTS:
        return rows
    step = (len(rows) - 1) / (MAX_POINTS - 1)
    return [rows[round(i * step)] for i in range(MAX_POINTS)]
