"""What a request handler needs, as `Annotated` dependency aliases: the app's context (settings, sessions,
storage, enqueue function, metrics), a database session, and the calling tenant (`api.auth.CallerDep`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from api.auth import Caller, CallerDep
from api.caller_cache import CallerCache
from api.storage import LocalStorage
from store.settings import Settings

Enqueue = Callable[[str, str], None]  # (job_id, queue)


@dataclass
class AppContext:
    settings: Settings
    session_factory: sessionmaker[Session]
    storage: LocalStorage
    enqueue: Enqueue
    metrics: object  # api.metrics.Metrics
    callers: CallerCache = field(default_factory=CallerCache)  # who each credential belongs to, for a few s


def get_context(request: Request) -> AppContext:
    return request.app.state.ctx


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.ctx.session_factory() as session:
        yield session


ContextDep = Annotated[AppContext, Depends(get_context)]
SessionDep = Annotated[Session, Depends(get_session)]

__all__ = [
    "AppContext",
    "Caller",
    "CallerDep",
    "ContextDep",
    "Enqueue",
    "SessionDep",
    "get_context",
    "get_session",
]
