"""Ending a job: one conditional UPDATE to a terminal state plus the `JobEvent` that records it.

Shared by the API (cancelling a queued job) and the workers (claims, the pipeline's outcome) so that every
way a job ends leaves the row alike: the phase names the end state, the finish time is stamped and no ETA
is left. The condition is what makes racing writers safe: only the writer whose condition still matches
the row ends the job, and only that one records the event.
"""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from api.models import Job, JobEvent, utcnow


def end_job(session: Session, job_id, where: tuple, state: str, message: str, **columns) -> bool:
    """Move the job to ``state`` (setting ``columns`` too) if its row still matches ``where``, and then record
    ``message`` as its event. Returns whether it did; the caller commits."""
    now = utcnow()
    ended = session.execute(
        update(Job)
        .where(*where)
        .values(state=state, phase=state, finished_at=now, updated_at=now, eta_seconds=None, **columns)
    ).rowcount
    if ended:
        session.add(JobEvent(job_id=job_id, state=state, phase=state, message=message))
    return bool(ended)
