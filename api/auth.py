"""API keys and the caller's tenant.

A key reads ``l2_<prefix>_<secret>``: the prefix (public, shown by ``l2 keys list``) finds the row, and only
the SHA-256 of the secret is stored, so a database leak does not leak usable keys. Clients send it as
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Every route resolves the tenant through
`current_tenant` and filters every query by it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from store.models import ApiKey, Tenant, utcnow

KEY_PREFIX = "l2"


@dataclass(frozen=True)
class Caller:
    tenant_id: str
    tenant_name: str
    key_prefix: str | None  # None when authentication is off


@dataclass(frozen=True)
class IssuedKey:
    key: str  # shown once; only its hash is stored
    prefix: str
    tenant_id: str
    tenant_name: str


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_key(key: str) -> tuple[str, str] | None:
    """``l2_<prefix>_<secret>`` → (prefix, secret); None when the text is not shaped like a key."""
    parts = key.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    """The tenant called ``name``, created if new (concurrent first requests all end with the same row)."""
    query = select(Tenant).where(Tenant.name == name)
    tenant = session.execute(query).scalar_one_or_none()
    if tenant is None:
        try:
            with session.begin_nested():
                tenant = Tenant(name=name)
                session.add(tenant)
        except IntegrityError:
            tenant = session.execute(query).scalar_one()
    return tenant


def create_key(session: Session, tenant_name: str) -> IssuedKey:
    """A new key for ``tenant_name`` (the tenant is created if needed). Commits."""
    tenant = get_or_create_tenant(session, tenant_name)
    prefix, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    session.add(ApiKey(tenant_id=tenant.id, prefix=prefix, key_hash=hash_secret(secret)))
    session.commit()
    return IssuedKey(
        key=f"{KEY_PREFIX}_{prefix}_{secret}", prefix=prefix, tenant_id=tenant.id, tenant_name=tenant.name
    )


def revoke_key(session: Session, prefix: str) -> bool:
    """Revoke the key with ``prefix``; False when there is none (or it was already revoked). Commits."""
    key = session.execute(select(ApiKey).where(ApiKey.prefix == prefix)).scalar_one_or_none()
    if key is None or key.revoked_at is not None:
        return False
    key.revoked_at = utcnow()
    session.commit()
    return True


def list_keys(session: Session) -> list[tuple[ApiKey, Tenant]]:
    rows = session.execute(
        select(ApiKey, Tenant)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .order_by(Tenant.name, ApiKey.created_at)
    ).all()
    return [(k, t) for k, t in rows]


def authenticate(session: Session, key: str) -> Caller | None:
    parsed = parse_key(key)
    if parsed is None:
        return None
    prefix, secret = parsed
    row = session.execute(
        select(ApiKey, Tenant).join(Tenant, Tenant.id == ApiKey.tenant_id).where(ApiKey.prefix == prefix)
    ).first()
    if row is None:
        hmac.compare_digest(hash_secret(secret), hash_secret(""))  # same work either way
        return None
    api_key, tenant = row
    if api_key.revoked_at is not None or not hmac.compare_digest(api_key.key_hash, hash_secret(secret)):
        return None
    return Caller(tenant_id=tenant.id, tenant_name=tenant.name, key_prefix=prefix)


bearer_scheme = HTTPBearer(auto_error=False, description="Authorization: Bearer l2_<prefix>_<secret>")
api_key_scheme = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="X-API-Key: l2_<prefix>_<secret>"
)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def _default_caller(session: Session, name: str) -> Caller:
    tenant = get_or_create_tenant(session, name)
    session.commit()
    return Caller(tenant_id=tenant.id, tenant_name=tenant.name, key_prefix=None)


def _resolve_caller(
    request: Request, bearer: HTTPAuthorizationCredentials | None, x_api_key: str | None
) -> Caller:
    """The tenant of the presented API key (or the default tenant when auth is off), from the database."""
    ctx = request.app.state.ctx
    settings = ctx.settings
    with ctx.session_factory() as session:  # no connection is taken unless a lookup runs
        if not settings.auth_enabled:
            return ctx.callers.get(
                f"default tenant {settings.default_tenant}", lambda: _default_caller(session, settings.default_tenant)
            )
        presented = _presented_keys(request, bearer, x_api_key)
        if not presented:
            raise _unauthorized(
                "missing API key: send 'Authorization: Bearer l2_<prefix>_<secret>' or "
                "'X-API-Key: ...'; create one with 'l2 keys create --tenant NAME'"
            )
        callers = {
            header: ctx.callers.get(hash_secret(key), lambda key=key: authenticate(session, key))
            for header, key in presented.items()
        }
    for header, caller in callers.items():
        if caller is None:
            raise _unauthorized(
                f"invalid or revoked API key in {header}; send only valid keys (a request carrying any "
                "invalid credential is refused), or create a new one with 'l2 keys create --tenant NAME'"
            )
    if len({c.tenant_id for c in callers.values()}) > 1:
        raise _unauthorized(
            "Authorization and X-API-Key carry keys of different tenants; send one key (in either header)"
        )
    return next(iter(callers.values()))


def _presented_keys(
    request: Request, bearer: HTTPAuthorizationCredentials | None, x_api_key: str | None
) -> dict[str, str]:
    """Every credential the request carries, by header. An ``Authorization`` header that is not a Bearer key
    counts as a credential too (an invalid one), so it cannot be silently outvoted by a valid X-API-Key."""
    keys = {}
    authorization = request.headers.get("authorization")
    if authorization is not None:
        if bearer is None:
            raise _unauthorized(
                "the Authorization header must read 'Bearer l2_<prefix>_<secret>'; other schemes are not accepted"
            )
        keys["Authorization"] = bearer.credentials
    if x_api_key is not None:
        keys["X-API-Key"] = x_api_key
    return keys


async def current_caller(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    x_api_key: Annotated[str | None, Depends(api_key_scheme)],
) -> Caller:
    """FastAPI dependency: the tenant of the presented credentials (or the default tenant when auth is off).

    Credentials answered in the last few seconds are answered again from memory (`api.caller_cache`) without
    leaving the event loop, so a status poll costs neither a key lookup nor a trip through the thread pool;
    anything else is resolved by `_resolve_caller` in a worker thread. Only accepted credentials are
    remembered here: a refusal is worked out (and explained) every time."""
    ctx = request.app.state.ctx
    settings = ctx.settings
    headers = request.headers
    seen = hash_secret(
        f"{settings.auth_enabled}\0{settings.default_tenant}\0{headers.get('authorization')}\0{headers.get('x-api-key')}"
    )
    caller = ctx.callers.peek(seen)
    if caller is None:
        caller = await run_in_threadpool(_resolve_caller, request, bearer, x_api_key)
        ctx.callers.put(seen, caller)
    return caller


CallerDep = Annotated[Caller, Depends(current_caller)]
