"""Fixtures of the worker's end-to-end tests; `worker_stack` says how the servers are isolated."""

from __future__ import annotations

import os
import secrets

import pytest
import torch
from worker_stack import REDIS_HOST, REDIS_PORT, DigitsFiles, fresh_postgres_database, make_stack


@pytest.fixture(scope="session")
def postgres_url():
    with fresh_postgres_database("l2w") as url:
        yield url


@pytest.fixture(scope="session")
def redis_url():
    redis = pytest.importorskip("redis")
    client = redis.Redis(REDIS_HOST, REDIS_PORT, db=0, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.skip(f"Redis on {REDIS_HOST}:{REDIS_PORT} unavailable ({exc}); run scripts/ensure_services.sh")
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    db = None
    for candidate in secrets.SystemRandom().sample(range(1, 16), 15):
        if client.set(f"l2-test-redis-db:{candidate}", token, nx=True, ex=3600):
            db = candidate
            break
    if db is None:
        pytest.skip("no free Redis database number (1..15) for an isolated test run")
    own = redis.Redis(REDIS_HOST, REDIS_PORT, db=db)
    own.flushdb()
    yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    own.flushdb()
    if client.get(f"l2-test-redis-db:{db}") == token.encode():
        client.delete(f"l2-test-redis-db:{db}")


@pytest.fixture(scope="session")
def digits_files(tmp_path_factory) -> DigitsFiles:
    from compression_core import zoo

    folder = tmp_path_factory.mktemp("digits")
    model, split = zoo.train_digits_cnn(seed=0, epochs=8)
    files = DigitsFiles(
        model, split, folder / "digits_cnn.pt", folder / "calibration.pt", folder / "heldout.pt"
    )
    torch.save(model.state_dict(), files.checkpoint)
    torch.save(split.train_x[:256].clone(), files.calibration)
    torch.save({"images": split.test_x.clone(), "labels": split.test_y.clone()}, files.heldout)
    return files


@pytest.fixture(scope="session")
def pg_redis_stack(tmp_path_factory, postgres_url, redis_url):
    """API on PostgreSQL + Redis, schema from ``l2 migrate``; tests start and kill their own workers."""
    stack = make_stack(tmp_path_factory.mktemp("pg-redis"), postgres_url, redis_url)
    stack.migrate()
    stack.start_api()
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def embedded_stack(tmp_path_factory):
    """The embedded default: SQLite database + kombu SQLAlchemy broker over SQLite, a local data folder."""
    tmp = tmp_path_factory.mktemp("embedded")
    data = tmp / "data"
    stack = make_stack(tmp, f"sqlite:///{data / 'l2.db'}", f"sqla+sqlite:///{data / 'broker.db'}")
    stack.migrate()
    stack.start_api()
    yield stack
    stack.stop()
