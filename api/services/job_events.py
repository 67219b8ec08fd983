"""What a job's submission and answer carry for events (issue 11): the per-job ``webhook_url`` shortcut (an
endpoint of its own, scoped to the job, whose secret is shown once in the 202 answer) and the ``mlflow`` block
with the state of its export."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, object_session

from api.errors import Unprocessable
from api.schemas import JobCreate
from api.schemas_events import mlflow_public
from store.models import Job, MlflowExport, WebhookEndpoint
from store.settings import Settings
from store.url_guard import UnsafeURL, check_url
from store.webhook_signing import new_secret


def check_url_or_422(settings: Settings, url: str, field: str) -> None:
    """Refuse (422) a URL the service must not call (`store.url_guard`), naming the field."""
    try:
        check_url(url, settings.webhook_allow)
    except UnsafeURL as exc:
        raise Unprocessable(f"{field}: {exc}") from exc


def check_job_request(settings: Settings, body: JobCreate) -> None:
    if body.webhook_url is not None:
        check_url_or_422(settings, body.webhook_url, "webhook_url")
    if body.mlflow is not None:
        check_url_or_422(settings, body.mlflow.tracking_uri, "mlflow.tracking_uri")


def job_columns(body: JobCreate) -> dict[str, Any]:
    return {"webhook_url": body.webhook_url, "mlflow": body.mlflow.model_dump() if body.mlflow else None}


def add_job_endpoint(session: Session, job: Job, body: JobCreate) -> str | None:
    """The job's own endpoint for ``webhook_url`` (in the submission's transaction); returns its secret."""
    if body.webhook_url is None:
        return None
    secret = new_secret()
    session.add(
        WebhookEndpoint(
            tenant_id=job.tenant_id,
            job_id=job.id,
            url=body.webhook_url,
            description=f"webhook_url of job {job.id}",
            event_types=list(body.webhook_events or []),
            secret=secret,
            status="active",
        )
    )
    return secret


# A succeeded job's MLflow export, as `mlflow_public` reads it: SQLAlchemy Core, one statement built once (every
# poll of a succeeded job runs it; through the ORM it cost more than the job's own read).
_EXPORTS = MlflowExport.__table__
_JOB_EXPORT = select(
    _EXPORTS.c.config,
    _EXPORTS.c.status,
    _EXPORTS.c.attempts,
    _EXPORTS.c.run_id,
    _EXPORTS.c.model_version,
    _EXPORTS.c.last_error,
).where(_EXPORTS.c.job_id == bindparam("job_id"))


def public_fields(job, session: Session | None = None) -> dict[str, Any]:
    """`JobPublic` fields about events: the webhook URL, its secret (submission answer only), MLflow. ``job``
    is a `Job` (its own session is used) or a row with the same names read in ``session``."""
    export = None
    if session is None:
        session = object_session(job)
    if session is not None and job.state == "succeeded":
        export = session.execute(_JOB_EXPORT, {"job_id": job.id}).one_or_none()
    block = job.mlflow or (export.config if export is not None else None)
    return {
        "webhook_url": job.webhook_url,
        "webhook_secret": getattr(job, "webhook_secret_once", None),
        "mlflow": mlflow_public(block, export),
    }
