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

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, load_only

from api.auth import Caller
from api.deps import AppContext
from api.errors import Conflict, Gone, NotFound, Unavailable
from api.schemas import ArtifactInfo, JobCreate, JobPublic
from api.services import job_events
from api.services.limits import check_concurrent_jobs
from api.services.owned import get_owned, list_owned
from store import job_states
from store.models import TERMINAL_STATES, Checkpoint, Dataset, Job, JobEvent, LayerResult
from store.settings import Settings

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


# What a job refers to, checked at submission: (request field, model, what to do when it is not found).
_REFERENCES = (
    (
        "checkpoint_id",
        Checkpoint,
        "upload the checkpoint with POST /v1/checkpoints and use the id it returns",
    ),
    ("dataset_id", Dataset, "upload or register the calibration data with POST /v1/datasets first"),
    ("eval_dataset_id", Dataset, "upload or register the evaluation data with POST /v1/datasets first"),
)
# Request fields a job stores as they were sent.
_FROM_REQUEST = (
    "checkpoint_id",
    "dataset_id",
    "eval_dataset_id",
    "architecture",
    "arch_kwargs",
    "target_ratio",
    "device",
)
# `JobPublic` fields shown exactly as the row stores them; `to_public` derives the others or defaults them.
_SHOWN_AS_STORED = (
    "id",
    "state",
    "phase",
    "eta_seconds",
    "latest_losses",
    "estimated_ratio",
    "target_ratio",
    "true_ratio",
    "original_bytes",
    "checkpoint_id",
    "dataset_id",
    "eval_dataset_id",
    "architecture",
    "device",
    "queue",
    "error",
    "evaluation",
    "idempotency_key",
    "created_at",
    "started_at",
    "finished_at",
    "updated_at",
)

# The polled read (`read_public`): the columns `to_public` reads, by SQLAlchemy Core from one statement built
# here with bound parameters. Through the ORM (identity map, instrumented attributes, a statement and its cache
# key built per call) the read cost about 250 us of CPU; this way about 60 us (issue 12, capacity).
_JOBS = Job.__table__
_PUBLIC_COLUMNS = (
    *_SHOWN_AS_STORED,
    "progress",
    "arch_kwargs",
    "options",
    "cancel_requested",
    "attempts",
    "artifact_path",
    "artifact_bytes",
    "artifact_sha256",
    "webhook_url",
    "mlflow",
)
_READ_PUBLIC = select(*(_JOBS.c[name] for name in _PUBLIC_COLUMNS)).where(
    _JOBS.c.id == bindparam("job_id"), _JOBS.c.tenant_id == bindparam("tenant_id")
)
_NOT_FOUND_HINT = "list yours with GET /v1/jobs"

# Jobs in these states may still read their checkpoint and datasets.
UNFINISHED_STATES = ("queued", "running")


def _check_references(session: Session, caller: Caller, body: JobCreate) -> None:
    """Refuse (404) a job that names a checkpoint or dataset the caller does not have."""
    for field, model, hint in _REFERENCES:
        object_id = getattr(body, field)
        if object_id is not None:
            get_owned(session, model, caller, object_id, field, hint)


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
    _check_references(session, caller, body)
    check_concurrent_jobs(session, caller, ctx.settings)
    job_events.check_job_request(ctx.settings, body)
    queue = choose_queue(body.device, ctx.settings)
    job = Job(
        **{field: getattr(body, field) for field in _FROM_REQUEST},
        tenant_id=caller.tenant_id,
        options=_options_with_preset(body),
        queue=queue,
        state="queued",
        phase="queued",
        progress=0.0,
        idempotency_key=idempotency_key or None,
        request_fingerprint=digest,
        **job_events.job_columns(body),
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
    webhook_secret = job_events.add_job_endpoint(session, job, body)
    job_states.submitted(session, job)
    session.commit()
    job.webhook_secret_once = webhook_secret  # shown in this answer only
    _enqueue(ctx, session, job)
    return job, True


def _enqueue(ctx: AppContext, session: Session, job: Job) -> None:
    try:
        ctx.enqueue(job.id, job.queue)
    except Exception as exc:
        log.exception("could not enqueue job %s", job.id)
        message = f"the job could not be handed to the work queue ({type(exc).__name__}); resubmit it later"
        queued = (Job.id == job.id, Job.state == "queued")
        job_states.end_job(session, job.id, queued, "failed", message, error=message)
        session.commit()
        raise Unavailable(
            f"job {job.id} was stored but the message broker is unavailable, so it was marked "
            "failed; retry the submission in a moment with a new Idempotency-Key "
            "(GET /readyz shows the broker's state)"
        ) from exc


def get(session: Session, caller: Caller, job_id: str) -> Job:
    return get_owned(session, Job, caller, job_id, "job", _NOT_FOUND_HINT)


def read_public(ctx: AppContext, caller: Caller, job_id: str) -> JobPublic:
    """The caller's job as `JobPublic`, in a session of its own: the polled read (`api.routes.jobs.get_job`),
    the same answer as `to_public` of `get` without loading an ORM object."""
    with ctx.session_factory() as session:
        row = session.execute(_READ_PUBLIC, {"job_id": job_id, "tenant_id": caller.tenant_id}).one_or_none()
        if row is None:
            raise NotFound.of("job", job_id, _NOT_FOUND_HINT)
        return to_public(row, session)


def list_(
    session: Session,
    caller: Caller,
    *,
    state: str | None,
    created_after: datetime | None,
    limit: int,
    offset: int,
    columns: tuple = (),
) -> tuple[list[Job], int]:
    """A page of the caller's jobs, newest first, and the count. ``columns`` (attributes of `Job`): load only
    these (a list page); touching any other column of the rows then raises instead of querying once per row."""
    conditions = []
    if state is not None:
        conditions.append(Job.state == state)
    if created_after is not None:
        conditions.append(Job.created_at > created_after)
    load = (load_only(*columns, raiseload=True),) if columns else ()
    return list_owned(session, Job, caller, *conditions, limit=limit, offset=offset, load=load)


def unfinished_job_using(session: Session, uses) -> str | None:
    """The id of a queued or running job for which ``uses`` (a condition on `Job`) holds, if there is one:
    a checkpoint or dataset such a job uses must not be deleted under it."""
    return session.execute(
        select(Job.id).where(uses, Job.state.in_(UNFINISHED_STATES)).limit(1)
    ).scalar_one_or_none()


def cancel(session: Session, caller: Caller, job_id: str) -> Job:
    """queued → canceled now; running → ``cancel_requested`` (the worker's heartbeat sees it within about a
    second and stops); finished → 409. Conditional updates make a race with the worker's claim safe."""
    job = get(session, caller, job_id)
    done = job_states.end_job(
        session,
        job.id,
        (Job.id == job.id, Job.state == "queued"),
        "canceled",
        "canceled while queued",
        cancel_requested=True,
    )
    if not done:
        done = job_states.request_cancel(session, job.id, job.phase)
    session.commit()
    session.refresh(job)
    if not done:
        raise Conflict(f"job {job_id} has already {job.state}; only queued or running jobs can be canceled")
    return job


def events(session: Session, caller: Caller, job_id: str) -> list[JobEvent]:
    return events_of(session, get(session, caller, job_id))


def events_of(session: Session, job: Job) -> list[JobEvent]:
    """The events of a job already read through `get` (so already the caller's): no second lookup."""
    statement = select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.created_at, JobEvent.id)
    return list(session.execute(statement).scalars().all())


def layers(session: Session, caller: Caller, job_id: str) -> list[LayerResult]:
    return layers_of(session, get(session, caller, job_id))


def layers_of(session: Session, job: Job) -> list[LayerResult]:
    """The per-layer rows of a job already read through `get`, in network order."""
    statement = select(LayerResult).where(LayerResult.job_id == job.id).order_by(LayerResult.position)
    return list(session.execute(statement).scalars().all())


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


def to_public(job: Job | Row, session: Session | None = None) -> JobPublic:
    """The job as the API shows it. ``job`` is a `Job` or a row of `_READ_PUBLIC`; a row needs the ``session``
    it came from (a succeeded job's MLflow export is looked up in it)."""
    artifact = None
    if job.state == "succeeded" and job.artifact_path:
        artifact = ArtifactInfo(
            url=f"/v1/jobs/{job.id}/artifact", bytes=job.artifact_bytes, sha256=job.artifact_sha256
        )
    progress = job.progress or 0.0
    return JobPublic(
        **{field: getattr(job, field) for field in _SHOWN_AS_STORED},
        progress=progress,
        progress_percent=round(100.0 * progress, 1),
        arch_kwargs=job.arch_kwargs or {},
        options=job.options or {},
        cancel_requested=bool(job.cancel_requested),
        artifact=artifact,
        attempts=job.attempts or 0,
        **job_events.public_fields(job, session),
    )


TERMINAL = TERMINAL_STATES


def _options_with_preset(body: JobCreate) -> dict:
    """The options the worker builds its `CompressionConfig` from; a preset travels as their ``preset`` key."""
    options = body.options.model_dump(mode="json", exclude_none=True)
    if body.preset:
        options["preset"] = body.preset
    return options
