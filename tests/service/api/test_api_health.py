"""Liveness, readiness (database, broker, a live worker), Prometheus metrics, OpenAPI, and the API's import
weight."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from api_helpers import finish_job, submit_job

from store.models import WorkerHeartbeat, utcnow

ROOT = Path(__file__).resolve().parents[3]


def test_healthz_answers_without_auth(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def worker_reported(db, *, seconds_ago: float = 0.0, queues: str = "cpu,gpu", pid: int = 4242) -> None:
    """A worker's liveness row as `worker.liveness` writes it, last seen ``seconds_ago``."""
    seen = utcnow() - timedelta(seconds=seconds_ago)
    db.add(WorkerHeartbeat(id=f"host:{pid}", name=f"w{pid}@host", queues=queues, started_at=seen, last_seen=seen))
    db.commit()


def test_readyz_is_ok_with_the_database_and_broker_up_and_a_worker_alive(client, db):
    worker_reported(db)
    r = client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "status": "ok",
        "checks": {"database": "ok", "broker": "ok", "workers": "ok (1 alive; queues cpu, gpu)"},
    }


def test_readyz_is_503_while_no_worker_has_ever_reported(client):
    r = client.get("/readyz")
    assert r.status_code == 503
    body = r.json()
    assert body["checks"]["database"] == "ok" and body["checks"]["broker"] == "ok"
    assert body["checks"]["workers"].startswith("unavailable: NoWorker: no worker has reported in the last 15 s")
    assert "l2 worker" in body["checks"]["workers"]


def test_readyz_is_503_once_the_only_worker_stopped_reporting(client, db, settings):
    # Three missed reports (3 x worker_heartbeat_s = 15 s) mean the worker is gone, e.g. SIGKILLed.
    worker_reported(db, seconds_ago=3 * settings.worker_heartbeat_s + 1)
    assert client.get("/readyz").status_code == 503
    worker_reported(db, seconds_ago=1, pid=4343, queues="cpu")
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"]["workers"] == "ok (1 alive; queues cpu)"


def test_readyz_is_503_naming_the_broker_when_redis_is_down(client, settings):
    settings.broker_url = "redis://127.0.0.1:1/0"
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["database"] == "ok" and r.json()["checks"]["broker"].startswith("unavailable")


def test_readyz_pings_a_real_redis_broker(client, settings, db):
    worker_reported(db)
    settings.broker_url = "redis://127.0.0.1:6379/0"
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"]["broker"] == "ok"


def test_metrics_report_jobs_by_state_durations_and_queue_depth(client, tenant_a, db, settings):
    submit_job(client, tenant_a)
    done = submit_job(client, tenant_a).json()["id"]
    finish_job(db, settings.data_dir, done)
    text = client.get("/metrics").text
    assert 'l2_jobs{state="queued"} 1.0' in text and 'l2_jobs{state="succeeded"} 1.0' in text
    assert 'l2_jobs{state="running"} 0.0' in text
    assert 'l2_job_duration_seconds_count{state="succeeded"} 1.0' in text
    assert 'l2_job_duration_seconds_bucket{le="60.0",state="succeeded"} 1.0' in text
    assert 'l2_queue_depth{queue="cpu"} 1.0' in text
    assert "l2_upload_bytes_total" in text


def test_openapi_documents_every_route_with_response_models(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    assert {
        "/v1/checkpoints",
        "/v1/datasets",
        "/v1/datasets/upload",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/v1/jobs/{job_id}/events",
        "/v1/jobs/{job_id}/layers",
        "/v1/jobs/{job_id}/artifact",
        "/healthz",
        "/readyz",
        "/metrics",
    } <= set(paths)
    create = paths["/v1/jobs"]["post"]
    assert create["responses"]["202"]["content"]["application/json"]["schema"]["$ref"].endswith("/JobPublic")
    assert "application/octet-stream" in paths["/v1/checkpoints"]["post"]["requestBody"]["content"]
    assert {
        "JobCreate",
        "JobPublic",
        "JobsPublic",
        "CheckpointPublic",
        "DatasetPublic",
        "DatasetCreate",
        "LayerResultPublic",
        "CompressionOptions",
    } <= set(spec["components"]["schemas"])
    assert spec["components"]["securitySchemes"]


def test_the_api_process_does_not_import_torch(tmp_path):
    code = (
        "import sys; from api.app import create_app; from store.settings import Settings; "
        f"app = create_app(Settings(data_dir={str(tmp_path)!r})); "
        "import api.cli, api.routes.jobs, api.services.jobs; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_queue_depth_is_redis_llen_for_a_redis_broker():
    import uuid

    import pytest
    import redis

    from api.metrics import redis_queue_depths

    url = "redis://127.0.0.1:6379/15"  # a database of its own: never the queues real workers consume
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip("Redis not reachable on 127.0.0.1:6379")
    key = f"l2-test-{uuid.uuid4().hex}"
    try:
        client.rpush(key, "a", "b", "c")
        assert redis_queue_depths(url, queues=(key,)) == {key: 3}
    finally:
        client.delete(key)
        client.close()
