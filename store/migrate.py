"""Schema migrations: `upgrade_database` is ``alembic upgrade head`` for the service's database (or ``url``);
`require_current_schema` is what the commands that use the database without migrating it (``l2 keys``,
``l2 worker``, ``l2 serve --no-migrate``) check first, so that an empty or older database gets one line saying
what to run instead of a traceback from the first query.

The Alembic files live at the repository root (``alembic.ini``, ``migrations/``); in the container image they
sit in the working folder, so both the source tree and the current folder are searched."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from store.db import make_engine
from store.settings import get_settings


class DatabaseNotReady(RuntimeError):
    """The database cannot be reached, or its schema is not the one this code needs; the message says what
    to do."""


def find_alembic_ini() -> Path:
    for base in (Path(__file__).resolve().parents[1], Path.cwd()):
        ini = base / "alembic.ini"
        if ini.is_file() and (base / "migrations" / "env.py").is_file():
            return ini
    raise FileNotFoundError(
        "alembic.ini and migrations/ not found next to the api package or in the current "
        "folder; run 'l2 migrate' from the project folder"
    )


def alembic_config(url: str | None = None) -> Config:
    config = Config(str(find_alembic_ini()))
    # Called from `l2 migrate` / `l2 serve`: keep the process's logging as it is (alembic.ini's logging
    # section is for the alembic command line).
    config.attributes["configure_logger"] = False
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_database(url: str | None = None, revision: str = "head") -> None:
    """Bring the database at ``url`` (default `Settings.database_url`) to ``revision``. An unreachable database
    is a `DatabaseNotReady`."""
    url = url or get_settings().database_url
    try:
        command.upgrade(alembic_config(url), revision)
    except OperationalError as exc:
        raise DatabaseNotReady(f"cannot reach the database {shown(url)}: {_first_line(exc.orig or exc)}") from exc


def require_current_schema(url: str | None = None) -> None:
    """Raise `DatabaseNotReady` unless the database at ``url`` (default `Settings.database_url`) exists, answers
    and is migrated to this code's newest revision. Never creates anything (a mistyped SQLite path must not
    become a new, empty database)."""
    url = url or get_settings().database_url
    fix = "run 'l2 migrate' first ('l2 serve' does it at start-up unless --no-migrate)"
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        if not Path(parsed.database).is_file():
            raise DatabaseNotReady(f"the database {shown(url)} does not exist yet; {fix}")
    needed = set(ScriptDirectory.from_config(alembic_config(url)).get_heads())
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            current = set(MigrationContext.configure(connection).get_current_heads())
    except OperationalError as exc:
        raise DatabaseNotReady(f"cannot reach the database {shown(url)}: {_first_line(exc.orig or exc)}") from exc
    finally:
        engine.dispose()
    if not current:
        raise DatabaseNotReady(f"the database {shown(url)} has no schema yet; {fix}")
    if current != needed:
        raise DatabaseNotReady(
            f"the database {shown(url)} is at schema revision {', '.join(sorted(current))}, this version of l2 "
            f"needs {', '.join(sorted(needed))}; {fix}"
        )


def shown(url: str) -> str:
    """``url`` with its password masked, for messages."""
    return make_url(url).render_as_string(hide_password=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
