"""Readiness checks: can this process reach its database and its message broker?"""

from __future__ import annotations

import redis
from sqlalchemy import create_engine, text

from api.deps import AppContext

TIMEOUT_S = 3


def check_database(ctx: AppContext) -> str:
    with ctx.session_factory() as session:
        session.execute(text("SELECT 1"))
    return "ok"


def check_broker(url: str) -> str:
    if url.startswith(("redis://", "rediss://")):
        client = redis.Redis.from_url(url, socket_connect_timeout=TIMEOUT_S, socket_timeout=TIMEOUT_S)
        try:
            client.ping()
        finally:
            client.close()
        return "ok"
    if url.startswith("sqla+"):
        engine = create_engine(url.removeprefix("sqla+"))
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        finally:
            engine.dispose()
        return "ok"
    return "not checked (unknown broker scheme)"


def readiness(ctx: AppContext) -> tuple[bool, dict[str, str]]:
    checks: dict[str, str] = {}
    ok = True
    for name, check in (
        ("database", lambda: check_database(ctx)),
        ("broker", lambda: check_broker(ctx.settings.broker_url)),
    ):
        try:
            checks[name] = check()
        except Exception as exc:
            ok = False
            checks[name] = (
                f"unavailable: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            )
    return ok, checks
