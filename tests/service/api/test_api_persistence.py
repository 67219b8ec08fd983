"""Persistence details the worker relies on: the names it imports, UTC timestamps, SQLite set up for several
processes, and idempotent submission under a race."""

from __future__ import annotations

from datetime import UTC, datetime

from api_helpers import upload_checkpoint, upload_dataset
from sqlalchemy import text

from api.auth import Caller
from api.schemas import JobCreate
from api.services import jobs as job_service
from store.db import make_engine
from store.models import Job, Tenant


def test_the_names_the_worker_imports_exist(tmp_path, monkeypatch):
    import store.db
    import store.models
    from store.settings import get_settings

    monkeypatch.setenv("L2_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("L2_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    monkeypatch.setattr(store.db, "_engine", None)
    monkeypatch.setattr(store.db, "_session_factory", None)
    try:
        from store.db import SessionLocal, engine  # what worker.signals / worker.pipeline import

        assert str(engine.url) == f"sqlite:///{tmp_path / 'l2.db'}"
        assert SessionLocal.kw["bind"] is engine
        with SessionLocal() as session:
            assert session.execute(text("SELECT 1")).scalar() == 1
        engine.dispose()
    finally:
        get_settings.cache_clear()
    for name in ("Tenant", "ApiKey", "Checkpoint", "Dataset", "Job", "JobEvent", "LayerResult"):
        assert hasattr(store.models, name)


def test_sqlite_connections_use_wal_and_a_busy_timeout(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'sub' / 'l2.db'}")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 1000
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    finally:
        engine.dispose()


def test_timestamps_come_back_as_aware_utc(db):
    tenant = Tenant(name="tz")
    db.add(tenant)
    db.commit()
    db.expire_all()
    created = db.get(Tenant, tenant.id).created_at
    assert created.tzinfo is not None and created.utcoffset().total_seconds() == 0
    assert abs((datetime.now(UTC) - created).total_seconds()) < 60


def test_a_racing_duplicate_idempotency_key_returns_the_first_job(app, client, tenant_a, db, monkeypatch):
    ctx = app.state.ctx
    body = JobCreate(
        checkpoint_id=upload_checkpoint(client, tenant_a).json()["id"],
        dataset_id=upload_dataset(client, tenant_a).json()["id"],
        target_ratio=4,
    )
    caller = Caller(tenant_id=tenant_a.tenant_id, tenant_name=tenant_a.name, key_prefix=None)
    with ctx.session_factory() as session:
        first, created = job_service.create(ctx, session, caller, body, "race")
    assert created
    # the second request looked before the first committed: its lookup finds nothing, its insert collides
    real = job_service._by_idempotency_key
    calls = iter([None])
    monkeypatch.setattr(job_service, "_by_idempotency_key", lambda *a: next(calls, None) or real(*a))
    with ctx.session_factory() as session:
        second, created = job_service.create(ctx, session, caller, body, "race")
    assert not created and second.id == first.id
    assert db.query(Job).count() == 1
