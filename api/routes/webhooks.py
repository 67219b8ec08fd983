"""``/v1/webhooks``: endpoints that receive the tenant's job events (Standard Webhooks signatures), their
delivery log and redelivery; ``/v1/mlflow``: the tenant's default MLflow block."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response, status

from api.deps import CallerDep, ContextDep, SessionDep
from api.schemas import ERROR_RESPONSES, Limit, Message, Offset
from api.schemas_events import (
    MlflowBlock,
    WebhookCreate,
    WebhookDeliveriesPublic,
    WebhookDeliveryPublic,
    WebhookPublic,
    WebhooksPublic,
)
from api.services import webhooks as service

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=ERROR_RESPONSES)
mlflow_router = APIRouter(prefix="/v1/mlflow", tags=["mlflow"], responses=ERROR_RESPONSES)

UNSAFE_URL = {422: {"model": Message, "description": "the URL is invalid or resolves to a refused address"}}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookPublic,
    summary="Register a webhook endpoint (the answer shows its signing secret, once)",
    responses=UNSAFE_URL,
)
def create_webhook(body: WebhookCreate, ctx: ContextDep, session: SessionDep, caller: CallerDep):
    return service.create(ctx.settings, session, caller, body)


@router.get("", response_model=WebhooksPublic, summary="List your webhook endpoints")
def list_webhooks(session: SessionDep, caller: CallerDep):
    rows = service.list_(session, caller)
    return WebhooksPublic(data=[service.to_public(r) for r in rows], total=len(rows))


@router.get("/{webhook_id}", response_model=WebhookPublic)
def get_webhook(webhook_id: str, session: SessionDep, caller: CallerDep):
    return service.to_public(service.get(session, caller, webhook_id))


@router.delete("/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete a webhook endpoint")
def delete_webhook(webhook_id: str, session: SessionDep, caller: CallerDep):
    service.delete(session, caller, webhook_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{webhook_id}/rotate-secret",
    response_model=WebhookPublic,
    summary="New signing secret (shown once); the old one also signs for 24 h",
)
def rotate_secret(webhook_id: str, session: SessionDep, caller: CallerDep):
    return service.rotate_secret(session, caller, webhook_id)


@router.get(
    "/{webhook_id}/deliveries",
    response_model=WebhookDeliveriesPublic,
    summary="Delivery log: status, attempts, latency and the start of each answer (newest event first)",
)
def list_deliveries(
    webhook_id: str,
    session: SessionDep,
    caller: CallerDep,
    status: Literal["pending", "succeeded", "failed"] | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
):
    rows, total = service.deliveries(session, caller, webhook_id, status=status, limit=limit, offset=offset)
    return WebhookDeliveriesPublic(data=rows, total=total)


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/redeliver",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=WebhookDeliveryPublic,
    summary="Send a delivery again (same webhook-id)",
)
def redeliver(webhook_id: str, delivery_id: str, session: SessionDep, caller: CallerDep):
    return service.redeliver(session, caller, webhook_id, delivery_id)


@mlflow_router.get("", response_model=MlflowBlock | None, summary="Your default MLflow block (null: none)")
def get_mlflow_default(session: SessionDep, caller: CallerDep):
    return service.get_mlflow_default(session, caller)


@mlflow_router.put(
    "",
    response_model=MlflowBlock,
    summary="Set the MLflow block used by jobs that have none of their own",
    responses={422: {"model": Message, "description": "the tracking URI is invalid or refused"}},
)
def set_mlflow_default(body: MlflowBlock, ctx: ContextDep, session: SessionDep, caller: CallerDep):
    service.set_mlflow_default(ctx.settings, session, caller, body)
    return body


@mlflow_router.delete("", status_code=status.HTTP_204_NO_CONTENT, summary="Remove your default MLflow block")
def delete_mlflow_default(ctx: ContextDep, session: SessionDep, caller: CallerDep):
    service.set_mlflow_default(ctx.settings, session, caller, None)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
