"""Who is looking at the web page, and proof that a form came from it.

A browser cannot be trusted to hold an API key, so the login page takes the key once, checks it with
`api.auth.authenticate`, and answers with a signed session cookie (HttpOnly, SameSite=Strict, Secure when
served over HTTPS) naming the key's prefix and tenant. The cookie carries no secret: the signature (HMAC-SHA256
with the server's UI secret) makes it unforgeable, and every request re-reads the key's row, so revoking a key
(``l2 keys revoke``) ends its sessions at once. No table is needed.

Each session also carries a random CSRF token. Every POST must send it back (a hidden form field or the
``X-CSRF-Token`` header) and it is compared in constant time; a cross-site page can neither read it nor, with
SameSite=Strict, send the cookie. The login form itself is protected the same way by a short-lived pre-login
cookie. With authentication off (the loopback embedded default) a session for the default tenant is issued
without a key, so the CSRF check is the same on every page.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request, Response
from sqlalchemy import select

from api.auth import Caller, authenticate, get_or_create_tenant
from store.models import ApiKey, Tenant
from store.settings import Settings

SESSION_COOKIE = "l2_ui_session"
LOGIN_CSRF_COOKIE = "l2_ui_login"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SECRET_FILE = "ui_secret"


class LoginRequired(Exception):
    """Raised by page dependencies when authentication is on and the request has no valid session."""


class CsrfRejected(Exception):
    """A POST without the session's CSRF token (or with a wrong one)."""


@dataclass(frozen=True)
class UiSession:
    caller: Caller
    csrf: str
    expires: float


def load_secret(settings: Settings) -> bytes:
    """``L2_UI_SECRET`` when set; otherwise a random key created once in ``<data_dir>/ui_secret`` (mode 0600), so
    sessions survive restarts and every API process on the same data folder accepts the same cookies."""
    if settings.ui_secret:
        return settings.ui_secret.encode()
    path = Path(settings.data_dir) / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another process may be writing it right now
            text = path.read_text().strip()
            if text:
                return text.encode()
            time.sleep(0.02)
        raise RuntimeError(f"{path} is empty; delete it (a new one is created) or set L2_UI_SECRET") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    """Encodes and verifies the session cookie ``<payload>.<signature>`` (both base64url)."""

    def __init__(self, secret: bytes, max_age_s: float) -> None:
        self._key = hashlib.sha256(b"l2-ui-session\0" + secret).digest()
        self.max_age_s = max_age_s

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def encode(self, tenant_id: str, key_prefix: str | None) -> str:
        body = {"t": tenant_id, "p": key_prefix, "c": secrets.token_urlsafe(24), "e": time.time() + self.max_age_s}
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload)}"

    def decode(self, cookie: str | None) -> dict | None:
        """The payload of a genuine, unexpired cookie; None otherwise."""
        if not cookie or cookie.count(".") != 1:
            return None
        payload, signature = cookie.split(".")
        if not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            body = json.loads(_unb64(payload))
        except ValueError:
            return None
        if not isinstance(body, dict) or float(body.get("e", 0)) < time.time():
            return None
        return body


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _caller_of(request: Request, body: dict) -> Caller | None:
    """The session's caller, checked against the database: the key must still exist, unrevoked, for the same
    tenant (auth on); the tenant must be the default one (auth off)."""
    ctx = request.app.state.ctx
    with ctx.session_factory() as session:
        if body.get("p") is None:
            if ctx.settings.auth_enabled:
                return None
            tenant = session.get(Tenant, body.get("t"))
            if tenant is None or tenant.name != ctx.settings.default_tenant:
                return None
            return Caller(tenant_id=tenant.id, tenant_name=tenant.name, key_prefix=None)
        if not ctx.settings.auth_enabled:
            return None
        row = session.execute(
            select(ApiKey, Tenant).join(Tenant, Tenant.id == ApiKey.tenant_id).where(ApiKey.prefix == body["p"])
        ).first()
    if row is None:
        return None
    key, tenant = row
    if key.revoked_at is not None or tenant.id != body.get("t"):
        return None
    return Caller(tenant_id=tenant.id, tenant_name=tenant.name, key_prefix=key.prefix)


def current_session(request: Request) -> UiSession | None:
    """The request's session, or None (no cookie, forged, expired, or its key revoked)."""
    signer: SessionSigner = request.app.state.ui_signer
    body = signer.decode(request.cookies.get(SESSION_COOKIE))
    if body is None:
        return None
    caller = _caller_of(request, body)
    if caller is None:
        return None
    return UiSession(caller=caller, csrf=str(body["c"]), expires=float(body["e"]))


def anonymous_session(request: Request) -> tuple[str, UiSession]:
    """With authentication off: a new session cookie for the default tenant (it carries the CSRF token)."""
    ctx = request.app.state.ctx
    with ctx.session_factory() as session:
        tenant = get_or_create_tenant(session, ctx.settings.default_tenant)
        session.commit()
        caller = Caller(tenant_id=tenant.id, tenant_name=tenant.name, key_prefix=None)
    signer: SessionSigner = request.app.state.ui_signer
    cookie = signer.encode(caller.tenant_id, None)
    body = signer.decode(cookie) or {}
    return cookie, UiSession(caller=caller, csrf=str(body["c"]), expires=float(body["e"]))


def login(request: Request, api_key: str) -> str | None:
    """A session cookie for a valid key; None for a wrong, malformed or revoked one."""
    ctx = request.app.state.ctx
    with ctx.session_factory() as session:
        caller = authenticate(session, api_key)
    if caller is None:
        return None
    return request.app.state.ui_signer.encode(caller.tenant_id, caller.key_prefix)


def check_csrf(expected: str, sent: str | None) -> None:
    if not sent or not hmac.compare_digest(expected.encode(), sent.encode()):
        raise CsrfRejected()
