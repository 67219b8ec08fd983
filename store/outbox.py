"""The transactional outbox: every job state change writes its event row in the same transaction.

`emit` is the one function the API and the workers call right after they change a job's state (submission,
claim, progress, success, failure, cancel, requeue), before they commit. Because the event row commits or
rolls back with the state change, a crash can neither lose an event (the change is there, so is the event)
nor invent one (no change, no event). Delivering it is someone else's job: the workers' dispatcher
(`worker.events.dispatcher`) fans committed events out to the tenant's webhook endpoints and retries them.

The payload is a snapshot of the job read inside the same transaction (so it shows the values the change has
just written), in the Standard Webhooks shape ``{"type", "timestamp", "data"}``.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.models import Job, OutboxEvent, utcnow

EVENT_TYPES = (
    "job.queued",
    "job.started",
    "job.progress",
    "job.succeeded",
    "job.failed",
    "job.canceled",
    "job.mlflow_logged",
    "job.mlflow_failed",
)
# The event a job's move to each state emits.
STATE_EVENTS = {
    "queued": "job.queued",
    "running": "job.started",
    "succeeded": "job.succeeded",
    "failed": "job.failed",
    "canceled": "job.canceled",
}

_SNAPSHOT = (
    Job.id,
    Job.tenant_id,
    Job.state,
    Job.phase,
    Job.progress,
    Job.eta_seconds,
    Job.estimated_ratio,
    Job.target_ratio,
    Job.true_ratio,
    Job.original_bytes,
    Job.artifact_path,
    Job.artifact_bytes,
    Job.artifact_sha256,
    Job.evaluation,
    Job.error,
    Job.attempts,
    Job.created_at,
    Job.started_at,
    Job.finished_at,
)


def new_event_id() -> str:
    """``msg_`` + 32 hex digits: the ``webhook-id`` every delivery (and retry) of the event carries."""
    return f"msg_{uuid.uuid4().hex}"


def _iso(value) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def job_data(row) -> dict[str, Any]:
    """The ``data`` of a job event: what a pipeline needs to act without calling back (ids, state, ratios,
    artifact URL, size and SHA-256, evaluation, error)."""
    data: dict[str, Any] = {
        "id": row.id,
        "state": row.state,
        "phase": row.phase,
        "progress": row.progress,
        "attempts": row.attempts,
        "target_ratio": row.target_ratio,
        "created_at": _iso(row.created_at),
        "started_at": _iso(row.started_at),
        "finished_at": _iso(row.finished_at),
    }
    if row.state == "running":
        data.update(eta_seconds=row.eta_seconds, estimated_ratio=row.estimated_ratio)
    if row.state == "succeeded":
        data.update(
            true_ratio=row.true_ratio,
            original_bytes=row.original_bytes,
            artifact={
                "url": f"/v1/jobs/{row.id}/artifact",
                "bytes": row.artifact_bytes,
                "sha256": row.artifact_sha256,
            },
            evaluation=row.evaluation,
        )
    if row.state in ("failed", "canceled"):
        data["error"] = row.error
    return data


def emit(session: Session, job_id, event_type: str, extra: dict[str, Any] | None = None) -> OutboxEvent:
    """Add ``event_type`` for job ``job_id`` to the outbox in the caller's transaction (the caller commits).

    Call it after the statement that changed the job, so the snapshot shows the new values. ``extra`` is
    merged into ``data`` (e.g. the MLflow run id)."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}; one of {EVENT_TYPES}")
    row = session.execute(select(*_SNAPSHOT).where(Job.id == job_id)).one()
    data = job_data(row)
    if extra:
        data.update(extra)
    now = utcnow()
    event = OutboxEvent(
        id=new_event_id(),
        tenant_id=row.tenant_id,
        job_id=row.id,
        type=event_type,
        payload={"type": event_type, "timestamp": _iso(now), "data": data},
        created_at=now,
    )
    session.add(event)
    return event


def emit_state(session: Session, job_id, state: str) -> OutboxEvent:
    """`emit` the event of the job's move to ``state`` (queued, running, succeeded, failed, canceled)."""
    return emit(session, job_id, STATE_EVENTS[state])
