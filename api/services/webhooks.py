"""Webhook endpoints of a tenant: register (URL checked against SSRF rules, secret shown once), list, delete,
rotate the secret, read the delivery log, redeliver; and the tenant's default MLflow block.

Deliveries themselves are made by the workers (`worker.events.dispatcher`) from the outbox.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from api.auth import Caller
from api.errors import NotFound
from api.schemas_events import (
    MlflowBlock,
    WebhookAttemptPublic,
    WebhookCreate,
    WebhookDeliveryPublic,
    WebhookPublic,
)
from api.services.job_events import check_url_or_422
from api.services.owned import get_owned
from store.models import Tenant, WebhookAttempt, WebhookDelivery, WebhookEndpoint, utcnow
from store.settings import Settings
from store.webhook_signing import new_secret

# After a rotation the old secret keeps signing (beside the new one) this long, so receivers can switch over.
ROTATION_OVERLAP = timedelta(hours=24)
# Attempts shown per delivery in the log (the newest).
LOG_ATTEMPTS = 20


def create(settings: Settings, session: Session, caller: Caller, body: WebhookCreate) -> WebhookPublic:
    check_url_or_422(settings, body.url, "url")
    secret = new_secret()
    endpoint = WebhookEndpoint(
        tenant_id=caller.tenant_id,
        url=body.url,
        description=body.description,
        event_types=list(dict.fromkeys(body.events)),
        secret=secret,
        status="active",
    )
    session.add(endpoint)
    session.commit()
    return to_public(endpoint, secret=secret)


def get(session: Session, caller: Caller, endpoint_id: str) -> WebhookEndpoint:
    return get_owned(session, WebhookEndpoint, caller, endpoint_id, "webhook", "list yours with GET /v1/webhooks")


def list_(session: Session, caller: Caller) -> list[WebhookEndpoint]:
    return list(
        session.execute(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.tenant_id == caller.tenant_id)
            .order_by(WebhookEndpoint.created_at.desc(), WebhookEndpoint.id)
        ).scalars()
    )


def delete(session: Session, caller: Caller, endpoint_id: str) -> None:
    """Delete the endpoint with its deliveries; events not yet delivered to it are not sent."""
    session.delete(get(session, caller, endpoint_id))
    session.commit()


def rotate_secret(session: Session, caller: Caller, endpoint_id: str) -> WebhookPublic:
    """A new secret, shown once; the old one also signs for `ROTATION_OVERLAP` (two signatures per request)."""
    endpoint = get(session, caller, endpoint_id)
    secret = new_secret()
    endpoint.previous_secret, endpoint.previous_secret_expires_at = endpoint.secret, utcnow() + ROTATION_OVERLAP
    endpoint.secret = secret
    session.commit()
    return to_public(endpoint, secret=secret)


def deliveries(
    session: Session, caller: Caller, endpoint_id: str, *, status: str | None, limit: int, offset: int
) -> tuple[list[WebhookDeliveryPublic], int]:
    """The endpoint's delivery log, newest event first, each with its latest attempts."""
    get(session, caller, endpoint_id)
    where = [WebhookDelivery.endpoint_id == endpoint_id]
    if status is not None:
        where.append(WebhookDelivery.status == status)
    total = session.execute(select(func.count()).select_from(WebhookDelivery).where(*where)).scalar_one()
    rows = list(
        session.execute(
            select(WebhookDelivery)
            .where(*where)
            .order_by(WebhookDelivery.event_seq.desc(), WebhookDelivery.id)
            .limit(limit)
            .offset(offset)
        ).scalars()
    )
    attempts: dict[str, list] = {row.id: [] for row in rows}
    if rows:
        for attempt in session.execute(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(list(attempts)))
            .order_by(WebhookAttempt.number.desc())
        ).scalars():
            if len(attempts[attempt.delivery_id]) < LOG_ATTEMPTS:
                attempts[attempt.delivery_id].append(WebhookAttemptPublic.model_validate(attempt))
    return [_delivery_public(row, attempts[row.id]) for row in rows], total


def redeliver(session: Session, caller: Caller, endpoint_id: str, delivery_id: str) -> WebhookDeliveryPublic:
    """Send the delivery again now, with the same ``webhook-id``, whatever its status; a new retry window
    starts."""
    get(session, caller, endpoint_id)
    delivery = session.execute(
        select(WebhookDelivery).where(WebhookDelivery.id == delivery_id, WebhookDelivery.endpoint_id == endpoint_id)
    ).scalar_one_or_none()
    if delivery is None:
        raise NotFound.of("delivery", delivery_id, f"list them with GET /v1/webhooks/{endpoint_id}/deliveries")
    now = utcnow()
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id)
        .values(status="pending", next_attempt_at=now, window_started_at=now, leased_until=None, delivered_at=None)
    )
    session.commit()
    session.refresh(delivery)
    return _delivery_public(delivery, [])


def to_public(endpoint: WebhookEndpoint, *, secret: str | None = None) -> WebhookPublic:
    return WebhookPublic(
        id=endpoint.id,
        url=endpoint.url,
        description=endpoint.description,
        events=list(endpoint.event_types or []),
        status=endpoint.status,
        failing_since=endpoint.failing_since,
        job_id=endpoint.job_id,
        created_at=endpoint.created_at,
        secret=secret,
        previous_secret_expires_at=endpoint.previous_secret_expires_at,
    )


def _delivery_public(row: WebhookDelivery, log: list) -> WebhookDeliveryPublic:
    return WebhookDeliveryPublic(
        id=row.id,
        event_id=row.event_id,
        event_type=row.event_type,
        job_id=row.job_id,
        status=row.status,
        attempts=row.attempts or 0,
        next_attempt_at=row.next_attempt_at if row.status == "pending" else None,
        last_status_code=row.last_status_code,
        last_latency_ms=row.last_latency_ms,
        last_response=row.last_response,
        last_error=row.last_error,
        created_at=row.created_at,
        delivered_at=row.delivered_at,
        log=log,
    )


# -- the tenant's default MLflow block ----
def get_mlflow_default(session: Session, caller: Caller) -> MlflowBlock | None:
    block = session.get(Tenant, caller.tenant_id).mlflow
    return MlflowBlock(**block) if block else None


def set_mlflow_default(settings: Settings, session: Session, caller: Caller, body: MlflowBlock | None) -> None:
    """Jobs without their own ``mlflow`` block are logged with this one (None: not at all)."""
    if body is not None:
        check_url_or_422(settings, body.tracking_uri, "tracking_uri")
    session.execute(
        update(Tenant).where(Tenant.id == caller.tenant_id).values(mlflow=body.model_dump() if body else None)
    )
    session.commit()
