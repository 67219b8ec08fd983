"""Server CPU time per ``GET /v1/jobs/{id}``: what a status poll costs the API process, before and after.

Wall-clock capacity needs a quiet machine; CPU seconds spent by the API process per answered request barely
depend on what else runs (only through caches and frequency scaling), so this comparison holds on a machine
shared with other work. It starts one uvicorn API process on SQLite from a checkout (``--root``), submits one
job (no worker: it stays queued), warms up, then sends ``--requests`` polls over ``--concurrency`` keep-alive
connections (`bench.http_load`) and reads the process's user+system CPU from /proc. 1 / (ms per request) is
the req/s one core could serve; the machine's cores, less the client's share, bound the total.

    .venv/bin/python bench/bench_poll_cpu.py --label after
    .venv/bin/python bench/bench_poll_cpu.py --label before --root /tmp/before --commit 5c4abe3 --plain-uvicorn
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.http_load import load  # noqa: E402  (run as a script: the checkout is not on sys.path)

RESULTS = ROOT / "bench" / "results"
MIGRATE = (
    "try:\n    from store.migrate import upgrade_database\n"
    "except ImportError:\n    from api.migrate import upgrade_database\nupgrade_database()"
)
NEW_KEY = (
    "try:\n    from store.db import get_session_factory\n"
    "except ImportError:\n    from api.db import get_session_factory\n"
    "from api.auth import create_key\nprint(create_key(get_session_factory()(), 'bench').key)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(args, auth: bool) -> dict:
    root = Path(args.root).resolve()
    data = Path(tempfile.mkdtemp(prefix="l2-bench-cpu-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("L2_")}
    env.update(L2_DATA_DIR=str(data), L2_AUTH_ENABLED=str(auth).lower(), L2_RATE_LIMIT_PER_WINDOW="0")
    run = dict(env=env, cwd=root, check=True, capture_output=True, text=True)
    subprocess.run([sys.executable, "-c", MIGRATE], **run)
    headers = {}
    if auth:
        headers["Authorization"] = "Bearer " + subprocess.run([sys.executable, "-c", NEW_KEY], **run).stdout.strip()
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app", "--port", str(port)]
    command += ["--log-level", "warning", "--no-access-log"]
    if args.plain_uvicorn:
        command += ["--loop", "asyncio", "--http", "h11"]
    api = subprocess.Popen(command, env=env, cwd=root, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                httpx.get(base + "/healthz", timeout=5)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
            ckpt = client.post("/v1/checkpoints", params={"filename": "m.pt"}, content=b"x" * 100).json()["id"]
            data_id = client.post("/v1/datasets/upload", params={"filename": "c.npy"}, content=b"y" * 100).json()
            body = {"checkpoint_id": ckpt, "dataset_id": data_id["id"], "target_ratio": 10.0}
            job = client.post("/v1/jobs", json=body).json()["id"]
        path = f"/v1/jobs/{job}"
        asyncio.run(load(base, path, concurrency=args.concurrency, max_requests=300, max_seconds=300, headers=headers))
        before = cpu_seconds(api.pid)
        result = asyncio.run(
            load(base, path, concurrency=args.concurrency, max_requests=args.requests, max_seconds=900, headers=headers)
        )
        spent = cpu_seconds(api.pid) - before
    finally:
        os.killpg(api.pid, signal.SIGKILL)
        api.wait()
    per_request_ms = 1000 * spent / max(1, result["requests"])
    row = {
        "auth": auth,
        "requests": result["requests"],
        "errors": result["errors"],
        "server_cpu_ms_per_request": round(per_request_ms, 3),
        "req_per_s_per_core": round(1000 / per_request_ms) if per_request_ms else None,
        "load_average": round(os.getloadavg()[0], 1),
    }
    print(json.dumps(row), flush=True)
    return row


def write_results(label: str, block: dict) -> None:
    path = RESULTS / "poll_cpu.json"
    labels = json.loads(path.read_text())["labels"] if path.exists() else {}
    labels[label] = block
    path.write_text(json.dumps({"labels": labels}, indent=2) + "\n")
    lines = [
        "# Server CPU per status poll: `GET /v1/jobs/{id}`",
        "",
        "CPU seconds the uvicorn API process spent per answered poll (one process, SQLite, a queued job, 10 "
        "keep-alive connections of `bench/http_load.py`), measured from /proc: robust to the other work on the "
        "machine, unlike wall-clock throughput. Machine: 2 CPU cores, **shared with other engineers' test runs "
        "while measured** (load average in the table). Produced by `bench/bench_poll_cpu.py`.",
        "",
        "| label | commit | server | auth | requests | errors | server CPU ms / request | req/s per core | load avg |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, b in labels.items():
        for r in b["runs"]:
            lines.append(
                f"| {name} | `{b['commit']}` | {b['server']} | {'key' if r['auth'] else 'off'} | {r['requests']} "
                f"| {sum(r['errors'].values())} | {r['server_cpu_ms_per_request']} | {r['req_per_s_per_core']} "
                f"| {r['load_average']} |"
            )
    lines += ["", "Commands:", ""]
    lines += [f"- **{name}** ({b['date']}): `{b['command']}`" for name, b in labels.items()]
    (RESULTS / "poll_cpu.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="after")
    parser.add_argument("--root", default=str(ROOT), help="checkout the API runs from (default: this one)")
    parser.add_argument("--commit", default=None, help="commit to record (default: git rev-parse of --root)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--plain-uvicorn", action="store_true", help="asyncio loop and h11 (before uvloop)")
    args = parser.parse_args()
    commit = (
        args.commit
        or subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=args.root, capture_output=True, text=True
        ).stdout.strip()
    )
    runs = [measure(args, auth=False), measure(args, auth=True)]
    write_results(
        args.label,
        {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "commit": commit,
            "command": " ".join(sys.argv),
            "server": "asyncio + h11" if args.plain_uvicorn else "uvloop + httptools",
            "cpu_count": os.cpu_count(),
            "runs": runs,
        },
    )
    print((RESULTS / "poll_cpu.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
