from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response, status

from api.deps import CallerDep, ContextDep, SessionDep
from api.schemas import ERROR_RESPONSES, CheckpointPublic, CheckpointsPublic, Limit, Message
from api.services import checkpoints as service
from api.services.uploads import check_declared_length

router = APIRouter(prefix="/v1/checkpoints", tags=["checkpoints"], responses=ERROR_RESPONSES)

BINARY_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=CheckpointPublic,
    openapi_extra=BINARY_BODY,
    summary="Upload a checkpoint (raw bytes as the body)",
    responses={413: {"model": Message, "description": "larger than L2_MAX_UPLOAD_BYTES; nothing stored"}},
)
async def upload_checkpoint(
    request: Request,
    response: Response,
    ctx: ContextDep,
    caller: CallerDep,
    filename: Annotated[
        str,
        Query(
            min_length=1,
            max_length=255,
            description="original file name; its suffix tells the loader the format "
            "(.pt, .pth, .safetensors, .pt2, ...)",
        ),
    ],
    content_length: Annotated[str | None, Header()] = None,
):
    check_declared_length(content_length, ctx.settings.max_upload_bytes)
    row = await service.upload(ctx, caller, request.stream(), filename)
    response.headers["Location"] = f"/v1/checkpoints/{row.id}"
    return row


@router.get("", response_model=CheckpointsPublic, summary="List your checkpoints (newest first)")
def list_checkpoints(
    session: SessionDep, caller: CallerDep, limit: Limit = 50, offset: Annotated[int, Query(ge=0)] = 0
):
    rows, total = service.list_(session, caller, limit, offset)
    return CheckpointsPublic(data=[CheckpointPublic.model_validate(r) for r in rows], total=total)


@router.get("/{checkpoint_id}", response_model=CheckpointPublic)
def get_checkpoint(checkpoint_id: str, session: SessionDep, caller: CallerDep):
    return service.get(session, caller, checkpoint_id)


@router.delete(
    "/{checkpoint_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={409: {"model": Message, "description": "a queued or running job uses it"}},
)
def delete_checkpoint(checkpoint_id: str, ctx: ContextDep, session: SessionDep, caller: CallerDep) -> None:
    service.delete(ctx, session, caller, checkpoint_id)
