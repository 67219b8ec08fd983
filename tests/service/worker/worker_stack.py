"""Helpers of the worker's end-to-end tests (fixtures: conftest.py). Real servers, real processes:

* PostgreSQL: a fresh database per test session (``l2w_<random>``), upgraded from empty with ``l2 migrate``
  (Alembic), dropped at the end.
* Redis: a database number of its own per session, claimed with ``SET NX`` in DB 0 so concurrent runs
  (other engineers, CI) never share queues; flushed before and after.
* The API runs as a uvicorn subprocess and each worker as ``python -m celery -A worker.celery_app worker``
  in its own process group, exactly as deployed, so ``kill -9`` of the group is a real worker loss.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import torch

from bench.local_service import ROOT, api_command, clean_env, free_port, l2_command, start, wait_answering
from worker.cli import worker_command

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
FAST_OPTIONS = {"rounds": 1, "transform_iters": 20, "weight_iters": 20}


def coding_available() -> bool:
    try:
        from compression_core.coding import load_l2  # noqa: F401
    except ImportError:
        return False
    return True


needs_coding = pytest.mark.skipif(
    not coding_available(), reason="compression_core.coding (load_l2) not present yet"
)


@contextlib.contextmanager
def fresh_postgres_database(prefix: str) -> Iterator[str]:
    """A new, empty database ``<prefix>_<random>`` on the local PostgreSQL, dropped afterwards; skips the test
    when the server is not running."""
    psycopg = pytest.importorskip("psycopg")
    name = f"{prefix}_{secrets.token_hex(6)}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL on 127.0.0.1:5432 unavailable ({exc}); run scripts/ensure_services.sh")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- the model and its data --
@dataclass
class DigitsFiles:
    model: torch.nn.Module
    split: object
    checkpoint: Path
    calibration: Path
    heldout: Path


# -- the service stack --
@dataclass
class Stack:
    """One service deployment: environment, API subprocess, worker subprocesses (each its own group)."""

    env: dict
    data_dir: Path
    logs: Path
    api_port: int = 0
    api: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def run_l2(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(l2_command(*args), env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=300)

    def migrate(self) -> None:
        out = self.run_l2("migrate")
        assert out.returncode == 0, out.stderr[-3000:]

    def start_api(self) -> None:
        self.api_port = free_port()
        self.api = start(api_command(self.api_port), self.env, self.logs / "api.log")
        wait_answering(f"{self.base_url}/healthz", self.api, timeout_s=60, log=self.logs / "api.log")

    def start_worker(self, name: str, queues: str = "cpu,gpu") -> subprocess.Popen:
        command = worker_command(queues.split(","), hostname=f"{name}-{secrets.token_hex(3)}@%h")
        proc = start(command, self.env, self.logs / f"worker-{name}.log")
        self.workers.append(proc)
        return proc

    def kill_group(self, proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop_workers(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                self.kill_group(proc, signal.SIGTERM)
        self.workers.clear()

    def stop(self) -> None:
        self.stop_workers()
        if self.api is not None and self.api.poll() is None:
            self.kill_group(self.api, signal.SIGTERM)

    def log_tail(self, chars: int = 4000) -> str:
        parts = []
        for path in sorted(self.logs.glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)


def make_stack(tmp: Path, database_url: str, broker_url: str) -> Stack:
    data_dir = tmp / "data"
    logs = tmp / "logs"
    data_dir.mkdir()
    logs.mkdir()
    env = clean_env(
        L2_DATABASE_URL=database_url,
        L2_BROKER_URL=broker_url,
        L2_DATA_DIR=str(data_dir),
        L2_AUTH_ENABLED="false",
        L2_PROGRESS_MIN_INTERVAL_S="0.2",
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="2",
    )
    return Stack(env=env, data_dir=data_dir, logs=logs)


# -- API client helpers --
class Client:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.http = httpx.Client(base_url=stack.base_url, timeout=60)

    def ok(self, response: httpx.Response) -> dict:
        assert response.status_code < 400, (
            f"{response.request.method} {response.request.url}: {response.status_code} {response.text}"
        )
        return response.json()

    def upload_digits(self, files: DigitsFiles) -> dict:
        import json

        ckpt = self.ok(
            self.http.post(
                "/v1/checkpoints",
                params={"filename": files.checkpoint.name},
                content=files.checkpoint.read_bytes(),
            )
        )
        calib = self.ok(
            self.http.post(
                "/v1/datasets/upload",
                params={"filename": files.calibration.name, "spec": json.dumps({"kind": "tensors"})},
                content=files.calibration.read_bytes(),
            )
        )
        heldout = self.ok(
            self.http.post(
                "/v1/datasets/upload",
                params={
                    "filename": files.heldout.name,
                    "spec": json.dumps({"kind": "tensors", "labels_key": "labels"}),
                },
                content=files.heldout.read_bytes(),
            )
        )
        return {"checkpoint_id": ckpt["id"], "dataset_id": calib["id"], "eval_dataset_id": heldout["id"]}

    def submit(self, ids: dict, *, target_ratio: float = 10.0, options: dict | None = None) -> dict:
        body = {
            **ids,
            "architecture": "digits_cnn",
            "target_ratio": target_ratio,
            "options": options or FAST_OPTIONS,
            "device": "cpu",
        }
        return self.ok(self.http.post("/v1/jobs", json=body))

    def job(self, job_id: str) -> dict:
        return self.ok(self.http.get(f"/v1/jobs/{job_id}"))

    def wait(self, job_id: str, predicate, timeout_s: float, what: str) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if predicate(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"job {job_id} never became {what} in {timeout_s:.0f} s; last: {job}\n"
                    f"{self.stack.log_tail()}"
                )
            time.sleep(0.2)

    def wait_done(self, job_id: str, timeout_s: float = 600) -> dict:
        return self.wait(
            job_id, lambda j: j["state"] in ("succeeded", "failed", "canceled"), timeout_s, "done"
        )
