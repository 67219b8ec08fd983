from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response, status

from api.deps import CallerDep, ContextDep, SessionDep
from api.routes.stored_files import BINARY_BODY, IN_USE_RESPONSE, TOO_LARGE_RESPONSE
from api.schemas import (
    ERROR_RESPONSES,
    NO_CONTROL_CHARACTERS,
    CheckpointPublic,
    CheckpointsPublic,
    Limit,
    Offset,
)
from api.services import checkpoints as service
from api.services.uploads import check_declared_length

router = APIRouter(prefix="/v1/checkpoints", tags=["checkpoints"], responses=ERROR_RESPONSES)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=CheckpointPublic,
    openapi_extra=BINARY_BODY,
    summary="Upload a checkpoint (raw bytes as the body)",
    responses=TOO_LARGE_RESPONSE,
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
            pattern=NO_CONTROL_CHARACTERS,
            description="original file name; its suffix tells the loader the format "
            "(.pt, .pth, .safetensors, .pt2, ...)",
        ),
    ],
    content_length: Annotated[str | None, Header(include_in_schema=False)] = None,  # set by the HTTP client
):
    check_declared_length(content_length, ctx.settings.max_upload_bytes)
    row = await service.upload(ctx, caller, request.stream(), filename)
    response.headers["Location"] = f"/v1/checkpoints/{row.id}"
    return row


@router.get("", response_model=CheckpointsPublic, summary="List your checkpoints (newest first)")
def list_checkpoints(session: SessionDep, caller: CallerDep, limit: Limit = 50, offset: Offset = 0):
    rows, total = service.list_(session, caller, limit, offset)
    return CheckpointsPublic(data=[CheckpointPublic.model_validate(r) for r in rows], total=total)


@router.get("/{checkpoint_id}", response_model=CheckpointPublic)
def get_checkpoint(checkpoint_id: str, session: SessionDep, caller: CallerDep):
    return service.get(session, caller, checkpoint_id)


@router.delete(
    "/{checkpoint_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=IN_USE_RESPONSE,
)
def delete_checkpoint(checkpoint_id: str, ctx: ContextDep, session: SessionDep, caller: CallerDep) -> None:
    service.delete(ctx, session, caller, checkpoint_id)
