"""Upload throughput and the API server's peak memory: one large file through the resumable path (tus, the
client's `ResumableUpload`: 64 MiB PATCH requests with a sha256 checksum each) and through the plain upload
(one streamed POST), on loopback against a uvicorn API on the embedded default.

    python bench/bench_upload.py [--size-gib 4] [--label after] [--commit HASH]
                                          # writes bench/results/upload.md and upload.json

Each run is stored under its label (rerunning a label replaces it), so upload.md shows before and after side
by side; run an older checkout's service by running this script from an export of that commit.

The source file is sparse (zeros; created with truncate, deleted afterwards) so the figures measure the
service, not the client's disk. Peak RSS is the server process's VmHWM from /proc after each run (a fresh
server per run).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.local_service import api_command, clean_env, free_port, l2_command, start, wait_answering  # noqa: E402
from l2_client import Client  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def start_server(data_dir: Path, port: int) -> subprocess.Popen:
    env = clean_env(
        L2_DATA_DIR=str(data_dir),
        L2_AUTH_ENABLED="false",
        L2_MAX_UPLOAD_BYTES=str(64 * 1024**3),
        L2_DATABASE_URL=f"sqlite:///{data_dir / 'l2.db'}",
    )
    subprocess.run(l2_command("migrate"), env=env, cwd=ROOT, check=True)
    proc = start(api_command(port), env)
    wait_answering(f"http://127.0.0.1:{port}/healthz", proc, timeout_s=120)
    return proc


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads (from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(kind: str, source: Path, work: Path) -> dict:
    data_dir = work / f"data-{kind}"
    data_dir.mkdir()
    port = free_port()
    server = start_server(data_dir, port)
    url = f"http://127.0.0.1:{port}"
    try:
        idle_rss = peak_rss_mib(server.pid)
        server_cpu, client_cpu = cpu_seconds(server.pid), own_cpu_seconds()
        start = time.perf_counter()
        if kind == "resumable":
            with Client(url, resumable_threshold=0, timeout=600) as client:
                checkpoint = client.upload_checkpoint(source).model_dump()
        else:

            def blocks():
                with open(source, "rb") as f:
                    while block := f.read(1024**2):
                        yield block

            r = httpx.post(
                f"{url}/v1/checkpoints",
                params={"filename": source.name},
                content=blocks(),
                headers={"Content-Length": str(source.stat().st_size)},
                timeout=600,
            )
            r.raise_for_status()
            checkpoint = r.json()
        seconds = time.perf_counter() - start
        server_cpu, client_cpu = cpu_seconds(server.pid) - server_cpu, own_cpu_seconds() - client_cpu
        peak = peak_rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(data_dir, ignore_errors=True)
    size = source.stat().st_size
    return {
        "path": kind,
        "bytes": size,
        "seconds": round(seconds, 2),
        "throughput_mb_s": round(size / seconds / 1e6, 1),
        "server_cpu_s_per_gib": round(server_cpu / (size / 1024**3), 2),
        "client_cpu_s_per_gib": round(client_cpu / (size / 1024**3), 2),
        "server_rss_idle_mib": round(idle_rss, 1),
        "server_rss_peak_mib": round(peak, 1),
        "sha256": checkpoint["sha256"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gib", type=float, default=4.0)
    parser.add_argument("--label", default="after", help="row label in the results (rerunning a label replaces it)")
    parser.add_argument("--commit", default=None, help="commit to record (default: git rev-parse HEAD)")
    args = parser.parse_args()
    size = int(args.size_gib * 1024**3)
    free = shutil.disk_usage(ROOT).free
    if free < 3 * size:
        raise SystemExit(f"need ~{3 * size / 1e9:.0f} GB free for a {args.size_gib} GiB run; have {free / 1e9:.0f}")
    with tempfile.TemporaryDirectory(
        dir=ROOT / "bench" / "cache" if (ROOT / "bench" / "cache").is_dir() else None
    ) as tmp:
        work = Path(tmp)
        source = work / "big.safetensors"
        with open(source, "wb") as f:
            f.truncate(size)  # sparse: zeros, no disk used
        load_before = os.getloadavg()[0]
        rows = [run("resumable", source, work), run("plain", source, work)]
        load_after = os.getloadavg()[0]
        source.unlink()
    commit = (
        args.commit
        or subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    )
    meta = {
        "command": f"python bench/bench_upload.py --size-gib {args.size_gib:g} --label {args.label}",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "machine": f"{os.cpu_count()} cores ({cpu_model()}), loopback, SQLite",
        "load_average_1min": [round(load_before, 1), round(load_after, 1)],
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "upload.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    labels = previous.get("labels") or ({f"{previous['commit']} (load 22)": previous} if "rows" in previous else {})
    labels[args.label] = meta
    path.write_text(json.dumps({"labels": labels}, indent=2) + "\n")
    lines = [
        "# Upload throughput and server memory",
        "",
        "A 4 GiB file through the resumable path (tus: the client's `ResumableUpload`, 64 MiB PATCH requests "
        "with a sha256 checksum each) and through the plain upload (one streamed POST), on loopback against "
        "a fresh uvicorn API process on the embedded default (SQLite). Source: a sparse file of zeros. "
        "Produced by `bench/bench_upload.py` (commands below). Aim (issue 10): ≥ 200 MB/s, server peak RSS "
        "flat and < 200 MB.",
        "",
        "CPU seconds per GiB: server process (all threads) and client (this process).",
        "",
        "| label | path | GiB | seconds | MB/s | server CPU s/GiB | client CPU s/GiB | server RSS after start "
        "(MiB) | server RSS peak (MiB) | load avg |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for label, block in labels.items():
        load = block.get("load_average_1min", ["?", "?"])
        for r in block["rows"]:
            lines.append(
                f"| {label} | {r['path']} | {r['bytes'] / 1024**3:.2f} | {r['seconds']} | {r['throughput_mb_s']} "
                f"| {r['server_cpu_s_per_gib']} | {r['client_cpu_s_per_gib']} | {r['server_rss_idle_mib']} "
                f"| {r['server_rss_peak_mib']} | {load[0]} → {load[1]} |"
            )
    lines += ["", "Runs:", ""]
    for label, block in labels.items():
        lines.append(
            f"- **{label}**: commit `{block['commit'] or '?'}`, {block['date']}, {block['machine']}: "
            f"`{block['command']}`"
        )
    (RESULTS / "upload.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
