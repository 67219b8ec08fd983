from __future__ import annotations

import base64
from typing import Annotated

from fastapi import APIRouter, Header, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from api.deps import CallerDep, ContextDep, SessionDep
from api.schemas import (
    ERROR_RESPONSES,
    IsoDateTime,
    JobCreate,
    JobEventPublic,
    JobEventsPublic,
    JobPublic,
    JobsPublic,
    JobState,
    LayerResultPublic,
    LayerResultsPublic,
    Limit,
    Message,
    Offset,
)
from api.services import jobs as service

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ERROR_RESPONSES)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    summary="Submit a compression job",
    responses={
        200: {
            "model": JobPublic,
            "description": "replay of an earlier submission with the same Idempotency-Key and body",
        },
        404: {"model": Message, "description": "a referenced checkpoint or dataset does not exist"},
        409: {"model": Message, "description": "Idempotency-Key reused with a different body"},
        503: {"model": Message, "description": "the message broker is unavailable"},
    },
)
def create_job(
    body: JobCreate,
    response: Response,
    ctx: ContextDep,
    session: SessionDep,
    caller: CallerDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
):
    job, created = service.create(ctx, session, caller, body, idempotency_key)
    response.status_code = status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return service.to_public(job)


@router.get("", response_model=JobsPublic, summary="List your jobs (newest first)")
def list_jobs(
    session: SessionDep,
    caller: CallerDep,
    state: JobState | None = None,
    created_after: IsoDateTime | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
):
    rows, total = service.list_(
        session, caller, state=state, created_after=created_after, limit=limit, offset=offset
    )
    return JobsPublic(data=[service.to_public(j) for j in rows], total=total, limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobPublic)
async def get_job(job_id: str, ctx: ContextDep, caller: CallerDep):
    # The endpoint clients poll: one trip to a worker thread for the read, and the answer serialized once
    # (returned as a model, FastAPI would validate it again against response_model).
    public = await run_in_threadpool(service.read_public, ctx, caller, job_id)
    return Response(public.model_dump_json(), media_type="application/json")


@router.post(
    "/{job_id}/cancel",
    response_model=JobPublic,
    summary="Cancel a queued or running job",
    responses={409: {"model": Message, "description": "the job has already finished"}},
)
def cancel_job(job_id: str, session: SessionDep, caller: CallerDep):
    return service.to_public(service.cancel(session, caller, job_id))


@router.get(
    "/{job_id}/events", response_model=JobEventsPublic, summary="State and phase changes, oldest first"
)
def job_events(job_id: str, session: SessionDep, caller: CallerDep):
    return JobEventsPublic(
        data=[JobEventPublic.model_validate(e) for e in service.events(session, caller, job_id)]
    )


@router.get(
    "/{job_id}/layers", response_model=LayerResultsPublic, summary="Per-layer results of a finished job"
)
def job_layers(job_id: str, session: SessionDep, caller: CallerDep):
    rows = service.layers(session, caller, job_id)
    return LayerResultsPublic(data=[LayerResultPublic.model_validate(r) for r in rows])


@router.get(
    "/{job_id}/artifact",
    response_class=FileResponse,
    summary="Download the .l2 artifact (Range requests supported)",
    responses={
        200: {"content": {"application/octet-stream": {}}},
        206: {"description": "partial content (Range)"},
        409: {"model": Message, "description": "the job has not succeeded"},
        410: {"model": Message, "description": "the artifact file is gone from the server"},
        416: {"description": "the Range cannot be satisfied"},
    },
)
def job_artifact(job_id: str, ctx: ContextDep, session: SessionDep, caller: CallerDep):
    job, path = service.artifact_file(ctx, session, caller, job_id)
    headers = {"Cache-Control": "private, no-cache"}
    if job.artifact_sha256:
        b64 = base64.b64encode(bytes.fromhex(job.artifact_sha256)).decode()
        headers.update(
            {
                "ETag": f'"{job.artifact_sha256}"',
                "Digest": f"sha-256={b64}",
                "Repr-Digest": f"sha-256=:{b64}:",
            }
        )
    # Starlette's FileResponse streams the file in chunks and answers Range / If-Range (206, 416) itself.
    return FileResponse(path, media_type="application/octet-stream", filename=f"{job.id}.l2", headers=headers)


router.add_api_route("/{job_id}/artifact", job_artifact, methods=["HEAD"], include_in_schema=False)
