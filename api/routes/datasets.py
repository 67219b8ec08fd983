from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response, status

from api.deps import CallerDep, ContextDep, SessionDep
from api.routes.stored_files import BINARY_BODY, IN_USE_RESPONSE, TOO_LARGE_RESPONSE
from api.schemas import (
    ERROR_RESPONSES,
    NO_CONTROL_CHARACTERS,
    DatasetCreate,
    DatasetPublic,
    DatasetsPublic,
    Limit,
    Message,
    Offset,
)
from api.services import datasets as service
from api.services.uploads import check_declared_length

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=ERROR_RESPONSES)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetPublic,
    summary="Register calibration data already on the server by its path",
    responses={403: {"model": Message, "description": "the path is outside the allowed data roots"}},
)
def register_dataset(
    body: DatasetCreate, response: Response, ctx: ContextDep, session: SessionDep, caller: CallerDep
):
    row = service.register(session, caller, body, ctx.settings.allowed_data_roots, ctx.settings.data_dir)
    response.headers["Location"] = f"/v1/datasets/{row.id}"
    return row


@router.post(
    "/upload",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetPublic,
    openapi_extra=BINARY_BODY,
    summary="Upload calibration data: an image archive (.zip/.tar/.tar.gz) or a tensor file (raw body)",
    responses=TOO_LARGE_RESPONSE,
)
async def upload_dataset(
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
            description="file name; its suffix tells the reader the format",
        ),
    ],
    name: Annotated[str | None, Query(max_length=200, pattern=NO_CONTROL_CHARACTERS)] = None,
    spec: Annotated[
        str | None,
        Query(description='calibration settings as JSON, e.g. {"kind":"images","resize":256,"crop":224}'),
    ] = None,
    content_length: Annotated[str | None, Header(include_in_schema=False)] = None,  # set by the HTTP client
):
    parsed = service.parse_spec(spec)
    check_declared_length(content_length, ctx.settings.max_upload_bytes)
    row = await service.upload(ctx, caller, request.stream(), name=name, filename=filename, spec=parsed)
    response.headers["Location"] = f"/v1/datasets/{row.id}"
    return row


@router.get("", response_model=DatasetsPublic, summary="List your datasets (newest first)")
def list_datasets(session: SessionDep, caller: CallerDep, limit: Limit = 50, offset: Offset = 0):
    rows, total = service.list_(session, caller, limit, offset)
    return DatasetsPublic(data=[DatasetPublic.model_validate(r) for r in rows], total=total)


@router.get("/{dataset_id}", response_model=DatasetPublic)
def get_dataset(dataset_id: str, session: SessionDep, caller: CallerDep):
    return service.get(session, caller, dataset_id)


@router.delete(
    "/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=IN_USE_RESPONSE,
)
def delete_dataset(dataset_id: str, ctx: ContextDep, session: SessionDep, caller: CallerDep) -> None:
    service.delete(ctx, session, caller, dataset_id)
