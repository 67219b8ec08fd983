"""Dependencies of the UI routes: the page's session (issued on the fly when authentication is off), the same
with its CSRF token checked for POSTs, and the template renderer with the headers every page carries."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.templating import Jinja2Templates
from starlette.responses import Response

from api.ui import views
from api.ui.session import (
    CSRF_FIELD,
    CSRF_HEADER,
    SESSION_COOKIE,
    LoginRequired,
    SessionSigner,
    UiSession,
    anonymous_session,
    check_csrf,
    current_session,
    load_secret,
    set_cookie,
)

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters.update(
    age=views.age,
    duration=views.duration,
    human_bytes=views.human_bytes,
    score=lambda value, kind: views.format_score(kind, value),
)

# Scripts only from this origin (the page's own JS and the plotly bundle the app serves); plotly sets inline
# styles, so styles allow them. Data reaches the scripts as JSON in <script type="application/json">.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def signer(request: Request) -> SessionSigner:
    """The app's cookie signer, made on first use (reading or creating the secret file)."""
    state = request.app.state
    if getattr(state, "ui_signer", None) is None:
        settings = state.ctx.settings
        state.ui_signer = SessionSigner(load_secret(settings), settings.ui_session_hours * 3600)
    return state.ui_signer


def page_session(request: Request) -> UiSession:
    signer(request)
    found = current_session(request)
    if found is not None:
        return found
    if request.app.state.ctx.settings.auth_enabled:
        raise LoginRequired()
    cookie, fresh = anonymous_session(request)
    request.state.ui_new_cookie = cookie
    return fresh


async def posted_session(request: Request) -> UiSession:
    """The session of a POST whose CSRF token matches: ``X-CSRF-Token`` (scripts) or the form field."""
    session = page_session(request)
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        sent = (await request.form()).get(CSRF_FIELD)
    check_csrf(session.csrf, sent if isinstance(sent, str) else None)
    return session


PageSession = Annotated[UiSession, Depends(page_session)]
PostSession = Annotated[UiSession, Depends(posted_session)]


def with_headers(request: Request, response: Response) -> Response:
    """Every UI response: the security headers, and the new session cookie when one was issued."""
    response.headers.update(SECURITY_HEADERS)
    cookie = getattr(request.state, "ui_new_cookie", None)
    if cookie:
        set_cookie(request, response, SESSION_COOKIE, cookie, int(signer(request).max_age_s))
    return response


def render(request: Request, session: UiSession | None, name: str, status_code: int = 200, **context: Any):
    settings = request.app.state.ctx.settings
    context.update(
        session=session,
        csrf=session.csrf if session else None,
        csrf_field=CSRF_FIELD,
        auth_enabled=settings.auth_enabled,
        tenant=session.caller.tenant_name if session and session.caller else None,
    )
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    return with_headers(request, response)
