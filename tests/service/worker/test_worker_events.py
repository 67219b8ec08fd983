"""Events out of the service end to end: the embedded default (SQLite database and broker, as `l2 serve` runs
it) with real Celery worker processes, a real local webhook receiver and a real `mlflow server`.

* every event of a real compression arrives, signed, in order, while the receiver holds every answer (a slow
  receiver does not hold the job up: it succeeds before the receiver has answered anything);
* a worker SIGKILLed after the job's state changes, before any delivery, loses nothing: the next worker
  delivers every event from the outbox;
* MLflow: logging fails while the tracking server is down (a ``job.mlflow_failed`` event, the job stays
  succeeded), is retried, and once the server is up the run, its params, metrics, both artifacts and the
  registered model version exist, and the downloaded ``.l2`` has the job's SHA-256.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from worker_stack import Client, free_port, make_stack, needs_coding

from l2_client.webhooks import verify_webhook

pytestmark = [pytest.mark.service, needs_coding]

QUICK = {"rounds": 0}
EVENT_ENV = {
    "L2_WEBHOOK_ALLOW": "127.0.0.1",
    "L2_WEBHOOK_TIMEOUT_S": "3",
    "L2_WEBHOOK_RETRY_BASE_S": "0.2",
    "L2_WEBHOOK_RETRY_MAX_S": "1",
    "L2_WEBHOOK_POLL_INTERVAL_S": "0.1",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("events")
    data = tmp / "data"
    stack = make_stack(tmp, f"sqlite:///{data / 'l2.db'}", f"sqla+sqlite:///{data / 'broker.db'}")
    stack.env.update(EVENT_ENV)
    stack.migrate()
    stack.start_api()
    yield stack
    stack.stop()


@pytest.fixture
def client(stack):
    yield Client(stack)
    stack.stop_workers()


@pytest.fixture(scope="module")
def uploaded(stack, digits_files):
    return Client(stack).upload_digits(digits_files)


def submit(client: Client, ids: dict, **extra) -> dict:
    body = {**ids, "architecture": "digits_cnn", "target_ratio": 10.0, "options": QUICK, "device": "cpu", **extra}
    response = client.http.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def distinct_in_order(receiver) -> list:
    seen, out = set(), []
    for item in list(receiver.received):
        if item.id not in seen:
            seen.add(item.id)
            out.append(item)
    return out


def check_job_events(receiver, job: dict) -> list[str]:
    """Each event once (by webhook-id), signed with the job's secret, in order; returns their types."""
    events = distinct_in_order(receiver)
    for item in receiver.received:
        assert verify_webhook(item.headers, item.body, job["webhook_secret"])["data"]["id"] == job["id"]
    types = [e.type for e in events]
    assert types[:2] == ["job.queued", "job.started"], types
    assert types[-1] == "job.succeeded", types
    assert set(types[2:-1]) == {"job.progress"} and len(types) >= 4, types
    return types


def test_every_event_arrives_and_a_slow_receiver_does_not_hold_the_job_up(stack, client, uploaded, receiver):
    receiver.gate.clear()  # the receiver answers nothing until the test says so
    stack.start_worker("events")
    job = submit(client, uploaded, webhook_url=receiver.url)
    done = client.wait_done(job["id"], timeout_s=300)
    assert done["state"] == "succeeded", f"{done['error']}\n{stack.log_tail()}"
    assert receiver.answered == 0 and len(receiver.received) >= 1  # the first delivery is still waiting

    receiver.gate.set()
    receiver.wait_for(lambda: bool(receiver.of_type("job.succeeded")), 60, "job.succeeded")
    check_job_events(receiver, job)
    succeeded = receiver.of_type("job.succeeded")[0].event["data"]
    assert succeeded["artifact"]["sha256"] == done["artifact"]["sha256"]
    assert succeeded["true_ratio"] == pytest.approx(done["true_ratio"])


def test_a_worker_killed_after_the_state_change_still_delivers(stack, client, uploaded, receiver):
    stack.env["L2_WEBHOOK_DISPATCH"] = "false"  # this worker changes the job's state but delivers nothing
    try:
        first = stack.start_worker("no-dispatch")
    finally:
        del stack.env["L2_WEBHOOK_DISPATCH"]
    job = submit(client, uploaded, webhook_url=receiver.url)
    done = client.wait_done(job["id"], timeout_s=300)
    assert done["state"] == "succeeded", f"{done['error']}\n{stack.log_tail()}"
    time.sleep(1.0)
    assert receiver.received == []
    stack.kill_group(first)  # SIGKILL: the events exist only in the outbox now

    stack.start_worker("after-kill")
    receiver.wait_for(lambda: bool(receiver.of_type("job.succeeded")), 120, "job.succeeded after the kill")
    check_job_events(receiver, job)


@pytest.fixture
def mlflow_server(tmp_path):
    """Start function: a real `mlflow server` (SQLite backend, local artifact store) on a loopback port chosen
    up front, so a job can name it before it runs."""
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    if not mlflow_cli.exists():
        pytest.skip("mlflow is not installed (it is in the project's test extra)")
    port = free_port()
    procs = []

    def start() -> str:
        log = open(tmp_path / "mlflow.log", "ab")
        cmd = [
            str(mlflow_cli),
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--artifacts-destination",
            str(tmp_path / "mlartifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ]
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    return f"http://127.0.0.1:{port}"
            except httpx.TransportError:
                pass
            assert procs[-1].poll() is None, (tmp_path / "mlflow.log").read_text()[-3000:]
            time.sleep(0.5)
        raise TimeoutError((tmp_path / "mlflow.log").read_text()[-3000:])

    yield f"http://127.0.0.1:{port}", start
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_succeeded_job_is_logged_to_mlflow_and_a_failed_log_is_an_event_and_retried(
    stack, client, uploaded, receiver, mlflow_server, tmp_path
):
    from mlflow.tracking import MlflowClient

    uri, start_server = mlflow_server
    block = {"tracking_uri": uri, "experiment": "l2-e2e", "registered_model": "digits-l2"}
    stack.start_worker("mlflow")
    job = submit(client, uploaded, webhook_url=receiver.url, mlflow=block)
    done = client.wait_done(job["id"], timeout_s=300)
    assert done["state"] == "succeeded", f"{done['error']}\n{stack.log_tail()}"

    # The server is not up yet: the export fails, which is an event of its own; the job stays succeeded.
    receiver.wait_for(lambda: bool(receiver.of_type("job.mlflow_failed")), 120, "job.mlflow_failed")
    failed = receiver.of_type("job.mlflow_failed")[0].event["data"]
    assert failed["state"] == "succeeded" and failed["mlflow"]["status"] == "pending"
    assert failed["mlflow"]["error"]
    assert client.job(job["id"])["state"] == "succeeded"

    start_server()
    receiver.wait_for(lambda: bool(receiver.of_type("job.mlflow_logged")), 180, "job.mlflow_logged")
    logged = client.job(job["id"])["mlflow"]
    assert logged["status"] == "logged" and logged["attempts"] >= 2 and logged["model_version"] == "1"

    mlflow = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = mlflow.get_run(logged["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["target_ratio"] == "10.0" and run.data.params["options.rounds"] == "0"
    assert run.data.metrics["true_ratio"] == pytest.approx(done["true_ratio"])
    assert run.data.metrics["artifact_bytes"] == done["artifact"]["bytes"]
    checkpoint = client.ok(client.http.get(f"/v1/checkpoints/{done['checkpoint_id']}"))
    assert run.data.tags["l2.job_id"] == job["id"]
    assert run.data.tags["l2.source_checkpoint_sha256"] == checkpoint["sha256"]
    names = sorted(a.path for a in mlflow.list_artifacts(run.info.run_id, "l2"))
    assert names == [f"l2/{job['id']}.l2", "l2/layers.csv"]
    local = mlflow.download_artifacts(run.info.run_id, f"l2/{job['id']}.l2", str(tmp_path))
    with open(local, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == done["artifact"]["sha256"]
    table = mlflow.download_artifacts(run.info.run_id, "l2/layers.csv", str(tmp_path))
    layers = client.ok(client.http.get(f"/v1/jobs/{job['id']}/layers"))["data"]
    assert len(open(table).read().strip().splitlines()) == len(layers) + 1
    version = mlflow.get_model_version("digits-l2", "1")
    assert version.run_id == run.info.run_id
