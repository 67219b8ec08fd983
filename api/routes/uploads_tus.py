"""Resumable uploads (tus 1.0: creation, expiration, termination, checksum with sha256) of checkpoints and
datasets of many GB. `api.services.resumable` has the protocol; here are its headers.

``POST /v1/uploads`` with ``Upload-Length`` and ``Upload-Metadata`` (``kind`` checkpoint|dataset,
``filename``; for datasets ``name`` and ``spec``) → 201 + ``Location``; ``PATCH`` appends at ``Upload-Offset``
(``Content-Type: application/offset+octet-stream``); ``HEAD`` reports the offset to resume from; ``DELETE``
terminates. When the last byte arrives the upload becomes ``L2-Resource: /v1/checkpoints/<id>`` (or datasets).
"""

from __future__ import annotations

from email.utils import format_datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request, Response, status

from api.deps import CallerDep, ContextDep, SessionDep
from api.schemas import ERROR_RESPONSES, Message, UploadPublic
from api.services import resumable as service
from store.models import ResumableUpload

# tus answers 412 to a request without 'Tus-Resumable: 1.0.0' on every route that requires it (documented here
# once, so the OpenAPI schema lists it wherever it can occur).
router = APIRouter(
    prefix="/v1/uploads",
    tags=["uploads"],
    responses={**ERROR_RESPONSES, 412: {"model": Message, "description": "Tus-Resumable missing or not 1.0.0"}},
)

TusVersion = Annotated[str | None, Header(description=f"must be {service.TUS_VERSION}")]


def require_tus(tus_resumable: TusVersion = None) -> None:
    service.check_version(tus_resumable)


def _headers(row: ResumableUpload, response: Response) -> None:
    response.headers["Tus-Resumable"] = service.TUS_VERSION
    response.headers["Upload-Offset"] = str(row.offset)
    response.headers["Upload-Length"] = str(row.length)
    response.headers["Upload-Expires"] = format_datetime(row.expires_at, usegmt=True)
    response.headers["Cache-Control"] = "no-store"
    if row.resource_id:
        response.headers["L2-Resource"] = service.resource_url(row)


def to_public(row: ResumableUpload) -> UploadPublic:
    return UploadPublic(
        id=row.id,
        kind=row.kind,
        filename=row.filename,
        name=row.name,
        length=row.length,
        offset=row.offset,
        complete=row.resource_id is not None,
        resource_id=row.resource_id,
        resource=service.resource_url(row),
        created_at=row.created_at,
        expires_at=row.expires_at,
    )


@router.options("", status_code=status.HTTP_204_NO_CONTENT, summary="tus discovery: version, extensions")
def tus_options(ctx: ContextDep, response: Response) -> None:
    response.headers.update(
        {
            "Tus-Resumable": service.TUS_VERSION,
            "Tus-Version": service.TUS_VERSION,
            "Tus-Extension": service.TUS_EXTENSIONS,
            "Tus-Max-Size": str(ctx.settings.max_upload_bytes),
            "Tus-Checksum-Algorithm": ",".join(service.CHECKSUM_ALGORITHMS),
        }
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    dependencies=[Depends(require_tus)],
    summary="Create a resumable upload (tus creation)",
    responses={
        201: {"description": "created; Location names the upload"},
        412: {"model": Message, "description": "Tus-Resumable missing or not 1.0.0"},
        413: {"model": Message, "description": "larger than L2_MAX_UPLOAD_BYTES or the tenant's quota"},
    },
)
def create_upload(
    response: Response,
    ctx: ContextDep,
    session: SessionDep,
    caller: CallerDep,
    upload_length: Annotated[int | None, Header(description="total bytes of the file")] = None,
    upload_metadata: Annotated[
        str | None, Header(description="kind, filename[, name, spec]: 'key base64(value)' pairs, comma-separated")
    ] = None,
    upload_defer_length: Annotated[str | None, Header()] = None,
) -> None:
    if upload_defer_length is not None or upload_length is None:
        raise service.BadRequest("send Upload-Length (the file's size in bytes); deferred lengths are not supported")
    new = service.validate_metadata(service.parse_metadata(upload_metadata))
    row = service.create(ctx, session, caller, upload_length, new)
    _headers(row, response)
    response.headers["Location"] = f"/v1/uploads/{row.id}"


@router.head("/{upload_id}", dependencies=[Depends(require_tus)], summary="The offset to resume from")
def upload_offset(upload_id: str, response: Response, ctx: ContextDep, session: SessionDep, caller: CallerDep):
    _headers(service.get(ctx, session, caller, upload_id), response)


@router.get("/{upload_id}", response_model=UploadPublic, summary="An upload's progress and what it became")
def get_upload(upload_id: str, ctx: ContextDep, session: SessionDep, caller: CallerDep):
    return to_public(service.get(ctx, session, caller, upload_id))


@router.patch(
    "/{upload_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Append bytes at Upload-Offset (tus core + checksum)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/offset+octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
    responses={
        409: {"model": Message, "description": "Upload-Offset is not the server's offset, or upload complete"},
        410: {"model": Message, "description": "the upload expired"},
        415: {"model": Message, "description": "Content-Type is not application/offset+octet-stream"},
        460: {"model": Message, "description": "the bytes do not match Upload-Checksum; they were dropped"},
    },
)
async def append_upload(
    upload_id: str,
    request: Request,
    response: Response,
    ctx: ContextDep,
    caller: CallerDep,
    upload_offset: Annotated[int, Header(ge=0, description="where these bytes go; must be the server's offset")],
    content_type: Annotated[str | None, Header()] = None,
    upload_checksum: Annotated[str | None, Header(description="'sha256 <base64 digest>' of this body")] = None,
    tus_resumable: TusVersion = None,
) -> None:
    # Checked here, after the headers validated: a request missing Upload-Offset hears that first (422).
    service.check_version(tus_resumable)
    if (content_type or "").split(";")[0].strip() != "application/offset+octet-stream":
        raise service.UnsupportedMediaType(
            f"PATCH needs 'Content-Type: application/offset+octet-stream' (got {content_type!r})"
        )
    checksum = service.parse_checksum(upload_checksum)
    row = await service.append(ctx, caller, upload_id, upload_offset, checksum, request.stream())
    _headers(row, response)


@router.delete(
    "/{upload_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[Depends(require_tus)],
    summary="Terminate an upload (its received bytes are deleted)",
)
def terminate_upload(upload_id: str, response: Response, ctx: ContextDep, session: SessionDep, caller: CallerDep):
    service.terminate(ctx, session, caller, upload_id)
    response.headers["Tus-Resumable"] = service.TUS_VERSION
