"""End to end through the real API, real brokers and real Celery worker processes: a trained digits CNN is
uploaded, compressed by a worker, downloaded, decoded and checked (accuracy on held-out digits, true ratio
from the file's bytes). Also: a worker killed with SIGKILL mid-job, and cancelling a running job."""

from __future__ import annotations

import hashlib
import time

import pytest
from worker_stack import Client, Stack, needs_coding

pytestmark = [pytest.mark.service, needs_coding]

SLOW_OPTIONS = {"rounds": 1, "transform_iters": 150, "weight_iters": 150}
ENDLESS_OPTIONS = {"rounds": 50, "transform_iters": 1000, "weight_iters": 1000}


@pytest.fixture
def pg_redis(pg_redis_stack):
    yield pg_redis_stack
    pg_redis_stack.stop_workers()


@pytest.fixture
def embedded(embedded_stack):
    yield embedded_stack
    embedded_stack.stop_workers()


def artifact_files(stack: Stack, job_id: str) -> list[str]:
    folder = stack.data_dir / "artifacts"
    return sorted(p.name for p in folder.rglob(f"*{job_id}*")) if folder.exists() else []


def check_success(stack: Stack, client: Client, files, job: dict, target: float, tmp_path) -> None:
    from compression_core import zoo
    from compression_core.coding import load_l2

    assert job["state"] == "succeeded", f"{job['error']}\n{stack.log_tail()}"
    response = client.http.get(f"/v1/jobs/{job['id']}/artifact")
    assert response.status_code == 200
    data = response.content
    assert job["artifact"]["bytes"] == len(data)
    assert job["artifact"]["sha256"] == hashlib.sha256(data).hexdigest()
    true_ratio = job["original_bytes"] / len(data)  # measured from the downloaded file's bytes
    assert abs(true_ratio / target - 1.0) <= 0.03, true_ratio
    assert job["true_ratio"] == pytest.approx(true_ratio)

    path = tmp_path / f"{job['id']}.l2"
    path.write_bytes(data)
    decoded = zoo.DigitsCNN()
    decoded.load_state_dict(load_l2(path))
    fp32 = zoo.accuracy(files.model, files.split.test_x, files.split.test_y)
    accuracy = zoo.accuracy(decoded, files.split.test_x, files.split.test_y)
    assert accuracy >= fp32 - 0.02, (fp32, accuracy)

    evaluation = job["evaluation"]
    assert evaluation["holdout"]["top1_agreement"] >= 0.9
    assert evaluation["eval_dataset"]["candidate_accuracy"] == pytest.approx(accuracy, abs=1e-6)

    layers = client.ok(client.http.get(f"/v1/jobs/{job['id']}/layers"))["data"]
    assert [layer["position"] for layer in layers] == list(range(len(files.model.state_dict())))
    assert [layer["name"] for layer in layers] == list(files.model.state_dict())
    assert artifact_files(stack, job["id"]) == [f"{job['id']}.l2"]


def test_job_runs_to_a_decodable_artifact_on_postgres_and_redis(pg_redis, digits_files, tmp_path):
    client = Client(pg_redis)
    pg_redis.start_worker("e2e")
    job = client.submit(client.upload_digits(digits_files), target_ratio=10.0)
    assert job["state"] == "queued" and job["queue"] == "cpu"
    job = client.wait_done(job["id"])
    check_success(pg_redis, client, digits_files, job, 10.0, tmp_path)
    events = client.ok(client.http.get(f"/v1/jobs/{job['id']}/events"))["data"]
    phases = [e["phase"] for e in events]
    assert {"queued", "loading", "transform", "weights", "writing", "done"} <= set(phases)


def test_job_runs_to_a_decodable_artifact_on_the_embedded_default(embedded, digits_files, tmp_path):
    client = Client(embedded)
    embedded.start_worker("embedded")
    job = client.submit(client.upload_digits(digits_files), target_ratio=12.0)
    job = client.wait_done(job["id"])
    check_success(embedded, client, digits_files, job, 12.0, tmp_path)


def test_job_of_a_worker_killed_mid_run_finishes_once_on_a_new_worker(pg_redis, digits_files, tmp_path):
    client = Client(pg_redis)
    doomed = pg_redis.start_worker("doomed")
    job = client.submit(client.upload_digits(digits_files), target_ratio=10.0, options=SLOW_OPTIONS)
    client.wait(
        job["id"], lambda j: j["state"] == "running" and j["progress"] > 0.05, 300, "running with progress"
    )
    pg_redis.kill_group(doomed)  # SIGKILL to the main process and its pool child: a real worker loss

    pg_redis.start_worker("rescuer")
    job = client.wait_done(job["id"])
    check_success(pg_redis, client, digits_files, job, 10.0, tmp_path)
    assert job["attempts"] == 2
    messages = [e["message"] for e in client.ok(client.http.get(f"/v1/jobs/{job['id']}/events"))["data"]]
    assert sum("true ratio" in m for m in messages) == 1  # one success event

    # A late duplicate delivery (e.g. Redis restoring the killed worker's unacknowledged message) is a no-op.
    from worker.celery_app import create_celery_app

    final = next((pg_redis.data_dir / "artifacts").rglob(f"{job['id']}.l2"))
    mtime = final.stat().st_mtime_ns
    create_celery_app(pg_redis.env["L2_BROKER_URL"]).send_task(
        "l2.run_job", args=[job["id"]], queue="cpu", routing_key="cpu", exchange="l2"
    )
    time.sleep(5)
    again = client.job(job["id"])
    assert again["state"] == "succeeded" and again["attempts"] == 2
    assert again["artifact"]["sha256"] == job["artifact"]["sha256"] and final.stat().st_mtime_ns == mtime
    layers = client.ok(client.http.get(f"/v1/jobs/{job['id']}/layers"))["data"]
    assert len(layers) == len(digits_files.model.state_dict())
    assert artifact_files(pg_redis, job["id"]) == [f"{job['id']}.l2"]


def test_cancel_stops_a_running_job_within_seconds_and_frees_the_worker(pg_redis, digits_files, tmp_path):
    client = Client(pg_redis)
    pg_redis.start_worker("cancel")
    ids = client.upload_digits(digits_files)
    job = client.submit(ids, target_ratio=10.0, options=ENDLESS_OPTIONS)
    client.wait(
        job["id"], lambda j: j["state"] == "running" and j["progress"] > 0.05, 300, "running with progress"
    )

    started = time.monotonic()
    assert client.ok(client.http.post(f"/v1/jobs/{job['id']}/cancel"))["cancel_requested"]
    job = client.wait(job["id"], lambda j: j["state"] != "running", 30, "stopped")
    stopped_after = time.monotonic() - started
    assert job["state"] == "canceled" and job["artifact"] is None
    assert stopped_after < 10, stopped_after
    assert artifact_files(pg_redis, job["id"]) == []

    second = client.submit(ids, target_ratio=10.0)
    second = client.wait_done(second["id"])
    check_success(pg_redis, client, digits_files, second, 10.0, tmp_path)


@pytest.mark.slow
def test_l2_serve_demo_compresses_and_decodes_on_the_embedded_default(tmp_path):
    """The newcomer's command: no servers configured, the demo runs to a decoded accuracy and exits."""
    import subprocess

    from bench.local_service import ROOT, clean_env, free_port, l2_command

    env = clean_env(L2_DATA_DIR=str(tmp_path / "data"), PYTHONUNBUFFERED="1")
    command = l2_command("serve", "--demo", "--exit-after-demo", "--demo-iters", "20", "--port", str(free_port()))
    out = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-5000:]
    assert "AUTHENTICATION IS OFF" in text and "sqla+sqlite" in text
    assert "[demo] true ratio" in text and "decoded .l2" in text
    assert "succeeded" in text
