"""Jobs: submission (validated, idempotent, committed before it is enqueued), reading, cancelling, and the
finished artifact.

Commit, then enqueue: the worker reloads the row by id, so the row must exist before any worker can see the
message. If the broker refuses the message the job is marked failed at once (a queued row with no message
would wait forever) and the client gets a 503 telling it to resubmit.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.auth import Caller
from api.deps import AppContext
from api.errors import Conflict, Gone, NotFound, Unavailable
from api.models import TERMINAL_STATES, Checkpoint, Dataset, Job, JobEvent, LayerResult, utcnow
from api.schemas import ArtifactInfo, JobCreate, JobPublic
from api.settings import Settings

log = logging.getLogger(__name__)


def choose_queue(device: str, settings: Settings) -> str:
    """cuda → gpu; cpu → cpu; auto → gpu only when the operator says GPU workers exist."""
    if device == "cuda":
        return "gpu"
    if device == "auto" and settings.gpu_workers:
        return "gpu"
    return "cpu"


def fingerprint(body: JobCreate) -> str:
    canonical = json.dumps(
        body.model_dump(mode="json", exclude_none=True), sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _owned(session: Session, model, object_id: str, caller: Caller, field: str, hint: str):
    row = session.execute(
        select(model).where(model.id == object_id, model.tenant_id == caller.tenant_id)
    ).scalar_one_or_none()
    if row is None:
        raise NotFound(f"{field} {object_id!r} not found; {hint}")
    return row


def _by_idempotency_key(session: Session, caller: Caller, key: str) -> Job | None:
    return session.execute(
        select(Job).where(Job.tenant_id == caller.tenant_id, Job.idempotency_key == key)
    ).scalar_one_or_none()


def _replay(existing: Job, digest: str, key: str) -> Job:
    if existing.request_fingerprint != digest:
        raise Conflict(
            f"Idempotency-Key {key!r} was already used for job {existing.id} with a different request "
            "body; use a new key for a new job, or resend the identical body to get that job back"
        )
    return existing


def create(
    ctx: AppContext, session: Session, caller: Caller, body: JobCreate, idempotency_key: str | None
) -> tuple[Job, bool]:
    """Returns (job, created). ``created`` is False when ``idempotency_key`` replays an earlier submission."""
    digest = fingerprint(body)
    if idempotency_key:
        existing = _by_idempotency_key(session, caller, idempotency_key)
        if existing is not None:
            return _replay(existing, digest, idempotency_key), False
    _owned(
        session,
        Checkpoint,
        body.checkpoint_id,
        caller,
        "checkpoint_id",
        "upload the checkpoint with POST /v1/checkpoints and use the id it returns",
    )
    _owned(
        session,
        Dataset,
        body.dataset_id,
        caller,
        "dataset_id",
        "upload or register the calibration data with POST /v1/datasets first",
    )
    if body.eval_dataset_id is not None:
        _owned(
            session,
            Dataset,
            body.eval_dataset_id,
            caller,
            "eval_dataset_id",
            "upload or register the evaluation data with POST /v1/datasets first",
        )
    queue = choose_queue(body.device, ctx.settings)
    job = Job(
        tenant_id=caller.tenant_id,
        checkpoint_id=body.checkpoint_id,
        dataset_id=body.dataset_id,
        eval_dataset_id=body.eval_dataset_id,
        architecture=body.architecture,
        arch_kwargs=body.arch_kwargs,
        target_ratio=body.target_ratio,
        options=body.options.model_dump(mode="json", exclude_none=True),
        device=body.device,
        queue=queue,
        state="queued",
        phase="queued",
        progress=0.0,
        idempotency_key=idempotency_key or None,
        request_fingerprint=digest,
    )
    session.add(job)
    try:
        session.flush()
    except IntegrityError:  # a concurrent request with the same key won the race
        session.rollback()
        existing = _by_idempotency_key(session, caller, idempotency_key or "")
        if existing is None:
            raise
        return _replay(existing, digest, idempotency_key or ""), False
    session.add(
        JobEvent(job_id=job.id, state="queued", phase="queued", message=f"submitted to queue {queue}")
    )
    session.commit()
    _enqueue(ctx, session, job)
    return job, True


def _enqueue(ctx: AppContext, session: Session, job: Job) -> None:
    try:
        ctx.enqueue(job.id, job.queue)
    except Exception as exc:
        log.exception("could not enqueue job %s", job.id)
        now = utcnow()
        message = f"the job could not be handed to the work queue ({type(exc).__name__}); resubmit it later"
        session.execute(
            update(Job)
            .where(Job.id == job.id, Job.state == "queued")
            .values(state="failed", phase="failed", error=message, finished_at=now, updated_at=now)
        )
        session.add(JobEvent(job_id=job.id, state="failed", phase="failed", message=message))
        session.commit()
        raise Unavailable(
            f"job {job.id} was stored but the message broker is unavailable, so it was marked "
            "failed; retry the submission in a moment with a new Idempotency-Key "
            "(GET /readyz shows the broker's state)"
        ) from exc


def get(session: Session, caller: Caller, job_id: str) -> Job:
    job = session.execute(
        select(Job).where(Job.id == job_id, Job.tenant_id == caller.tenant_id)
    ).scalar_one_or_none()
    if job is None:
        raise NotFound.of("job", job_id, "list yours with GET /v1/jobs")
    return job


def list_(
    session: Session,
    caller: Caller,
    *,
    state: str | None,
    created_after: datetime | None,
    limit: int,
    offset: int,
) -> tuple[list[Job], int]:
    conditions = [Job.tenant_id == caller.tenant_id]
    if state is not None:
        conditions.append(Job.state == state)
    if created_after is not None:
        conditions.append(Job.created_at > created_after)
    total = session.execute(select(func.count()).select_from(Job).where(*conditions)).scalar_one()
    rows = (
        session.execute(
            select(Job).where(*conditions).order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)
        )
        .scalars()
        .all()
    )
    return list(rows), total


def cancel(session: Session, caller: Caller, job_id: str) -> Job:
    """queued → canceled now; running → ``cancel_requested`` (the worker's heartbeat sees it within about a
    second and stops); finished → 409. Conditional updates make a race with the worker's claim safe."""
    job = get(session, caller, job_id)
    now = utcnow()
    done = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.state == "queued")
        .values(
            state="canceled",
            phase="canceled",
            cancel_requested=True,
            finished_at=now,
            updated_at=now,
            eta_seconds=None,
        )
    ).rowcount
    if done:
        session.add(
            JobEvent(job_id=job.id, state="canceled", phase="canceled", message="canceled while queued")
        )
    else:
        done = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.state == "running")
            .values(cancel_requested=True, updated_at=Job.updated_at)  # updated_at is the worker's heartbeat
        ).rowcount
        if done:
            session.add(
                JobEvent(
                    job_id=job.id,
                    state="running",
                    phase=job.phase,
                    message="cancellation requested; the worker stops at its next check",
                )
            )
    session.commit()
    session.refresh(job)
    if not done:
        raise Conflict(f"job {job_id} has already {job.state}; only queued or running jobs can be canceled")
    return job


def events(session: Session, caller: Caller, job_id: str) -> list[JobEvent]:
    get(session, caller, job_id)
    return list(
        session.execute(
            select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.created_at, JobEvent.id)
        )
        .scalars()
        .all()
    )


def layers(session: Session, caller: Caller, job_id: str) -> list[LayerResult]:
    get(session, caller, job_id)
    return list(
        session.execute(
            select(LayerResult).where(LayerResult.job_id == job_id).order_by(LayerResult.position)
        )
        .scalars()
        .all()
    )


def artifact_file(ctx: AppContext, session: Session, caller: Caller, job_id: str) -> tuple[Job, Path]:
    job = get(session, caller, job_id)
    if job.state != "succeeded" or not job.artifact_path:
        hint = {
            "queued": "wait until it has run",
            "running": "wait until it has finished",
            "failed": "see its error and resubmit",
            "canceled": "resubmit it",
        }.get(job.state, "")
        raise Conflict(
            f"job {job_id} is {job.state}, so it has no artifact; {hint} (artifacts exist only for "
            "succeeded jobs)"
        )
    path = ctx.storage.absolute(job.artifact_path)
    if not path.is_file():
        raise Gone(f"the artifact of job {job_id} is no longer on the server; resubmit the job")
    return job, path


def to_public(job: Job) -> JobPublic:
    artifact = None
    if job.state == "succeeded" and job.artifact_path:
        artifact = ArtifactInfo(
            url=f"/v1/jobs/{job.id}/artifact", bytes=job.artifact_bytes, sha256=job.artifact_sha256
        )
    return JobPublic(
        id=job.id,
        state=job.state,
        phase=job.phase,
        progress=job.progress or 0.0,
        progress_percent=round(100.0 * (job.progress or 0.0), 1),
        eta_seconds=job.eta_seconds,
        latest_losses=job.latest_losses,
        estimated_ratio=job.estimated_ratio,
        target_ratio=job.target_ratio,
        true_ratio=job.true_ratio,
        original_bytes=job.original_bytes,
        checkpoint_id=job.checkpoint_id,
        dataset_id=job.dataset_id,
        eval_dataset_id=job.eval_dataset_id,
        architecture=job.architecture,
        arch_kwargs=job.arch_kwargs or {},
        options=job.options or {},
        device=job.device,
        queue=job.queue,
        cancel_requested=bool(job.cancel_requested),
        error=job.error,
        evaluation=job.evaluation,
        artifact=artifact,
        attempts=job.attempts or 0,
        idempotency_key=job.idempotency_key,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        updated_at=job.updated_at,
    )


TERMINAL = TERMINAL_STATES
