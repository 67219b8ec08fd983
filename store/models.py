"""ORM models (SQLAlchemy 2 declarative). Ids are UUID strings; timestamps are timezone-aware UTC on both
PostgreSQL and SQLite (`UTCDateTime`). Every tenant-owned row carries ``tenant_id``: the API filters every
query by it, so one tenant's key never sees another tenant's rows.

The worker writes to `Job` (state, progress, artifact), `JobEvent` and `LayerResult`; the API creates the
rest.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JOB_STATES = ("queued", "running", "succeeded", "failed", "canceled")
TERMINAL_STATES = ("succeeded", "failed", "canceled")
DEVICES = ("auto", "cpu", "cuda")
DATASET_SOURCES = ("upload", "path")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes in and out. SQLite has no time zones: values are stored as naive UTC and given
    their zone back on read, so comparisons and JSON output are the same on both databases."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


def _id() -> Mapped[str]:
    return mapped_column(String(36), primary_key=True, default=new_id)


def _tenant() -> Mapped[str]:
    return mapped_column(String(36), ForeignKey("tenants.id", ondelete="CASCADE"), index=True)


def _created() -> Mapped[datetime]:
    return mapped_column(default=utcnow)


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = _id()
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = _created()
    mlflow: Mapped[dict[str, Any] | None] = mapped_column(JSON, doc="default MLflow block of the tenant's jobs")


class ApiKey(Base):
    """An API key ``l2_<prefix>_<secret>``: the prefix finds the row, only the secret's SHA-256 is stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = _created()
    revoked_at: Mapped[datetime | None]


class Checkpoint(Base):
    __tablename__ = "checkpoints"

    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    filename: Mapped[str] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(Text, doc="relative to data_dir")
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = _created()


class Dataset(Base):
    """Calibration (or evaluation) data: an uploaded archive/tensor file (``path`` relative to data_dir) or a
    registered server path (absolute, inside `Settings.allowed_data_roots`). ``spec`` holds the
    `compression_core.loading.CalibrationSpec` values the worker reads it with."""

    __tablename__ = "datasets"

    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    name: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(Text)
    filename: Mapped[str | None] = mapped_column(String(255))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = _created()


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at"),
        Index("ix_jobs_state_queue", "state", "queue"),
        # The web page: the jobs list filtered by state, and the compare page's jobs of one checkpoint.
        Index("ix_jobs_tenant_state_created", "tenant_id", "state", "created_at"),
        Index("ix_jobs_tenant_checkpoint_state_created", "tenant_id", "checkpoint_id", "state", "created_at"),
    )

    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = mapped_column(String(36), ForeignKey("tenants.id", ondelete="CASCADE"))
    # Nullable so a checkpoint or dataset can be deleted once no active job needs it; finished jobs keep
    # their results and say the input is gone.
    checkpoint_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("checkpoints.id", ondelete="SET NULL")
    )
    dataset_id: Mapped[str | None] = mapped_column(String(36), ForeignKey("datasets.id", ondelete="SET NULL"))
    eval_dataset_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("datasets.id", ondelete="SET NULL")
    )
    architecture: Mapped[str | None] = mapped_column(String(200))
    arch_kwargs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    target_ratio: Mapped[float] = mapped_column(Float)
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    device: Mapped[str] = mapped_column(String(16), default="auto")
    queue: Mapped[str] = mapped_column(String(16), default="cpu")
    state: Mapped[str] = mapped_column(String(16), default="queued")
    phase: Mapped[str | None] = mapped_column(String(64), default="queued")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    eta_seconds: Mapped[float | None] = mapped_column(Float)
    latest_losses: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    estimated_ratio: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_fingerprint: Mapped[str | None] = mapped_column(
        String(64), doc="SHA-256 of the creating request body"
    )
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    artifact_path: Mapped[str | None] = mapped_column(Text, doc="relative to data_dir")
    artifact_bytes: Mapped[int | None] = mapped_column(BigInteger)
    artifact_sha256: Mapped[str | None] = mapped_column(String(64))
    true_ratio: Mapped[float | None] = mapped_column(Float)
    original_bytes: Mapped[int | None] = mapped_column(BigInteger)
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    webhook_url: Mapped[str | None] = mapped_column(Text, doc="per-job webhook shortcut (issue 11)")
    mlflow: Mapped[dict[str, Any] | None] = mapped_column(JSON, doc="MLflow block: where to log the result")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = _created()
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[str] = _id()
    job_id: Mapped[str] = mapped_column(String(36), ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    state: Mapped[str] = mapped_column(String(16))
    phase: Mapped[str | None] = mapped_column(String(64))
    message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()


class LayerResult(Base):
    """One tensor of a finished job's per-layer report (`compression_core.report`)."""

    __tablename__ = "layer_results"
    __table_args__ = (Index("ix_layer_results_job_position", "job_id", "position"),)

    id: Mapped[str] = _id()
    job_id: Mapped[str] = mapped_column(String(36), ForeignKey("jobs.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(Text)
    shape: Mapped[list[Any]] = mapped_column(default=list)
    dtype: Mapped[str] = mapped_column(String(32))
    numel: Mapped[int] = mapped_column(BigInteger)
    mode: Mapped[str] = mapped_column(String(32))
    transform: Mapped[str | None] = mapped_column(String(32))
    params: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    levels: Mapped[int | None] = mapped_column(BigInteger)
    bit_width: Mapped[float | None] = mapped_column(Float)
    entropy_bits: Mapped[float | None] = mapped_column(Float)
    sparsity: Mapped[float | None] = mapped_column(Float)
    bytes: Mapped[int | None] = mapped_column(BigInteger)
    original_bytes: Mapped[int | None] = mapped_column(BigInteger)


class WorkerHeartbeat(Base):
    """A Celery worker's main process as it last reported itself (every `Settings.worker_heartbeat_s`, see
    `worker.liveness`): what /readyz counts to tell whether any worker is alive to run queued jobs. A worker
    that stops cleanly deletes its row; a killed one's row goes stale."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(255), primary_key=True, doc="host:pid of the main process")
    name: Mapped[str] = mapped_column(String(255), doc="Celery node name")
    queues: Mapped[str] = mapped_column(String(64), doc="comma-separated queues it consumes")
    started_at: Mapped[datetime] = _created()
    last_seen: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class ResumableUpload(Base):
    """A tus 1.0 upload in progress (or just finished): ``offset`` bytes of ``length`` have been received into
    a part file under ``<data_dir>/tmp``; on the last byte the file becomes the checkpoint or dataset
    ``resource_id`` (the same id as the upload). Unfinished uploads count against the tenant's stored-bytes
    quota with their full declared length and are deleted when untouched past ``expires_at``."""

    __tablename__ = "resumable_uploads"
    __table_args__ = (Index("ix_resumable_uploads_expires_at", "expires_at"),)

    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    kind: Mapped[str] = mapped_column(String(16), doc="checkpoint | dataset")
    filename: Mapped[str] = mapped_column(String(255))
    name: Mapped[str | None] = mapped_column(String(200), doc="dataset name")
    spec: Mapped[dict[str, Any] | None] = mapped_column(JSON, doc="dataset calibration spec")
    length: Mapped[int] = mapped_column(BigInteger)
    offset: Mapped[int] = mapped_column(BigInteger, default=0)
    resource_id: Mapped[str | None] = mapped_column(String(36), doc="the checkpoint or dataset, once complete")
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    expires_at: Mapped[datetime]


# -- events out of the service (issue 11): webhooks from a transactional outbox, MLflow exports ----------------
# An auto-incrementing 64-bit key on PostgreSQL; SQLite only auto-increments a column declared INTEGER.
_SEQ = BigInteger().with_variant(Integer(), "sqlite")


class WebhookEndpoint(Base):
    """Where a tenant's job events go. ``job_id`` set: the per-job ``webhook_url`` shortcut (only that job's
    events). ``secret`` signs deliveries (Standard Webhooks, ``whsec_`` + base64); after a rotation the previous
    secret signs too until ``previous_secret_expires_at``. ``status`` becomes ``failing`` when a delivery gave
    up after the retry window, and ``active`` again on the next success."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = _tenant()
    job_id: Mapped[str | None] = mapped_column(String(36), ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(String(500))
    event_types: Mapped[list[Any]] = mapped_column(default=list, doc="empty: every event type")
    secret: Mapped[str] = mapped_column(String(100))
    previous_secret: Mapped[str | None] = mapped_column(String(100))
    previous_secret_expires_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(16), default="active")
    failing_since: Mapped[datetime | None]
    created_at: Mapped[datetime] = _created()


class OutboxEvent(Base):
    """One event, written in the same transaction as the state change it reports (`api.outbox.emit`), so a
    crash can neither lose it nor invent it. ``id`` is the ``webhook-id`` of every delivery of it; ``seq``
    orders a job's events; ``dispatched_at`` is set once it has been fanned out to deliveries."""

    __tablename__ = "outbox_events"

    seq: Mapped[int] = mapped_column(_SEQ, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    tenant_id: Mapped[str] = mapped_column(String(36), ForeignKey("tenants.id", ondelete="CASCADE"))
    job_id: Mapped[str | None] = mapped_column(String(36), ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = _created()
    dispatched_at: Mapped[datetime | None] = mapped_column(index=True)


class WebhookDelivery(Base):
    """One event to one endpoint, retried until the receiver answers 2xx or the retry window closes."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_endpoint_job", "endpoint_id", "job_id", "event_seq"),
    )

    id: Mapped[str] = _id()
    endpoint_id: Mapped[str] = mapped_column(String(36), ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    event_seq: Mapped[int] = mapped_column(_SEQ, ForeignKey("outbox_events.seq", ondelete="CASCADE"), index=True)
    event_id: Mapped[str] = mapped_column(String(40))
    event_type: Mapped[str] = mapped_column(String(40))
    job_id: Mapped[str | None] = mapped_column(String(36))
    status: Mapped[str] = mapped_column(String(16), default="pending", doc="pending | succeeded | failed")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    window_started_at: Mapped[datetime] = mapped_column(default=utcnow, doc="the retry window runs from here")
    leased_until: Mapped[datetime | None] = mapped_column(doc="a dispatcher is sending it until then")
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_latency_ms: Mapped[float | None] = mapped_column(Float)
    last_response: Mapped[str | None] = mapped_column(Text, doc="start of the receiver's last answer")
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    delivered_at: Mapped[datetime | None]


class WebhookAttempt(Base):
    """One HTTP request of a delivery: the delivery log."""

    __tablename__ = "webhook_attempts"

    id: Mapped[str] = _id()
    delivery_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    response_snippet: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)


class MlflowExport(Base):
    """Logging a succeeded job's result to MLflow: created when its ``job.succeeded`` event is dispatched,
    retried with backoff on failure (each failure is a ``job.mlflow_failed`` event); never fails the job."""

    __tablename__ = "mlflow_exports"
    __table_args__ = (Index("ix_mlflow_exports_due", "status", "next_attempt_at"),)

    id: Mapped[str] = _id()
    tenant_id: Mapped[str] = mapped_column(String(36), ForeignKey("tenants.id", ondelete="CASCADE"))
    job_id: Mapped[str] = mapped_column(String(36), ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="pending", doc="pending | logged | failed")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    leased_until: Mapped[datetime | None]
    run_id: Mapped[str | None] = mapped_column(String(64))
    model_version: Mapped[str | None] = mapped_column(String(32))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobLossPoint(Base):
    """The optimizer's losses at one progress write of a running job (`worker.progress`, at most one per
    ``L2_PROGRESS_MIN_INTERVAL_S``): the web page's loss curves. ``seq`` orders a job's points."""

    __tablename__ = "job_loss_points"
    __table_args__ = (Index("ix_job_loss_points_job_seq", "job_id", "seq"),)

    seq: Mapped[int] = mapped_column(_SEQ, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(36), ForeignKey("jobs.id", ondelete="CASCADE"))
    phase: Mapped[str | None] = mapped_column(String(64))
    progress: Mapped[float] = mapped_column(Float)
    estimated_ratio: Mapped[float | None] = mapped_column(Float)
    losses: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = _created()
