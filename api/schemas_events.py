"""Request and response bodies of webhooks and MLflow (issue 11); `api.schemas` imports the pieces jobs use."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from store.outbox import EVENT_TYPES

EventType = Literal[EVENT_TYPES]  # the outbox's list: one place names the event types


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WebhookCreate(_Strict):
    url: str = Field(min_length=1, max_length=2000, description="http(s) URL; private addresses are refused")
    events: list[EventType] = Field(default_factory=list, description="event types to send; empty: all")
    description: str | None = Field(None, max_length=500)


class WebhookPublic(BaseModel):
    id: str
    url: str
    description: str | None
    events: list[str]
    status: Literal["active", "failing"]
    failing_since: datetime | None
    job_id: str | None = Field(description="set for a job's own webhook_url endpoint")
    created_at: datetime
    secret: str | None = Field(
        None, description="the signing secret (whsec_…): shown only when created or rotated; store it"
    )
    previous_secret_expires_at: datetime | None = None


class WebhooksPublic(BaseModel):
    data: list[WebhookPublic]
    total: int


class WebhookAttemptPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    number: int
    started_at: datetime
    status_code: int | None
    latency_ms: float | None
    response_snippet: str | None
    error: str | None


class WebhookDeliveryPublic(BaseModel):
    id: str
    event_id: str = Field(description="the webhook-id header: the same on every retry")
    event_type: str
    job_id: str | None
    status: Literal["pending", "succeeded", "failed"]
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_latency_ms: float | None
    last_response: str | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    log: list[WebhookAttemptPublic]


class WebhookDeliveriesPublic(BaseModel):
    data: list[WebhookDeliveryPublic]
    total: int


class MlflowBlock(_Strict):
    """Where a succeeded job's result is logged: an MLflow tracking server (http or https), an experiment
    name, and optionally a registered model that gets a new version for it."""

    tracking_uri: str = Field(min_length=1, max_length=2000, description="http(s) URL of the tracking server")
    experiment: str = Field("l2-compression", min_length=1, max_length=500)
    registered_model: str | None = Field(None, min_length=1, max_length=500)


class MlflowPublic(BaseModel):
    """A job's MLflow block and how its export went (``status`` null until the job has succeeded)."""

    tracking_uri: str
    experiment: str
    registered_model: str | None
    status: Literal["pending", "logged", "failed"] | None = None
    attempts: int = 0
    run_id: str | None = None
    model_version: str | None = None
    error: str | None = None


def mlflow_public(block: dict[str, Any] | None, export=None) -> MlflowPublic | None:
    if not block:
        return None
    public = MlflowPublic(**MlflowBlock(**block).model_dump())
    if export is not None:
        public.status, public.attempts = export.status, export.attempts or 0
        public.run_id, public.model_version, public.error = export.run_id, export.model_version, export.last_error
    return public
