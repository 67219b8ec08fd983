"""The FastAPI application factory.

``create_app()`` (what ``uvicorn --factory api.app:create_app`` and ``l2 serve`` call) builds everything from
`Settings`; tests pass their own settings, session factory and enqueue function. Routes live under ``/v1``
(one module per resource in `api.routes`); health and metrics at the root. Every error is JSON ``{"detail":
"..."}`` with a message that says what to fix.
"""

from __future__ import annotations

import logging

from fastapi import Depends, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from api.deps import AppContext, Enqueue
from api.errors import ServiceError, Unprocessable
from api.metrics import Metrics
from api.routes import checkpoints, datasets, health, jobs, uploads_tus, webhooks
from api.schemas import NO_CONTROL_CHARACTERS
from api.services.limits import RateLimiter, enforce_rate_limit
from api.storage import LocalStorage
from store.db import make_engine, make_session_factory
from store.queues import celery_enqueuer
from store.settings import Settings, get_settings

log = logging.getLogger(__name__)


def _location(loc) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def _validation_message(exc: RequestValidationError) -> tuple[str, list[dict]]:
    errors = []
    for e in exc.errors():
        msg = str(e.get("msg", "")).removeprefix("Value error, ")
        if e.get("type") == "extra_forbidden":
            msg = "unknown field; remove it"
        elif e.get("type") == "string_pattern_mismatch" and e.get("ctx", {}).get("pattern") == NO_CONTROL_CHARACTERS:
            msg = "must not contain control characters (newlines, tabs, NUL, escape ...)"
        elif e.get("type") == "json_invalid":
            msg = f"the body is not valid JSON ({e.get('ctx', {}).get('error', 'parse error')})"
        errors.append({"loc": list(e.get("loc", ())), "msg": msg, "type": e.get("type")})
    detail = "; ".join(f"{_location(err['loc'])}: {err['msg']}" for err in errors) or "invalid request"
    return detail, errors


def _method_not_allowed(request: Request) -> JSONResponse:
    """405 whose ``Allow`` lists the methods of every route on the path (Starlette names only the first route
    it tried, so ``OPTIONS /v1/jobs`` claimed only POST was allowed); routes written out literally win over
    templated ones that also match."""
    literal: set[str] = set()
    templated: set[str] = set()
    for context in iter_route_contexts(request.app.router.routes):
        methods = getattr(context.original_route, "methods", None)
        if methods and context.path and compile_path(context.path)[0].match(request.url.path):
            (templated if "{" in context.path else literal).update(methods)
    # A path that names a route literally (/v1/datasets/upload) is that resource, not an id of /v1/datasets/{id}.
    listed = ", ".join(sorted(literal or templated))
    return JSONResponse(
        {"detail": f"method {request.method} is not allowed on {request.url.path}; use {listed}"},
        status_code=405,
        headers={"Allow": listed},
    )


def _unparsable_body(request: Request) -> JSONResponse:
    """FastAPI answers a body it cannot decode at all (not UTF-8, a broken form) with a bare, undocumented 400;
    like any other malformed body it is a 422 saying what to send."""
    detail = (
        f"the body could not be parsed as {request.headers.get('content-type') or 'the declared type'}; "
        "send UTF-8 JSON with 'Content-Type: application/json'"
    )
    return JSONResponse(
        {"detail": detail, "errors": [{"loc": ["body"], "msg": detail, "type": "body_unparsable"}]},
        status_code=422,
    )


def create_app(
    settings: Settings | None = None,
    *,
    session_factory: sessionmaker[Session] | None = None,
    enqueue: Enqueue | None = None,
) -> FastAPI:
    settings = settings or get_settings()
    if session_factory is None:
        session_factory = make_session_factory(make_engine(settings.database_url))
    metrics = Metrics()
    ctx = AppContext(
        settings=settings,
        session_factory=session_factory,
        storage=LocalStorage(settings.data_dir),
        enqueue=enqueue or celery_enqueuer(settings.broker_url),
        metrics=metrics,
    )
    metrics.attach_database(ctx)

    app = FastAPI(
        title="L² compression service",
        version="1.0.0",
        description="Upload a PyTorch checkpoint and calibration data, submit a compression job with a "
        "target ratio, follow its progress, and download the .l2 artifact. Authenticate with an API key "
        "('l2 keys create --tenant NAME') as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.",
    )
    app.state.ctx = ctx

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        body = {"detail": exc.detail}
        if isinstance(exc, Unprocessable):
            body["errors"] = exc.errors()
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 405:
            return _method_not_allowed(request)
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            return _unparsable_body(request)
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail, errors = _validation_message(exc)
        return JSONResponse({"detail": detail, "errors": errors}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {"detail": f"internal error ({type(exc).__name__}); retry, and report it if it persists"},
            status_code=500,
        )

    # Every /v1 resource counts against the tenant's request rate (api.services.limits); health does not.
    app.state.rate_limiter = RateLimiter(settings)
    for module in (checkpoints, datasets, jobs, uploads_tus):
        app.include_router(module.router, dependencies=[Depends(enforce_rate_limit)])
    for router in (webhooks.router, webhooks.mlflow_router):  # issue 11: webhooks and the MLflow default
        app.include_router(router, dependencies=[Depends(enforce_rate_limit)])
    app.include_router(health.router)
    if settings.ui_enabled:  # the web page under /ui (api.ui); "/" redirects there
        from api import ui

        ui.mount(app)
    return app
