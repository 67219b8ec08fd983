"""Fixtures for the API tests: the app on a real PostgreSQL database (a fresh database per test session, built
by the Alembic migrations from empty and dropped afterwards) and on SQLite (the embedded default), a fake
enqueue function that records what would be sent to Celery, and two tenants with their API keys.

Every test using ``client`` runs once per backend. Rows are deleted after each test (the app opens its own
sessions, so a per-test rollback cannot undo them)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from api_helpers import TenantKey
from fastapi.testclient import TestClient
from sqlalchemy import delete

from api.app import create_app
from api.auth import create_key
from store.db import make_engine, make_session_factory
from store.migrate import upgrade_database
from store.models import ApiKey, Checkpoint, Dataset, Job, JobEvent, LayerResult, Tenant, WorkerHeartbeat
from store.settings import Settings

PG_ADMIN = os.environ.get("L2_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
MAX_UPLOAD = 64 * 1024


def _admin():
    return psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)


def _sqla_url(dbname: str) -> str:
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{dbname}"


@pytest.fixture(scope="session")
def fresh_pg_database():
    """A factory of empty PostgreSQL databases; all are dropped at the end of the session."""
    try:
        _admin().close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN} ({exc}); set L2_TEST_PG_ADMIN")
    created: list[str] = []

    def make() -> str:
        name = f"l2_api_test_{uuid.uuid4().hex[:12]}"
        with _admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return _sqla_url(name)

    yield make
    with _admin() as conn:
        for name in created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session", params=["postgresql", "sqlite"])
def database_url(request, tmp_path_factory, fresh_pg_database) -> str:
    if request.param == "postgresql":
        url = fresh_pg_database()
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'l2.db'}"
    upgrade_database(url)
    return url


@pytest.fixture(scope="session")
def session_factory(database_url):
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def db(session_factory):
    with session_factory() as session:
        yield session
    with session_factory() as session:  # children first
        for model in (LayerResult, JobEvent, Job, Dataset, Checkpoint, ApiKey, Tenant, WorkerHeartbeat):
            session.execute(delete(model))
        session.commit()


@pytest.fixture
def settings(tmp_path, database_url) -> Settings:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        max_upload_bytes=MAX_UPLOAD,
        allowed_data_roots=[allowed],
        auth_enabled=True,
    )


@dataclass
class Enqueued:
    calls: list[tuple[str, str]]
    fail: bool = False

    def __call__(self, job_id: str, queue: str) -> None:
        if self.fail:
            raise ConnectionError("broker down (test)")
        self.calls.append((job_id, queue))


@pytest.fixture
def enqueued() -> Enqueued:
    return Enqueued(calls=[])


@pytest.fixture
def app(settings, session_factory, enqueued, db):
    return create_app(settings, session_factory=session_factory, enqueue=enqueued)


@pytest.fixture
def client(app) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


def _tenant(db, name: str) -> TenantKey:
    issued = create_key(db, name)
    return TenantKey(name=name, tenant_id=issued.tenant_id, key=issued.key)


@pytest.fixture
def tenant_a(db) -> TenantKey:
    return _tenant(db, "acme")


@pytest.fixture
def tenant_b(db) -> TenantKey:
    return _tenant(db, "globex")
