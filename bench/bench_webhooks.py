"""Webhook delivery: deliveries per second and latency from a job's state change to its receipt.

1,000 jobs each go through submitted → started → one progress report → succeeded, every change in its own
transaction through `store.job_states` / `store.outbox` exactly as the API and the workers write them (no
compression runs: this measures the event path, not the optimizer). Three endpoints of the tenant receive every
event, each a threaded HTTP server on 127.0.0.1 answering 200 at once. The dispatcher
(`worker.events.dispatcher.Dispatcher`, as a worker's main process runs it) runs in a process of its own.

Two runs per backend:

* **backlog**: all 1,000 jobs' changes are written first, then the dispatcher starts and drains the 12,000
  deliveries: deliveries per second (first to last receipt) is its capacity; latency there is only waiting;
* **paced**: ``--paced-jobs`` jobs at a fixed rate below that capacity (``--paced-jobs-per-s``): the latency a
  healthy receiver sees (the issue's aim: p99 < 1 s).

Latency = receipt time at the receiver − the event's ``timestamp`` (taken inside the state change's
transaction, just before its commit). Results: ``bench/results/webhooks.md`` and ``.json``.

    .venv/bin/python bench/bench_webhooks.py --backends sqlite,postgres   # 1,000 jobs backlog, 1,000 paced
    .venv/bin/python bench/bench_webhooks.py --backends sqlite --jobs 200 --paced-jobs 100
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
ENDPOINTS = 3
EVENTS_PER_JOB = 4
TARGET_P99_S = 1.0


# -- receivers ----
class Receivers:
    """``ENDPOINTS`` HTTP servers on loopback; each records (receipt time, event timestamp, webhook-id)."""

    def __init__(self, count: int) -> None:
        self.records: list[tuple[float, str, str, int]] = []  # receipt, event timestamp, webhook-id, port
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                now = time.time()
                stamp = json.loads(body)["timestamp"]
                with owner.lock:
                    owner.records.append((now, stamp, self.headers["webhook-id"], self.server.server_address[1]))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.servers = [ThreadingHTTPServer(("127.0.0.1", 0), Handler) for _ in range(count)]
        for server in self.servers:
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{s.server_address[1]}/hook" for s in self.servers]

    def count(self) -> int:
        with self.lock:
            return len(self.records)

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()


# -- the dispatcher process ----
def run_dispatcher(database_url: str, stop_file: str) -> None:
    os.environ["L2_DATABASE_URL"] = database_url
    from store.db import make_engine, make_session_factory
    from store.settings import Settings
    from worker.events.dispatcher import Dispatcher

    settings = Settings(database_url=database_url, webhook_allow=["127.0.0.1"])
    engine = make_engine(database_url)
    dispatcher = Dispatcher(make_session_factory(engine), settings)
    stop = threading.Event()

    def watch() -> None:
        while not os.path.exists(stop_file):
            time.sleep(0.2)
        stop.set()

    threading.Thread(target=watch, daemon=True).start()
    dispatcher.run(stop)


# -- the writer: job state changes as the API and workers make them ----
def change_states(session_factory, tenant_id: str, jobs: int, jobs_per_s: float | None) -> float:
    """Submit, start, report progress and succeed ``jobs`` jobs (each change one transaction); returns the
    seconds it took. Paced: one job's four changes every 1/``jobs_per_s`` s."""
    from store import job_states
    from store.job_states import still_claimed_by
    from store.models import Job
    from store.outbox import emit

    started = time.monotonic()
    for index in range(jobs):
        if jobs_per_s:
            delay = started + index / jobs_per_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        with session_factory() as s:
            job = Job(tenant_id=tenant_id, target_ratio=10.0, options={}, device="cpu", queue="cpu", state="queued")
            s.add(job)
            s.flush()
            job_states.submitted(s, job)
            s.commit()
            job_id = job.id
        with session_factory() as s:
            queued = (Job.id == job_id, Job.state == "queued")
            job_states.start_attempt(s, job_id, queued, owner="bench:1", attempt=1, first=True, message="go")
            s.commit()
        with session_factory() as s:
            emit(s, job_id, "job.progress")
            s.commit()
        with session_factory() as s:
            job_states.succeed(
                s,
                job_id,
                still_claimed_by(job_id, "bench:1", 1),
                "done",
                artifact_path=f"artifacts/t/{job_id}.l2",
                artifact_bytes=62158,
                artifact_sha256="0" * 64,
                true_ratio=10.05,
                original_bytes=624960,
            )
            s.commit()
    return time.monotonic() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def one_run(database_url: str, mode: str, jobs: int, jobs_per_s: float | None) -> dict:
    from sqlalchemy import delete, func, select

    from store.db import make_engine, make_session_factory
    from store.models import OutboxEvent, Tenant, WebhookDelivery, WebhookEndpoint
    from store.webhook_signing import new_secret

    load_start = os.getloadavg()[0]
    engine = make_engine(database_url)
    session_factory = make_session_factory(engine)
    receivers = Receivers(ENDPOINTS)
    with session_factory() as s:
        tenant = Tenant(name=f"bench-{secrets.token_hex(4)}")
        s.add(tenant)
        s.flush()
        for url in receivers.urls:
            s.add(WebhookEndpoint(tenant_id=tenant.id, url=url, event_types=[], secret=new_secret(), status="active"))
        s.commit()
        tenant_id = tenant.id
    expected = jobs * EVENTS_PER_JOB * ENDPOINTS
    stop_file = tempfile.mktemp(prefix="l2-bench-stop-")
    # Progress is throttled per endpoint (5 s) in production; here every event counts, so it is turned off.
    os.environ["L2_WEBHOOK_PROGRESS_INTERVAL_S"] = "0"
    process = multiprocessing.get_context("spawn").Process(target=run_dispatcher, args=(database_url, stop_file))
    if mode == "backlog":  # every change first, then the dispatcher drains them: its capacity
        writing_s = change_states(session_factory, tenant_id, jobs, None)
        process.start()
    else:
        process.start()
        time.sleep(3.0)  # let the dispatcher import and connect before the clock starts
        writing_s = change_states(session_factory, tenant_id, jobs, jobs_per_s)
    deadline = time.monotonic() + 600
    while receivers.count() < expected and time.monotonic() < deadline:
        time.sleep(0.1)
    done = time.time()
    Path(stop_file).touch()
    process.join(30)
    if process.is_alive():
        process.kill()
    os.unlink(stop_file)
    with receivers.lock:
        records = list(receivers.records)
    receivers.close()
    latencies = [at - datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() for at, stamp, *_ in records]
    with session_factory() as s:
        pending = s.execute(
            select(func.count()).select_from(WebhookDelivery).where(WebhookDelivery.status != "succeeded")
        ).scalar_one()
        s.execute(delete(OutboxEvent).where(OutboxEvent.tenant_id == tenant_id))
        s.execute(delete(Tenant).where(Tenant.id == tenant_id))
        s.commit()
    engine.dispose()
    last = max((r[0] for r in records), default=done)
    first = min((r[0] for r in records), default=done)
    return {
        "mode": mode,
        "jobs": jobs,
        "jobs_per_s": jobs_per_s,
        "events": jobs * EVENTS_PER_JOB,
        "deliveries_expected": expected,
        "deliveries_received": len(records),
        "duplicates": len(records) - len({(r[2], r[3]) for r in records}),
        "not_succeeded_in_db": pending,
        "writing_s": round(writing_s, 2),
        "elapsed_s": round(last - first, 2),
        "deliveries_per_s": round(len(records) / max(1e-9, last - first), 1),
        "latency_p50_s": round(percentile(latencies, 0.50), 3),
        "latency_p90_s": round(percentile(latencies, 0.90), 3),
        "latency_p99_s": round(percentile(latencies, 0.99), 3),
        "latency_max_s": round(max(latencies), 3) if latencies else None,
        "load_average_start": round(load_start, 1),
        "load_average_end": round(os.getloadavg()[0], 1),
    }


def database(backend: str, tmp: Path) -> tuple[str, callable]:
    from store.migrate import upgrade_database

    if backend == "sqlite":
        url = f"sqlite:///{tmp / 'bench.db'}"
        upgrade_database(url)
        return url, lambda: None
    import psycopg

    name = f"l2_bench_hooks_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    upgrade_database(url)

    def drop() -> None:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return url, drop


def write_results(rows: list[dict], args) -> None:
    from store.settings import Settings

    defaults = Settings()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    meta = {
        "command": "python bench/bench_webhooks.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit.stdout.strip(),
        "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), shared with other engineers' work",
        "load_average_end": round(os.getloadavg()[0], 1),
        "endpoints": ENDPOINTS,
        "events_per_job": EVENTS_PER_JOB,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "webhooks.json").write_text(json.dumps({**meta, "runs": rows}, indent=2) + "\n")
    lines = [
        "# Webhook delivery: throughput and state-change → receipt latency",
        "",
        f"Jobs × {EVENTS_PER_JOB} events (queued, started, progress, succeeded), each state change its "
        f"own transaction through `store.job_states`/`store.outbox`, to {ENDPOINTS} endpoints (threaded HTTP "
        "servers on 127.0.0.1 answering 200 at once); one dispatcher process (`worker.events.dispatcher`, default "
        f"settings: {defaults.webhook_concurrency} sending threads, {defaults.webhook_poll_interval_s:g} s poll). "
        "Latency = receipt at the receiver − the event's timestamp (taken in the state change's transaction). "
        "No compression runs; the progress throttle is off so every event counts.",
        "",
        f"Command: `{meta['command']}`. Commit {meta['commit']}, {meta['date']}. Machine: {meta['machine']}; the "
        f"writer, the dispatcher, the receivers and the database share them (load average per run below, at its "
        "start → end), so the figures are a floor for a dedicated machine.",
        "",
        "| backend | run | jobs | jobs/s written | deliveries | received | deliveries/s | p50 s | p90 s | p99 s "
        "| max s | p99 < 1 s | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rate = f"{r['jobs'] / r['writing_s']:.0f}" if r["writing_s"] else "-"
        ok = "yes" if r["latency_p99_s"] < TARGET_P99_S else "**no**"
        lines.append(
            f"| {r['backend']} | {r['mode']} | {r['jobs']} | {rate} | {r['deliveries_expected']} | "
            f"{r['deliveries_received']} | "
            f"{r['deliveries_per_s']} | {r['latency_p50_s']} | {r['latency_p90_s']} | {r['latency_p99_s']} | "
            f"{r['latency_max_s']} | {ok} | {r['load_average_start']} → {r['load_average_end']} |"
        )
    lines += [
        "",
        "Backlog: every change is written before the dispatcher starts, so its deliveries/s (first to last "
        "receipt) is the capacity of one dispatcher and its latencies are time spent waiting for it to start and "
        "drain the queue (not meaningful as latency). Paced: the writer keeps to a rate below that capacity, the "
        "case of a healthy receiver; its latency is what the issue's aim (p99 < 1 s) is about.",
    ]
    (RESULTS / "webhooks.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="postgres,sqlite")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--paced-jobs", type=int, default=1000, help="jobs of the paced run (default 1,000)")
    parser.add_argument(
        "--paced-jobs-per-s", type=float, default=10.0, help="jobs a second in the paced run (4 events each)"
    )
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            url, drop = database(backend, Path(tmp))
            try:
                for mode, jobs, rate in (
                    ("backlog", args.jobs, None),
                    ("paced", args.paced_jobs, args.paced_jobs_per_s),
                ):
                    row = {"backend": backend, **one_run(url, mode, jobs, rate)}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
                    write_results(rows, args)  # after every run: a long bench leaves what it measured
            finally:
                drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
