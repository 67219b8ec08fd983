"""Every change of a job's state, in one place: submitted → queued → running → succeeded | failed | canceled,
and running → queued when an attempt is lost.

The API (submission, cancel) and the workers (claim, requeue, outcome) both change a job only through these
functions, so every change leaves the row alike (an end stamps the finish time, names the end state as the
phase and clears the ETA) and records its `JobEvent` and its webhook event (`store.outbox.emit_state`) in the
same transaction. Each change is one conditional
UPDATE: ``where`` says which row state the writer expects (e.g. "still claimed by my attempt"), so of two
racing writers only the one whose condition still matches changes the row, and only that one records the
event. The caller commits.
"""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from store.models import TERMINAL_STATES, Job, JobEvent, utcnow
from store.outbox import emit_state  # each state change's webhook event, in the same transaction

__all__ = [
    "TERMINAL_STATES",
    "end_job",
    "record_event",
    "request_cancel",
    "requeue",
    "start_attempt",
    "still_claimed_by",
    "succeed",
]


def record_event(session: Session, job_id, state: str, phase: str | None, message: str) -> None:
    """The job's history row for a change (or a phase of a running attempt), in the caller's transaction."""
    session.add(JobEvent(job_id=job_id, state=state, phase=phase, message=message))


def still_claimed_by(job_id, owner: str | None, attempt: int) -> tuple:
    """WHERE conditions that match the job's row only while attempt number ``attempt`` of ``owner`` still
    runs it. Every write of an attempt (and of the sweep that ends it) is conditional on them, so an attempt
    presumed dead and replaced can never overwrite what its successor wrote."""
    return (Job.id == job_id, Job.state == "running", Job.worker == owner, Job.attempts == attempt)


def submitted(session: Session, job: Job) -> None:
    """Record a new job row (state ``queued``, added by the caller) as submitted to its queue."""
    record_event(session, job.id, "queued", "queued", f"submitted to queue {job.queue}")
    emit_state(session, job.id, "queued")


def start_attempt(
    session: Session, job_id, where: tuple, *, owner: str, attempt: int, first: bool, message: str
) -> bool:
    """queued (or running with a dead attempt) → running as attempt number ``attempt`` of ``owner``."""
    now = utcnow()
    values = dict(
        state="running",
        attempts=attempt,
        worker=owner,
        phase="loading",
        progress=0.0,
        eta_seconds=None,
        error=None,
        updated_at=now,
    )
    if first:
        values["started_at"] = now
    if not session.execute(update(Job).where(*where).values(**values)).rowcount:
        return False
    record_event(session, job_id, "running", "loading", message)
    emit_state(session, job_id, "running")
    return True


def requeue(session: Session, job_id, where: tuple, message: str) -> bool:
    """running (an attempt that died) → queued, to be delivered to a worker again."""
    done = session.execute(
        update(Job).where(*where).values(state="queued", phase="queued", eta_seconds=None, updated_at=utcnow())
    ).rowcount
    if done:
        record_event(session, job_id, "queued", "queued", message)
        emit_state(session, job_id, "queued")
    return bool(done)


def request_cancel(session: Session, job_id, phase: str | None) -> bool:
    """Ask the running attempt to stop (its heartbeat reads the flag); the state stays ``running`` until the
    attempt ends the job as ``canceled``."""
    done = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == "running")
        .values(cancel_requested=True, updated_at=Job.updated_at)  # updated_at is the worker's heartbeat
    ).rowcount
    if done:
        record_event(session, job_id, "running", phase, "cancellation requested; the worker stops at its next check")
    return bool(done)


def end_job(session: Session, job_id, where: tuple, state: str, message: str, **columns) -> bool:
    """Move the job to the end ``state`` (failed or canceled; setting ``columns`` too) if its row still
    matches ``where``, and record ``message`` as its event. Returns whether it did."""
    now = utcnow()
    ended = session.execute(
        update(Job)
        .where(*where)
        .values(state=state, phase=state, finished_at=now, updated_at=now, eta_seconds=None, **columns)
    ).rowcount
    if ended:
        record_event(session, job_id, state, state, message)
        emit_state(session, job_id, state)
    return bool(ended)


def succeed(session: Session, job_id, where: tuple, message: str, **columns) -> bool:
    """running → succeeded with the artifact's and the result's ``columns``, if ``where`` still matches."""
    now = utcnow()
    won = session.execute(
        update(Job)
        .where(*where)
        .values(
            state="succeeded",
            phase="done",
            progress=1.0,
            eta_seconds=0.0,
            finished_at=now,
            updated_at=now,
            error=None,
            **columns,
        )
    ).rowcount
    if won:
        record_event(session, job_id, "succeeded", "done", message)
        emit_state(session, job_id, "succeeded")
    return bool(won)
