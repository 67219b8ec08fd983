"""The HTML pages: jobs, new job, one job, compare, and the login. Every page reads through the same service
functions as the ``/v1`` routes (`api.services`), with the session's tenant as the caller, so a page can show
nothing the tenant's API key could not read."""

from __future__ import annotations

import secrets
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import RedirectResponse

from api.deps import SessionDep
from api.errors import NotFound
from api.schemas import OPTION_NAMES, JobCreate, JobState
from api.services import checkpoints as checkpoint_service
from api.services import datasets as dataset_service
from api.services import jobs as job_service
from api.services import loss_history
from api.services.owned import owned_by_id
from api.ui import compare, views
from api.ui.deps import PageSession, PostSession, render, signer, with_headers
from api.ui.session import (
    CSRF_FIELD,
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    check_csrf,
    current_session,
    login,
    set_cookie,
)
from store.models import Checkpoint, Dataset, Job

router = APIRouter(prefix="/ui", include_in_schema=False)
PAGE_SIZE = 50
STATES = ("queued", "running", "succeeded", "failed", "canceled")
COMPARE_POINTS = 2000  # jobs of one checkpoint on the compare chart (newest first)
COMPARE_ROWS = 100  # of them listed in the table below it
# What a row of the jobs table shows (`_job_rows.html`); the list loads these columns only.
ROW_COLUMNS = (
    Job.id,
    Job.state,
    Job.cancel_requested,
    Job.progress,
    Job.phase,
    Job.eta_seconds,
    Job.target_ratio,
    Job.true_ratio,
    Job.estimated_ratio,
    Job.evaluation,
    Job.architecture,
    Job.created_at,
)


def _job_rows(session, caller, state: str | None, page: int) -> dict:
    offset = (page - 1) * PAGE_SIZE
    rows, total = job_service.list_(
        session, caller, state=state, created_after=None, limit=PAGE_SIZE, offset=offset, columns=ROW_COLUMNS
    )
    pages = max(1, -(-total // PAGE_SIZE))
    items = [{"job": job, "headline": views.headline(job.evaluation)} for job in rows]
    return {"items": items, "total": total, "page": page, "pages": pages, "state": state, "states": STATES}


@router.get("")
def jobs_page(
    request: Request,
    session: SessionDep,
    ui: PageSession,
    state: JobState | None = None,
    page: Annotated[int, Query(ge=1)] = 1,
):
    data = _job_rows(session, ui.caller, state, page)
    query = {k: v for k, v in (("state", state), ("page", page)) if v}
    return render(request, ui, "jobs.html", title="Jobs", nav="jobs", rows_query=urlencode(query), **data)


@router.get("/jobs/rows")
def jobs_rows(
    request: Request,
    session: SessionDep,
    ui: PageSession,
    state: JobState | None = None,
    page: Annotated[int, Query(ge=1)] = 1,
):
    """The jobs table's body alone: what the jobs page polls to stay live."""
    return render(request, ui, "_job_rows.html", **_job_rows(session, ui.caller, state, page))


@router.get("/new")
def new_job_page(request: Request, session: SessionDep, ui: PageSession, checkpoint: str | None = None):
    checkpoints, _ = checkpoint_service.list_(session, ui.caller, 200, 0)
    datasets, _ = dataset_service.list_(session, ui.caller, 200, 0)
    return render(
        request,
        ui,
        "new_job.html",
        title="New job",
        nav="new",
        checkpoints=checkpoints,
        datasets=datasets,
        selected_checkpoint=checkpoint,
        architectures=views.SUGGESTED_ARCHITECTURES,
        presets=views.PRESETS,
        preset_supported="preset" in JobCreate.model_fields,
        option_names=OPTION_NAMES,
        idempotency_key=secrets.token_urlsafe(16),
        max_upload_bytes=request.app.state.ctx.settings.max_upload_bytes,
    )


def not_found(request: Request, ui, exc: NotFound):
    """A person's 404: the same words as the API's, on a page (another tenant's id reads as not found too)."""
    return render(
        request, ui, "message.html", status_code=404, title="Not found", heading="Not found", message=exc.detail
    )


@router.get("/jobs/{job_id}")
def job_page(request: Request, session: SessionDep, ui: PageSession, job_id: str, cancel: str | None = None):
    try:
        job = job_service.get(session, ui.caller, job_id)
    except NotFound as exc:
        return not_found(request, ui, exc)
    # The job is read once (and so known to be the caller's); what belongs to it is read by its id.
    layers = job_service.layers_of(session, job) if job.state == "succeeded" else []
    story = views.layer_story(layers, job.artifact_bytes)
    coded = [row for row in story if row["mode"] == "coded"]
    checkpoints = owned_by_id(session, Checkpoint, ui.caller, [job.checkpoint_id])
    datasets = owned_by_id(session, Dataset, ui.caller, [job.dataset_id, job.eval_dataset_id])
    return render(
        request,
        ui,
        "job.html",
        title=f"Job {job.id[:8]}",
        nav="jobs",
        job=job,
        public=job_service.to_public(job).model_dump(mode="json"),
        events=job_service.events_of(session, job),
        checkpoint=checkpoints.get(job.checkpoint_id),
        dataset=datasets.get(job.dataset_id),
        eval_dataset=datasets.get(job.eval_dataset_id),
        headline=views.headline(job.evaluation),
        story=story,
        coded=coded,
        coded_share=sum(row["share"] or 0.0 for row in coded),
        commands=views.reproduce_commands(job, str(request.base_url), request.app.state.ctx.settings.auth_enabled),
        loss_points=views.loss_series(loss_history.points_of(session, job)),
        cancel_notice=cancel,
        terminal=job.state in job_service.TERMINAL,
    )


@router.get("/compare")
def compare_page(
    request: Request, session: SessionDep, ui: PageSession, checkpoint: str | None = None, metric: str | None = None
):
    """All succeeded jobs of one checkpoint on a ratio-vs-score chart; the default checkpoint is the newest
    job's. The database does the work: counting per checkpoint, which scores exist, and the newest jobs' few
    columns with the one chosen score (`api.ui.compare`)."""
    choices = compare.checkpoint_choices(session, ui.caller)
    selected = None
    if checkpoint:
        try:
            selected = checkpoint_service.get(session, ui.caller, checkpoint)
        except NotFound as exc:
            return not_found(request, ui, exc)
    elif choices:
        selected = choices[0]["checkpoint"]
    jobs, available, total = [], [], 0
    if selected is not None:
        total, available = compare.scores_present(session, ui.caller, selected.id)
        if metric not in {key for key, _ in available}:
            metric = available[0][0] if available else None
        jobs = compare.newest_succeeded(session, ui.caller, selected.id, metric, COMPARE_POINTS)
    return render(
        request,
        ui,
        "compare.html",
        title="Compare",
        nav="compare",
        choices=choices,
        selected=selected,
        jobs=jobs[:COMPARE_ROWS],
        more_jobs=max(0, min(total, COMPARE_POINTS) - COMPARE_ROWS),
        points=views.compare_points(jobs),
        metrics=available,
        metric=metric,
        metric_label=dict(available).get(metric, ""),
    )


# -- login ---------------------------------------------------------------------------------------------------
def _safe_next(target: str | None) -> str:
    """Only a path inside the UI: never an absolute URL (an open redirect)."""
    if target and target.startswith("/ui") and not target.startswith("//"):
        return target
    return "/ui"


@router.get("/login")
def login_page(request: Request, next: str | None = None, error: str | None = None):
    signer(request)
    if not request.app.state.ctx.settings.auth_enabled or current_session(request) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    token = secrets.token_urlsafe(24)
    response = render(
        request,
        None,
        "login.html",
        title="Sign in",
        next=_safe_next(next),
        login_csrf=token,
        error=error,
        status_code=401 if error else 200,
    )
    set_cookie(request, response, LOGIN_CSRF_COOKIE, token, 3600)
    return response


@router.post("/login")
def login_submit(
    request: Request,
    api_key: Annotated[str, Form(max_length=500)] = "",
    csrf_token: Annotated[str, Form(alias=CSRF_FIELD)] = "",
    next: Annotated[str, Form()] = "/ui",
):
    check_csrf(request.cookies.get(LOGIN_CSRF_COOKIE, ""), csrf_token)
    signer(request)
    cookie = login(request, api_key.strip())
    if cookie is None:
        return login_page(request, next=next, error="That key was not accepted: it is wrong, mistyped or revoked.")
    response = RedirectResponse(_safe_next(next), status_code=303)
    set_cookie(request, response, SESSION_COOKIE, cookie, int(signer(request).max_age_s))
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/ui")
    return with_headers(request, response)


@router.post("/logout")
def logout(request: Request, ui: PostSession):
    response = RedirectResponse("/ui/login" if request.app.state.ctx.settings.auth_enabled else "/ui", 303)
    response.delete_cookie(SESSION_COOKIE, path="/ui")
    return with_headers(request, response)
