"""Who runs a job: claiming it for one attempt, and telling a live attempt from a dead one.

A job's message can arrive more than once (late acknowledgement redelivers after a worker dies; the start-up
sweep re-enqueues abandoned jobs). The claim makes that safe: it moves the row queued → running (or takes
over a running row whose attempt is dead) with a conditional UPDATE on ``(state, attempts)``, so exactly one
delivery wins; a job that already ended is left alone. The row's ``worker`` names the attempt's process as
``host:pid``; ``updated_at`` is its heartbeat (`worker.progress.Heartbeat`).

An attempt is dead when
* it is this very process (a new task in a single-job worker process means the previous one ended), or
* it ran on this host and its process no longer exists, or
* its heartbeat is older than ``stale_after_s`` (any host; the only signal across machines).
"""

from __future__ import annotations

import enum
import logging
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select

from store import job_states
from store.job_states import still_claimed_by
from store.models import TERMINAL_STATES, Job, utcnow

log = logging.getLogger(__name__)

# A running attempt whose heartbeat (every ~1 s, `worker.progress.Heartbeat`) is older than this is dead.
STALE_AFTER_S = 60.0
# A job whose worker process died this many times is failed instead of retried: it is probably what kills
# the worker (out of memory), and another attempt would only take the next worker down with it.
MAX_ATTEMPTS = 3


def _fail_lost_too_often(session, job_id, where: tuple, attempts: int, worker: str | None) -> None:
    """Fail (and commit) a job whose worker died ``attempts`` times, if its row still matches ``where``:
    retrying it once more would probably only kill the next worker too (see ``MAX_ATTEMPTS``)."""
    message = (
        f"the worker process running this job stopped {attempts} times (last on {worker}) without finishing "
        "it, most likely killed for lack of memory; lower options.batch_size or the calibration "
        "max_samples, or use a worker with more memory, then resubmit"
    )
    job_states.end_job(session, job_id, where, "failed", message, error=message)
    session.commit()


def owner_identity() -> str:
    """``host:pid`` of this process: what the job row's ``worker`` column records for a claim."""
    return f"{socket.gethostname()}:{os.getpid()}"


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes (stored as UTC); PostgreSQL aware ones."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def attempt_is_dead(
    worker: str | None,
    heartbeat: datetime | None,
    *,
    stale_after_s: float,
    me: str | None = None,
    now: datetime | None = None,
) -> bool:
    if not worker:
        return True
    if me is not None and worker == me:
        return True
    host, _, pid = worker.rpartition(":")
    if host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid)):
        return True
    heartbeat = as_utc(heartbeat)
    if heartbeat is None:
        return True
    return ((now or utcnow()) - heartbeat).total_seconds() > stale_after_s


class Outcome(enum.Enum):
    CLAIMED = "claimed"
    ENDED = "ended"  # already succeeded / failed / canceled (or canceled now, before any work)
    BUSY = "busy"  # a live attempt elsewhere runs it
    MISSING = "missing"


@dataclass(frozen=True)
class Claim:
    job_id: object
    owner: str
    attempt: int


def claim_job(
    job_id, session_factory, *, stale_after_s: float, me: str | None = None
) -> tuple[Outcome, Claim | None]:
    """Try to make this process the job's running attempt (see the module docstring)."""
    me = me or owner_identity()
    with session_factory() as session:
        job = session.execute(select(Job).where(Job.id == job_id)).scalar_one_or_none()
        if job is None:
            return Outcome.MISSING, None
        if job.state in TERMINAL_STATES:
            return Outcome.ENDED, None
        dead = job.state == "running" and attempt_is_dead(
            job.worker, job.updated_at, stale_after_s=stale_after_s, me=me
        )
        if job.state == "running" and not dead:
            return Outcome.BUSY, None
        previous = job.attempts or 0
        prev_state, prev_worker = job.state, job.worker  # the UPDATEs below refresh ``job``
        unchanged = (Job.id == job_id, Job.state == prev_state, Job.attempts == previous)
        if prev_state == "running" and previous >= MAX_ATTEMPTS and prev_worker != me:
            _fail_lost_too_often(session, job_id, unchanged, previous, prev_worker)
            return Outcome.ENDED, None
        if job.cancel_requested:
            job_states.end_job(session, job_id, unchanged, "canceled", "canceled before the worker started it")
            session.commit()
            return Outcome.ENDED, None
        note = f"attempt {previous + 1} started on {me}"
        if prev_state == "running":
            note += f"; the previous attempt on {prev_worker} stopped (worker lost)"
        first = job.started_at is None
        if not job_states.start_attempt(
            session, job_id, unchanged, owner=me, attempt=previous + 1, first=first, message=note
        ):
            session.rollback()
            return Outcome.BUSY, None
        session.commit()
        return Outcome.CLAIMED, Claim(job_id, me, previous + 1)


def requeue_abandoned(
    session_factory, queues: tuple[str, ...] | list[str], *, stale_after_s: float, enqueue
) -> list:
    """Put running jobs whose attempt is dead back to ``queued`` and enqueue them again; return their ids.

    Run by every worker at start-up and then periodically (`worker.signals`): brokers do not hand back a
    message whose worker was killed (the SQL broker marks it consumed; Redis only after its visibility
    timeout), so without this a killed worker's job would stay ``running`` forever. The conditional UPDATE
    lets several sweeping workers race safely.
    """
    requeued = []
    with session_factory() as session:
        rows = session.execute(
            select(Job.id, Job.worker, Job.updated_at, Job.attempts, Job.queue).where(
                Job.state == "running", Job.queue.in_(list(queues))
            )
        ).all()
        for job_id, worker, heartbeat, attempts, queue in rows:
            if not attempt_is_dead(worker, heartbeat, stale_after_s=stale_after_s):
                continue
            guard = still_claimed_by(job_id, worker, attempts)
            if attempts >= MAX_ATTEMPTS:
                _fail_lost_too_often(session, job_id, guard, attempts, worker)
                continue
            message = f"attempt {attempts} on {worker} was lost (worker stopped or no heartbeat); job requeued"
            if not job_states.requeue(session, job_id, guard, message):
                continue
            session.commit()
            enqueue(job_id, queue)
            requeued.append(job_id)
            log.warning("job %s: attempt %s on %s was lost; requeued on %s", job_id, attempts, worker, queue)
    return requeued
