"""The HTML pages: jobs, new job, one job, compare, and the login. Every page reads through the same service
functions as the ``/v1`` routes (`api.services`), with the session's tenant as the caller, so a page can show
nothing the tenant's API key could not read."""

from __future__ import annotations

import secrets
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import RedirectResponse
from sqlalchemy import func, select

from api.deps import SessionDep
from api.errors import NotFound
from api.schemas import OPTION_NAMES, JobCreate, JobState
from api.services import checkpoints as checkpoint_service
from api.services import datasets as dataset_service
from api.services import jobs as job_service
from api.services import loss_history
from api.ui import views
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
from store.models import Checkpoint, Job

router = APIRouter(prefix="/ui", include_in_schema=False)
PAGE_SIZE = 50
STATES = ("queued", "running", "succeeded", "failed", "canceled")
COMPARE_POINTS = 2000  # jobs of one checkpoint on the compare chart (newest first)
COMPARE_ROWS = 100  # of them listed in the table below it


def _job_rows(session, caller, state: str | None, page: int) -> dict:
    rows, total = job_service.list_(
        session, caller, state=state, created_after=None, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE
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


def _optional(fetch, *args):
    try:
        return fetch(*args)
    except NotFound:
        return None


@router.get("/jobs/{job_id}")
def job_page(request: Request, session: SessionDep, ui: PageSession, job_id: str, cancel: str | None = None):
    try:
        job = job_service.get(session, ui.caller, job_id)
    except NotFound as exc:
        return not_found(request, ui, exc)
    layers = job_service.layers(session, ui.caller, job_id) if job.state == "succeeded" else []
    story = views.layer_story(layers, job.artifact_bytes)
    coded = [row for row in story if row["mode"] == "coded"]
    return render(
        request,
        ui,
        "job.html",
        title=f"Job {job.id[:8]}",
        nav="jobs",
        job=job,
        public=job_service.to_public(job).model_dump(mode="json"),
        events=job_service.events(session, ui.caller, job_id),
        checkpoint=_optional(checkpoint_service.get, session, ui.caller, job.checkpoint_id or ""),
        dataset=_optional(dataset_service.get, session, ui.caller, job.dataset_id or ""),
        eval_dataset=_optional(dataset_service.get, session, ui.caller, job.eval_dataset_id or ""),
        headline=views.headline(job.evaluation),
        story=story,
        coded=coded,
        coded_share=sum(row["share"] or 0.0 for row in coded),
        commands=views.reproduce_commands(job, str(request.base_url), request.app.state.ctx.settings.auth_enabled),
        loss_points=views.loss_series(loss_history.points(session, ui.caller, job_id)),
        cancel_notice=cancel,
        terminal=job.state in job_service.TERMINAL,
    )


@router.get("/compare")
def compare_page(
    request: Request, session: SessionDep, ui: PageSession, checkpoint: str | None = None, metric: str | None = None
):
    """All jobs of one checkpoint on a ratio-vs-score chart; the default checkpoint is the newest job's."""
    counts = session.execute(
        select(Checkpoint, func.count(Job.id), func.max(Job.created_at))
        .join(Job, Job.checkpoint_id == Checkpoint.id)
        .where(Checkpoint.tenant_id == ui.caller.tenant_id, Job.tenant_id == ui.caller.tenant_id)
        .group_by(Checkpoint.id)
        .order_by(func.max(Job.created_at).desc())
        .limit(200)
    ).all()
    choices = [{"checkpoint": c, "jobs": n} for c, n, _ in counts]
    selected = None
    if checkpoint:
        try:
            selected = checkpoint_service.get(session, ui.caller, checkpoint)
        except NotFound as exc:
            return not_found(request, ui, exc)
    elif choices:
        selected = choices[0]["checkpoint"]
    jobs: list[Job] = []
    if selected is not None:
        jobs = list(
            session.execute(
                select(Job)
                .where(
                    Job.tenant_id == ui.caller.tenant_id,
                    Job.checkpoint_id == selected.id,
                    Job.state == "succeeded",  # only finished jobs have a true ratio and a score
                )
                .order_by(Job.created_at.desc())
                .limit(COMPARE_POINTS)
            ).scalars()
        )
    points = views.compare_points(jobs)
    available = [(key, label) for key, label, _ in views.SCORES if any(key in p["scores"] for p in points)]
    if metric not in {key for key, _ in available}:
        metric = available[0][0] if available else None
    return render(
        request,
        ui,
        "compare.html",
        title="Compare",
        nav="compare",
        choices=choices,
        selected=selected,
        jobs=jobs[:COMPARE_ROWS],
        more_jobs=max(0, len(jobs) - COMPARE_ROWS),
        points=points,
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
