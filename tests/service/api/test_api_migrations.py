"""The Alembic migrations build the whole schema from an empty database, and it matches the ORM models exactly
(so a model change without a migration fails here)."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from store.db import make_engine
from store.migrate import upgrade_database
from store.models import Base


def _check_schema(url: str) -> None:
    upgrade_database(url)
    engine = make_engine(url)
    try:
        tables = set(inspect(engine).get_table_names())
        assert tables == set(Base.metadata.tables) | {"alembic_version"}
        with engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
            )
        assert diff == [], f"models and migrations differ: {diff}"
    finally:
        engine.dispose()


def test_migrations_from_an_empty_postgres_database_create_every_table(fresh_pg_database):
    _check_schema(fresh_pg_database())


def test_migrations_from_an_empty_sqlite_database_create_every_table(tmp_path):
    _check_schema(f"sqlite:///{tmp_path / 'l2.db'}")


def test_upgrading_twice_is_harmless(tmp_path):
    url = f"sqlite:///{tmp_path / 'again.db'}"
    upgrade_database(url)
    upgrade_database(url)


@pytest.mark.parametrize(
    "table", ["tenants", "api_keys", "checkpoints", "datasets", "jobs", "job_events", "layer_results"]
)
def test_every_table_of_the_contract_exists(table):
    assert table in Base.metadata.tables
