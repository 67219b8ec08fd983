"""What the pages' scripts and forms send: uploads (raw body, so the browser can show upload progress), job
submission, the live state of one job, cancel, and the artifact download. Each is a thin call of the same
service function the matching ``/v1`` route calls, with the session's tenant as the caller and its CSRF token
checked; errors come back exactly as the API's (``{"detail", "errors"}``), so the form can place a 422 beside
its field."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse

from api.deps import ContextDep, SessionDep
from api.errors import ServiceError
from api.routes.jobs import job_artifact
from api.schemas import CheckpointPublic, DatasetPublic, JobCreate, JobEventPublic
from api.services import checkpoints as checkpoint_service
from api.services import datasets as dataset_service
from api.services import jobs as job_service
from api.services import loss_history
from api.services.uploads import check_declared_length
from api.ui import views
from api.ui.deps import PageSession, PostSession, with_headers

router = APIRouter(prefix="/ui", include_in_schema=False)


def _json(request: Request, content, status_code: int = 200) -> Response:
    return with_headers(request, JSONResponse(content, status_code=status_code))


@router.post("/api/checkpoints", status_code=status.HTTP_201_CREATED)
async def upload_checkpoint(
    request: Request,
    ctx: ContextDep,
    ui: PostSession,
    filename: Annotated[str, Query(min_length=1, max_length=255)],
    content_length: Annotated[str | None, Header()] = None,
):
    check_declared_length(content_length, ctx.settings.max_upload_bytes)
    row = await checkpoint_service.upload(ctx, ui.caller, request.stream(), filename)
    return _json(request, CheckpointPublic.model_validate(row).model_dump(mode="json"), 201)


@router.post("/api/datasets", status_code=status.HTTP_201_CREATED)
async def upload_dataset(
    request: Request,
    ctx: ContextDep,
    ui: PostSession,
    filename: Annotated[str, Query(min_length=1, max_length=255)],
    name: Annotated[str | None, Query(max_length=200)] = None,
    spec: str | None = None,
    content_length: Annotated[str | None, Header()] = None,
):
    parsed = dataset_service.parse_spec(spec)
    check_declared_length(content_length, ctx.settings.max_upload_bytes)
    row = await dataset_service.upload(ctx, ui.caller, request.stream(), name=name, filename=filename, spec=parsed)
    return _json(request, DatasetPublic.model_validate(row).model_dump(mode="json"), 201)


@router.post("/api/jobs", status_code=status.HTTP_202_ACCEPTED)
def submit_job(
    request: Request,
    body: JobCreate,
    ctx: ContextDep,
    session: SessionDep,
    ui: PostSession,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
):
    job, created = job_service.create(ctx, session, ui.caller, body, idempotency_key)
    content = job_service.to_public(job).model_dump(mode="json")
    return _json(request, content, status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK)


@router.get("/api/jobs/{job_id}/live")
def job_live(
    request: Request, session: SessionDep, ui: PageSession, job_id: str, after: Annotated[int, Query(ge=0)] = 0
):
    """What the job page polls: the job as ``GET /v1/jobs/{id}`` shows it, its loss points after ``seq``
    ``after`` and its events."""
    job = job_service.get(session, ui.caller, job_id)  # once: what follows belongs to it
    events = job_service.events_of(session, job)
    return _json(
        request,
        {
            "job": job_service.to_public(job).model_dump(mode="json"),
            "loss_points": views.loss_series(loss_history.points_of(session, job, after_seq=after)),
            "events": [JobEventPublic.model_validate(e).model_dump(mode="json") for e in events],
        },
    )


@router.post("/jobs/{job_id}/cancel")
def cancel_job(request: Request, session: SessionDep, ui: PostSession, job_id: str):
    """The job page's cancel button (a plain form: works without scripts)."""
    try:
        job = job_service.cancel(session, ui.caller, job_id)
        outcome = "done" if job.state == "canceled" else "requested"
    except ServiceError as exc:
        if exc.status_code != status.HTTP_409_CONFLICT:
            raise
        outcome = "too-late"
    return with_headers(request, RedirectResponse(f"/ui/jobs/{job_id}?cancel={outcome}", status_code=303))


@router.get("/jobs/{job_id}/artifact")
def download_artifact(job_id: str, ctx: ContextDep, session: SessionDep, ui: PageSession):
    """The same response as ``GET /v1/jobs/{id}/artifact`` (ETag/Digest headers, Range), by the session."""
    return job_artifact(job_id, ctx, session, ui.caller)


@functools.cache
def plotly_bundle() -> Path:
    """plotly.min.js as the installed ``plotly`` wheel ships it (found without importing plotly)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the plotly package is not installed; pip install plotly (a dependency of the service)")
    path = Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the installed plotly package; reinstall plotly")
    return path


@router.get("/vendor/plotly.min.js")
def plotly_js():
    return FileResponse(
        plotly_bundle(), media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"}
    )
