"""Database engine and sessions.

``engine`` and ``SessionLocal`` are built from `get_settings()` on first use (module attributes resolved
lazily, so importing this module never touches the database and tests can point ``L2_DATABASE_URL`` elsewhere
first). `create_app(settings)` builds its own pair with `make_engine` / `make_session_factory`.

SQLite (the embedded default) is shared by the API and worker processes, so every connection turns on WAL
(readers do not block the writer), a busy timeout (a writer waits for the lock instead of failing at once) and
foreign keys.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from store.settings import get_settings

SQLITE_BUSY_TIMEOUT_MS = 30_000
# Connections per process. An API process runs up to 40 synchronous requests at once (anyio's thread limit);
# with SQLAlchemy's default pool (5 + 10 overflow) each request beyond 5 opened and closed a connection of its
# own (for SQLite with its pragmas): a third of the cost of a status poll under load. 16 stay open; up to 40.
POOL_SIZE = 16
POOL_OVERFLOW = 24


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url``; for a SQLite file, its folder is created and the pragmas above applied."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            pool_size=POOL_SIZE,
            max_overflow=POOL_OVERFLOW,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: a route may read the row it just committed without another query.
    return sessionmaker(bind=engine, expire_on_commit=False)


_engine: Engine | None = None
_session_factory: sessionmaker[Session] | None = None


def get_engine() -> Engine:
    """The process-wide engine for `Settings.database_url`."""
    global _engine
    if _engine is None:
        _engine = make_engine(get_settings().database_url)
    return _engine


def get_session_factory() -> sessionmaker[Session]:
    global _session_factory
    if _session_factory is None:
        _session_factory = make_session_factory(get_engine())
    return _session_factory


TRANSIENT_ERRORS = (OperationalError, DisconnectionError)


def is_transient(exc: BaseException) -> bool:
    """A database error worth retrying (the server went away, a lock timed out), as opposed to one about the
    data, which would fail the same way again."""
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def __getattr__(name: str):
    """``from store.db import engine, SessionLocal``, created on first use."""
    if name == "engine":
        return get_engine()
    if name == "SessionLocal":
        return get_session_factory()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
