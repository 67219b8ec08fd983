"""Schema migrations: `upgrade_database` is ``alembic upgrade head`` for the service's database (or ``url``).

The Alembic files live at the repository root (``alembic.ini``, ``migrations/``); in the container image they
sit in the working folder, so both the source tree and the current folder are searched."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config


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
    """Bring the database at ``url`` (default `Settings.database_url`) to ``revision``."""
    command.upgrade(alembic_config(url), revision)
