"""Chaos: kill the service's processes mid-job and check that every job still ends, exactly once.

The service runs as ``l2 serve`` (API + supervised worker), on the embedded default (SQLite + SQL broker) and
on PostgreSQL + Redis. Mid-job, in turn: SIGKILL the worker's main Celery process (the supervisor starts a
new one, whose sweep requeues the abandoned job), SIGKILL ``l2 serve`` itself (its worker notices and stops
after the running job instead of consuming the queue as an orphan; the service is then started again, as
systemd or compose would), and, on the Redis stack, kill Redis and start it empty (the lost queued message
is published again by the workers' sweep). Nobody restarts a worker by hand. Finally, with no worker at all,
/readyz answers 503.

Redis here is a private ``redis-server`` on a free port (the shared one on 6379 must not be restarted).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import redis
from worker_stack import Client, DigitsFiles, fresh_postgres_database, make_stack, needs_coding

from bench.local_service import free_port, l2_command, start, wait_answering

# About 2 minutes per stack on 2 idle cores; far more on a machine busy with other test runs.
pytestmark = [pytest.mark.service, pytest.mark.slow, needs_coding, pytest.mark.timeout(1500)]

# Long enough to be killed mid-way on 2 busy cores, short enough to rerun twice.
LONG = {"rounds": 1, "transform_iters": 40, "weight_iters": 40}
SHORT = {"rounds": 1, "transform_iters": 4, "weight_iters": 4}
TERMINAL = ("succeeded", "failed", "canceled")
CHAOS_ENV = {
    "L2_WORKER_HEARTBEAT_S": "1",
    "L2_SWEEP_INTERVAL_S": "1",
    "L2_LOST_MESSAGE_AFTER_S": "3",
    "L2_PROGRESS_MIN_INTERVAL_S": "0.2",
    "L2_WORKER_NICE": "0",  # the machine running the tests is busy: a niced worker would crawl
}


# -- processes ----
def children(pid: int) -> list[tuple[int, str]]:
    out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [(int(line.split(None, 1)[0]), line.split(None, 1)[1]) for line in out.splitlines() if line.strip()]


def celery_main_of(serve_pid: int, timeout_s: float = 60) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [pid for pid, args in children(serve_pid) if "celery" in args]
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"l2 serve (pid {serve_pid}) has no Celery worker child")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too.
    state = Path(f"/proc/{pid}/stat")
    return not (state.exists() and state.read_text().split(")")[-1].split()[0] == "Z")


def wait_gone(pid: int, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while alive(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} (pid {pid}) still runs after {timeout_s:.0f} s")
        time.sleep(0.2)


class Serve:
    """One ``l2 serve`` process of a stack (API + supervised worker, or --no-worker)."""

    def __init__(self, stack, *extra: str) -> None:
        stack.api_port = stack.api_port or free_port()  # a restart answers on the same port
        self.stack = stack
        self.proc = start(l2_command("serve", "--port", str(stack.api_port), *extra), stack.env, self.log)
        wait_answering(f"{stack.base_url}/healthz", self.proc, timeout_s=120, log=self.log)

    @property
    def log(self) -> Path:
        return self.stack.logs / "serve.log"

    def wait_ready(self, timeout_s: float = 60) -> None:
        wait_answering(f"{self.stack.base_url}/readyz", self.proc, timeout_s=timeout_s, log=self.log)

    def kill_everything(self) -> None:
        """SIGKILL serve, then any worker it left (test cleanup)."""
        workers = [pid for pid, args in children(self.proc.pid) if "celery" in args] if alive(self.proc.pid) else []
        for pid in [self.proc.pid, *workers]:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()


class RedisServer:
    """A private, memory-only Redis: killing it loses every message, as a crash without persistence does."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=1).ping()
                return
            except redis.exceptions.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.1)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


# -- jobs ----
def wait_computing(client: Client, job_id: str) -> dict:
    """Until the job is in the optimizer, past its start (so a kill lands mid-job)."""
    return client.wait(job_id, lambda j: j["state"] == "running" and (j["progress"] or 0) >= 0.1, 300, "computing")


def assert_ended_once(client: Client, job_id: str, timeout_s: float = 400) -> dict:
    job = client.wait_done(job_id, timeout_s)
    assert job["state"] == "succeeded", f"{job}\n{client.stack.log_tail()}"
    ends = [e for e in events_of(client, job_id) if e["state"] in TERMINAL]
    assert len(ends) == 1, f"job {job_id} ended {len(ends)} times: {ends}"
    assert list((client.stack.data_dir / "artifacts").rglob(f"{job_id}.l2")), "artifact missing"
    return job


def events_of(client: Client, job_id: str) -> list[dict]:
    return client.ok(client.http.get(f"/v1/jobs/{job_id}/events"))["data"]


def run_chaos(stack, files: DigitsFiles, redis_server: RedisServer | None, db_state) -> None:
    serve = Serve(stack)
    try:
        serve.wait_ready()
        client = Client(stack)
        ids = client.upload_digits(files)

        # 1. SIGKILL the worker's main process mid-job: the supervisor restarts it; the job runs again.
        a = client.submit(ids, options=LONG)["id"]
        b = client.submit(ids, options=SHORT)["id"]
        wait_computing(client, a)
        os.kill(celery_main_of(serve.proc.pid), signal.SIGKILL)
        job_a = assert_ended_once(client, a)
        assert job_a["attempts"] == 2, job_a
        assert_ended_once(client, b)

        # 2. SIGKILL l2 serve mid-job: its worker must not live on consuming the queue.
        c = client.submit(ids, options=LONG)["id"]
        d = client.submit(ids, options=SHORT)["id"]
        wait_computing(client, c)
        orphan = celery_main_of(serve.proc.pid)
        os.kill(serve.proc.pid, signal.SIGKILL)
        serve.proc.wait()
        wait_gone(orphan, 300, "the orphaned worker")
        assert db_state(d) == "queued", "the orphaned worker took a new job"
        serve = Serve(stack)  # started again, as systemd or compose would
        assert_ended_once(client, c)
        assert_ended_once(client, d)

        # 3. Redis killed mid-job and started empty: the queued job's message is gone and is published again.
        if redis_server is not None:
            e = client.submit(ids, options=LONG)["id"]
            f = client.submit(ids, options=SHORT)["id"]
            wait_computing(client, e)
            redis_server.kill()
            time.sleep(1)
            redis_server.start()
            assert_ended_once(client, e)
            assert_ended_once(client, f)
            assert any("published again" in (ev["message"] or "") for ev in events_of(client, f))
            assert_ended_once(client, client.submit(ids, options=SHORT)["id"])

        # 4. No worker alive: /readyz says so.
        serve.kill_everything()
        serve = Serve(stack, "--no-worker", "--no-migrate")
        deadline = time.monotonic() + 30
        while (r := httpx.get(f"{stack.base_url}/readyz", timeout=10)).status_code != 503:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.5)
        assert "no worker has reported" in r.json()["checks"]["workers"]
    finally:
        serve.kill_everything()


def sql_state(url: str):
    from sqlalchemy import create_engine, text

    def state(job_id: str) -> str:
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                return conn.execute(text("SELECT state FROM jobs WHERE id = :id"), {"id": job_id}).scalar_one()
        finally:
            engine.dispose()

    return state


def test_chaos_on_the_embedded_default(tmp_path, digits_files):
    data = tmp_path / "data"
    stack = make_stack(tmp_path, f"sqlite:///{data / 'l2.db'}", f"sqla+sqlite:///{data / 'broker.db'}")
    stack.env.update(CHAOS_ENV)
    for name in ("L2_DATABASE_URL", "L2_BROKER_URL", "L2_AUTH_ENABLED"):  # nothing configured: the default
        stack.env.pop(name)
    run_chaos(stack, digits_files, None, sql_state(f"sqlite:///{data / 'l2.db'}"))


@pytest.fixture
def chaos_pg_url():
    with fresh_postgres_database("l2chaos") as url:
        yield url


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_chaos_on_postgres_and_redis(tmp_path, digits_files, chaos_pg_url):
    redis_server = RedisServer(tmp_path)
    try:
        stack = make_stack(tmp_path, chaos_pg_url, redis_server.url)
        stack.env.update(CHAOS_ENV)
        run_chaos(stack, digits_files, redis_server, sql_state(chaos_pg_url))
    finally:
        redis_server.kill()
