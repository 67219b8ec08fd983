"""The web page for people, served by the API itself under ``/ui`` (``/`` redirects there): jobs with live
state, a form to upload and submit, one job's live progress and per-layer story, and a ratio-vs-score compare
chart. Server-rendered Jinja2 templates with small hand-written scripts (``static/``); charts with the plotly
JavaScript bundle from the installed ``plotly`` wheel, served by the app (nothing from a CDN).

`mount` adds it to an app when ``Settings.ui_enabled`` (on by default). Sessions and CSRF: `api.ui.session`.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from api.ui import actions, pages
from api.ui.deps import HERE, with_headers
from api.ui.session import CsrfRejected, LoginRequired

__all__ = ["mount"]


def _wants_json(request: Request) -> bool:
    """Scripts' endpoints answer JSON; pages and forms send a person to the login page."""
    return request.url.path.startswith("/ui/api/")


def mount(app: FastAPI) -> None:
    app.include_router(pages.router)
    app.include_router(actions.router)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")

    @app.get("/", include_in_schema=False)
    def _root() -> RedirectResponse:
        return RedirectResponse("/ui", status_code=307)

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, _: LoginRequired):
        if _wants_json(request):
            detail = "sign in first: open /ui/login and enter your API key (your session is missing or expired)"
            return with_headers(request, JSONResponse({"detail": detail}, status_code=401))
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.method != "GET":  # a form posted after the session ended: start again from the jobs
            target = "/ui"
        login = app.url_path_for("login_page")
        return RedirectResponse(f"{login}?next={quote(target, safe='/')}", status_code=303)

    @app.exception_handler(CsrfRejected)
    async def _csrf_rejected(request: Request, _: CsrfRejected):
        detail = "the form's security token is missing or stale; reload the page and try again"
        if request.url.path.startswith("/ui/api/"):
            return with_headers(request, JSONResponse({"detail": detail}, status_code=403))
        return with_headers(request, HTMLResponse(f"<p>{detail}.</p>", status_code=403))
