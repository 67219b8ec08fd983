"""Latency of ``GET /v1/jobs/{id}`` under 50 concurrent pollers while a compression job runs.

Starts the service as deployed — a uvicorn API process and a Celery worker process — on either the embedded
default (SQLite + SQLite broker) or PostgreSQL + Redis, uploads the digits CNN, submits a job long enough to
outlast the measurement, waits until it is running, then lets ``--concurrency`` pollers (one httpx
AsyncClient, one connection each) hit the job's status endpoint until ``--requests`` responses or
``--seconds`` have passed. The worker writes progress to the same row meanwhile (every
``L2_PROGRESS_MIN_INTERVAL_S``), so reads contend with real writes. Results: ``bench/results/polling.md`` and
``.json`` (p50/p90/p99/max in ms, throughput, errors, the job's progress before and after).

    .venv/bin/python bench/bench_polling.py                       # both backends
    .venv/bin/python bench/bench_polling.py --backend embedded --requests 3000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from worker.cli import worker_command

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
# Long enough that the job is still running when the pollers stop.
JOB_OPTIONS = {"rounds": 20, "transform_iters": 500, "weight_iters": 500}
TARGET_P99_MS = 50.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    def __init__(self, backend: str, folder: Path, worker_threads: int) -> None:
        self.backend = backend
        self.folder = folder
        self.data = folder / "data"
        self.data.mkdir()
        self.procs: list[subprocess.Popen] = []
        self.pg_name = None
        self.redis_db = None
        env = {k: v for k, v in os.environ.items() if not k.startswith("L2_")}
        env.update(
            {
                "L2_DATA_DIR": str(self.data),
                "L2_AUTH_ENABLED": "false",
                "L2_PROGRESS_MIN_INTERVAL_S": "1.0",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if backend == "postgres":
            import psycopg
            import redis

            self.pg_name = f"l2bench_{secrets.token_hex(5)}"
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{self.pg_name}"')
            client = redis.Redis("127.0.0.1", 6379, db=0)
            for db in range(15, 0, -1):
                if client.set(f"l2-test-redis-db:{db}", f"bench-{os.getpid()}", nx=True, ex=3600):
                    self.redis_db = db
                    break
            if self.redis_db is None:
                raise RuntimeError("no free Redis database number")
            redis.Redis("127.0.0.1", 6379, db=self.redis_db).flushdb()
            env["L2_DATABASE_URL"] = f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.pg_name}"
            env["L2_BROKER_URL"] = f"redis://127.0.0.1:6379/{self.redis_db}"
        self.env = env
        self.worker_env = {
            **env,
            "OMP_NUM_THREADS": str(worker_threads),
            "MKL_NUM_THREADS": str(worker_threads),
        }
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        main = "import sys; from compression_core.cli import main; sys.exit(main())"
        out = subprocess.run(
            [sys.executable, "-c", main, "migrate"], env=self.env, cwd=ROOT, capture_output=True, text=True
        )
        if out.returncode:
            raise RuntimeError(out.stderr[-2000:])
        logs = open(self.folder / "service.log", "ab")
        self.procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "--factory",
                    "api.app:create_app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "warning",
                    "--no-access-log",
                ],
                env=self.env,
                cwd=ROOT,
                stdout=logs,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        self.procs.append(
            subprocess.Popen(
                worker_command(
                    ["cpu", "gpu"], hostname=f"bench-{secrets.token_hex(3)}@%h", loglevel="warning"
                ),
                env=self.env,
                cwd=ROOT,
                stdout=logs,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise TimeoutError("API did not start")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self.pg_name:
            import psycopg

            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')
        if self.redis_db is not None:
            import redis

            redis.Redis("127.0.0.1", 6379, db=self.redis_db).flushdb()
            redis.Redis("127.0.0.1", 6379, db=0).delete(f"l2-test-redis-db:{self.redis_db}")


def submit_job(base_url: str, folder: Path) -> str:
    import torch

    from compression_core import zoo

    model, split = zoo.train_digits_cnn(seed=0, epochs=3)
    torch.save(model.state_dict(), folder / "digits_cnn.pt")
    torch.save(split.train_x[:256].clone(), folder / "calibration.pt")
    with httpx.Client(base_url=base_url, timeout=60) as client:
        ckpt = client.post(
            "/v1/checkpoints",
            params={"filename": "digits_cnn.pt"},
            content=(folder / "digits_cnn.pt").read_bytes(),
        ).json()
        data = client.post(
            "/v1/datasets/upload",
            params={"filename": "calibration.pt", "spec": json.dumps({"kind": "tensors"})},
            content=(folder / "calibration.pt").read_bytes(),
        ).json()
        job = client.post(
            "/v1/jobs",
            json={
                "checkpoint_id": ckpt["id"],
                "dataset_id": data["id"],
                "architecture": "digits_cnn",
                "target_ratio": 10.0,
                "options": JOB_OPTIONS,
                "device": "cpu",
            },
        ).json()
        deadline = time.monotonic() + 300
        while True:
            state = client.get(f"/v1/jobs/{job['id']}").json()
            if state["state"] == "running" and state["progress"] > 0.05:
                return job["id"]
            if state["state"] in ("succeeded", "failed", "canceled") or time.monotonic() > deadline:
                raise RuntimeError(f"job did not start running: {state}")
            time.sleep(0.5)


async def poll(
    base_url: str, job_id: str, concurrency: int, max_requests: int, max_seconds: float, interval_s: float
) -> dict:
    """``concurrency`` pollers; each sends its next request ``interval_s`` after the previous one was due (or,
    with ``interval_s`` 0, as soon as the previous answered: a saturation test, where latency is mostly
    queueing). Pollers start staggered over one interval, as independent clients would."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    issued = 0
    stop_at = time.monotonic() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:
        await client.get("/healthz")

        async def poller(index: int) -> None:
            nonlocal issued
            due = time.monotonic() + interval_s * index / concurrency
            while issued < max_requests:
                if interval_s:
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    due += interval_s
                if time.monotonic() >= stop_at or issued >= max_requests:
                    return
                issued += 1
                started = time.perf_counter()
                try:
                    response = await client.get(f"/v1/jobs/{job_id}")
                    elapsed = time.perf_counter() - started
                    if response.status_code == 200:
                        latencies.append(elapsed)
                    else:
                        errors[str(response.status_code)] = errors.get(str(response.status_code), 0) + 1
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

        wall = time.perf_counter()
        await asyncio.gather(*(poller(i) for i in range(concurrency)))
        wall = time.perf_counter() - wall
    ms = sorted(1000 * x for x in latencies)

    def pct(q: float) -> float:
        return ms[min(len(ms) - 1, int(round(q * (len(ms) - 1))))] if ms else float("nan")

    return {
        "mode": f"every {interval_s:g} s per poller" if interval_s else "back-to-back (saturation)",
        "interval_s": interval_s,
        "requests": len(ms),
        "errors": errors,
        "seconds": round(wall, 2),
        "throughput_rps": round(len(ms) / wall, 1) if wall else None,
        "p50_ms": round(pct(0.50), 2),
        "p90_ms": round(pct(0.90), 2),
        "p99_ms": round(pct(0.99), 2),
        "max_ms": round(ms[-1], 2) if ms else None,
        "mean_ms": round(statistics.fmean(ms), 2) if ms else None,
    }


def run_backend(backend: str, args) -> list[dict]:
    runs = []
    with tempfile.TemporaryDirectory(prefix=f"l2-bench-polling-{backend}-") as tmp:
        service = Service(backend, Path(tmp), worker_threads=args.worker_threads)
        try:
            service.start()
            job_id = submit_job(service.base_url, Path(tmp))
            for interval in args.intervals:
                before = httpx.get(f"{service.base_url}/v1/jobs/{job_id}").json()
                result = asyncio.run(
                    poll(service.base_url, job_id, args.concurrency, args.requests, args.seconds, interval)
                )
                after = httpx.get(f"{service.base_url}/v1/jobs/{job_id}").json()
                result.update(
                    {
                        "backend": backend,
                        "job_progress_before": round(before["progress"], 4),
                        "job_progress_after": round(after["progress"], 4),
                        "job_state_after": after["state"],
                        "job_phase_after": after["phase"],
                    }
                )
                print(json.dumps(result), flush=True)
                runs.append(result)
            httpx.post(f"{service.base_url}/v1/jobs/{job_id}/cancel")
        finally:
            service.stop()
    return runs


def write_results(runs: list[dict], args) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "python": platform.python_version(),
        "concurrency": args.concurrency,
        "max_requests_per_run": args.requests,
        "max_seconds_per_run": args.seconds,
        "target_p99_ms": TARGET_P99_MS,
        "uvicorn_workers": 1,
        "worker_torch_threads": args.worker_threads,
        "progress_min_interval_s": 1.0,
        "job_options": JOB_OPTIONS,
    }
    (RESULTS / "polling.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=2) + "\n")
    lines = [
        "# Polling latency: `GET /v1/jobs/{id}` while a job runs",
        "",
        f"{args.concurrency} concurrent pollers (httpx AsyncClient, keep-alive, one client process) "
        "against one uvicorn API process on 127.0.0.1, while one Celery worker process "
        f"({args.worker_threads} torch thread(s)) compresses the digits CNN and writes the same row's "
        f"progress every second. Each run is bounded by {args.requests} responses or {args.seconds:g} s. "
        f"Machine: {os.cpu_count()} CPU cores shared by the pollers, the API, the worker and the database, "
        f"and by other users (load average at the end: {os.getloadavg()[0]:.1f}). "
        f"Produced by `bench/bench_polling.py` on {meta['date']}.",
        "",
        "| backend | pollers | responses | errors | req/s | p50 ms | p90 ms | p99 ms | max ms "
        "| job progress during run | p99 < 50 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        ok = "yes" if r["p99_ms"] < TARGET_P99_MS else "**no**"
        errs = sum(r["errors"].values())
        lines.append(
            f"| {r['backend']} | {r['mode']} | {r['requests']} | {errs} | {r['throughput_rps']} "
            f"| {r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | {r['max_ms']} "
            f"| {r['job_progress_before']:.4f} → "
            f"{r['job_progress_after']:.4f} ({r['job_state_after']}) | {ok} |"
        )
    lines += [
        "",
        "Paced pollers (each asks once per interval, like a UI or the demo) measure the latency a client "
        "sees; back-to-back pollers measure the API's capacity, and their latency is mostly waiting in line "
        "(≈ pollers / throughput). Latency is taken in the client, so it includes the client's own "
        "event-loop time on the same cores. The endpoint is one primary-key read of the job row plus JSON "
        "serialisation.",
        "",
    ]
    (RESULTS / "polling.md").write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("embedded", "postgres", "both"), default="both")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--requests", type=int, default=3000, help="responses per run (upper bound)")
    parser.add_argument("--seconds", type=float, default=30.0, help="time per run (upper bound)")
    parser.add_argument(
        "--intervals",
        type=float,
        nargs="+",
        default=[1.0, 0.0],
        help="seconds between one poller's requests; 0 = back-to-back (default: 1 and 0)",
    )
    parser.add_argument(
        "--worker-threads",
        type=int,
        default=1,
        help="torch threads of the compressing worker (default 1: on a 2-core machine this leaves "
        "one core to the API, as separate containers would)",
    )
    args = parser.parse_args()
    backends = ("postgres", "embedded") if args.backend == "both" else (args.backend,)
    runs = []
    for backend in backends:
        runs += run_backend(backend, args)
    write_results(runs, args)
    print((RESULTS / "polling.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
