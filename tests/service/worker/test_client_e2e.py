"""The Python client against the real service: a real ``l2 serve`` (embedded default) and the PostgreSQL/Redis
stack. Submit → wait → download with the SHA-256 the server recorded; an upload whose connection is cut
mid-way resumes and the stored file is the source byte for byte; a submit whose response was lost is retried
and creates one job; a 429 is retried after its Retry-After."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from client_proxy import FaultyProxy
from worker_stack import make_stack, needs_coding

from bench.local_service import ROOT, clean_env, free_port, l2_command, start, stop_group, wait_answering
from l2_client import Client, Conflict

pytestmark = [pytest.mark.service]  # real servers and worker processes (make test-fast leaves them out)
QUICK = {"rounds": 0}  # the initial allocation only: the pipeline end to end in seconds


@dataclass
class TinyFiles:
    checkpoint: Path
    calibration: Path


@pytest.fixture(scope="module")
def tiny_digits(tmp_path_factory) -> TinyFiles:
    """The digits CNN with seeded initial weights (what the client moves does not need a trained model, and
    training would cost these tests tens of CPU seconds) and 64 calibration inputs."""
    import torch

    from compression_core.zoo import DigitsCNN

    folder = tmp_path_factory.mktemp("tiny-digits")
    torch.manual_seed(0)
    files = TinyFiles(folder / "digits_cnn.pt", folder / "calibration.pt")
    torch.save(DigitsCNN().state_dict(), files.checkpoint)
    torch.save(torch.rand(64, 1, 8, 8), files.calibration)
    return files


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Served:
    def __init__(self, base_url: str, data_dir: Path, log: Path) -> None:
        self.base_url, self.data_dir, self.log = base_url, data_dir, log


@pytest.fixture(scope="module")
def l2_serve(tmp_path_factory):
    """``l2 serve`` as a user starts it: nothing configured but the data folder and a free port."""
    tmp = tmp_path_factory.mktemp("l2-serve")
    port, log = free_port(), tmp / "serve.log"
    env = clean_env(L2_DATA_DIR=str(tmp / "data"), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")
    proc = start(l2_command("serve", "--port", str(port)), env, log)
    base = f"http://127.0.0.1:{port}"
    wait_answering(f"{base}/healthz", proc, timeout_s=120, log=log)
    yield Served(base, tmp / "data", log)
    stop_group(proc, timeout_s=60)


def compress_and_download(client: Client, files, data_dir: Path, out: Path) -> None:
    checkpoint = client.upload_checkpoint(files.checkpoint)
    assert checkpoint.sha256 == sha256_file(files.checkpoint)
    calibration = client.upload_dataset(files.calibration, {"kind": "tensors"})
    job = client.submit(checkpoint, calibration, 10.0, architecture="digits_cnn", options=QUICK, device="cpu")
    job.wait(timeout=300, progress=False, poll_interval=0.3)
    assert job.state == "succeeded" and job.info.true_ratio is not None
    job.download(out)
    on_server = data_dir / next(iter((data_dir / "artifacts").rglob(f"{job.id}.l2"))).relative_to(data_dir)
    assert sha256_file(out) == job.info.artifact.sha256 == sha256_file(on_server)
    assert len(job.layers()) > 0 and [e.state for e in job.events()][-1] == "succeeded"


@needs_coding
def test_submit_wait_download_against_l2_serve(l2_serve, tiny_digits, tmp_path):
    with Client(l2_serve.base_url) as client:
        compress_and_download(client, tiny_digits, l2_serve.data_dir, tmp_path / "digits.l2")


@needs_coding
def test_submit_wait_download_against_postgres_and_redis(pg_redis_stack, tiny_digits, tmp_path):
    pg_redis_stack.start_worker("client-e2e")
    try:
        with Client(pg_redis_stack.base_url) as client:
            compress_and_download(client, tiny_digits, pg_redis_stack.data_dir, tmp_path / "digits.l2")
    finally:
        pg_redis_stack.stop_workers()


@pytest.mark.parametrize("backend", ["l2_serve", "pg_redis_stack"])
def test_an_upload_cut_mid_way_resumes_and_the_stored_file_is_the_source(backend, request, tmp_path):
    served = request.getfixturevalue(backend)
    port = int(served.base_url.rsplit(":", 1)[1])
    source = tmp_path / "big.safetensors"
    source.write_bytes(os.urandom(3 * 1024**2 + 12345))
    proxy = FaultyProxy(port, cut_after=1_300_000)
    try:
        with Client(proxy.url, resumable_threshold=1024**2, chunk_bytes=512 * 1024) as client:
            checkpoint = client.upload_checkpoint(source)
    finally:
        proxy.close()
    assert proxy.cuts == 1
    assert checkpoint.sha256 == sha256_file(source) and checkpoint.size_bytes == source.stat().st_size
    stored = served.data_dir / "checkpoints"
    (on_disk,) = [p for p in stored.rglob("big.safetensors") if checkpoint.id in str(p)]
    assert sha256_file(on_disk) == sha256_file(source)


def test_a_submit_whose_response_was_lost_creates_one_job(l2_serve, tmp_path):
    with Client(l2_serve.base_url) as direct:
        ckpt_file, data_file = tmp_path / "m.pt", tmp_path / "d.pt"
        ckpt_file.write_bytes(b"not really a model")
        data_file.write_bytes(b"not really data")
        checkpoint, dataset = direct.upload_checkpoint(ckpt_file), direct.upload_dataset(data_file)
        before = {j.id for j in direct.jobs(limit=500)}
        proxy = FaultyProxy(int(l2_serve.base_url.rsplit(":", 1)[1]), drop_response_to=b"POST /v1/jobs ")
        try:
            with Client(proxy.url) as flaky:
                flaky.transport.sleep = lambda s: None
                job = flaky.submit(checkpoint, dataset, 10.0, options=QUICK, device="cpu")
        finally:
            proxy.close()
        assert proxy.dropped_responses == 1
        new = [j for j in direct.jobs(limit=500) if j.id not in before]
        assert [j.id for j in new] == [job.id]
        with contextlib.suppress(Conflict):  # the fake checkpoint may already have failed the job
            direct.job(job.id).cancel()


@pytest.mark.parametrize("backend", ["embedded", "postgres-redis"])
def test_429_is_retried_after_retry_after(backend, request, tmp_path):
    """Counters in the API process (embedded default) or in Redis (shared by every API process)."""
    if backend == "embedded":
        urls = f"sqlite:///{tmp_path / 'data' / 'l2.db'}", f"sqla+sqlite:///{tmp_path / 'b.db'}"
    else:
        urls = request.getfixturevalue("postgres_url"), request.getfixturevalue("redis_url")
    stack = make_stack(tmp_path, *urls)
    stack.env.update({"L2_RATE_LIMIT_PER_WINDOW": "3", "L2_RATE_LIMIT_WINDOW_S": "2"})
    stack.migrate()
    stack.start_api()
    waits: list[float] = []
    try:
        with Client(stack.base_url) as client:
            real_sleep = client.transport.sleep
            client.transport.sleep = lambda s: (waits.append(s), real_sleep(s))
            # the Postgres/Redis stack's database is shared with earlier tests: compare with what is there
            baseline = [job.id for job in client.jobs()]
            for _ in range(4):
                assert [job.id for job in client.jobs()] == baseline
    finally:
        stack.stop()
    assert waits and all(1 <= w <= 2 for w in waits), waits  # the server's Retry-After, not the backoff


def readme_example(path: str) -> str:
    """The example file, after checking that README.md shows it verbatim under its marker."""
    text = (ROOT / path).read_text()
    readme = (ROOT / "README.md").read_text()
    marker = f"<!-- example: {path}"
    assert marker in readme, f"README.md lost the example {path}"
    block = readme.split(marker, 1)[1].split("```", 2)[1]
    assert block.split("\n", 1)[1] == text, f"README.md's copy of {path} differs from the file; paste it again"
    return text


@needs_coding
def test_the_readme_examples_run_against_l2_serve(l2_serve, tiny_digits, tmp_path):
    import shutil

    shutil.copy(tiny_digits.checkpoint, tmp_path / "digits_cnn.pt")
    shutil.copy(tiny_digits.calibration, tmp_path / "calib.pt")
    env = {k: v for k, v in os.environ.items() if not k.startswith("L2_")}
    env.update({"L2_URL": l2_serve.base_url, "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}"})
    python = subprocess.run(
        [sys.executable, "-c", readme_example("docs/examples/client_example.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert python.returncode == 0, python.stderr[-3000:]
    assert "x [(" in python.stdout and (tmp_path / "digits_cnn.l2").stat().st_size > 0
    (tmp_path / "digits_cnn.l2").unlink()
    shell = subprocess.run(
        ["bash", "-c", readme_example("docs/examples/remote_pipeline.sh")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert shell.returncode == 0, shell.stdout[-2000:] + shell.stderr[-3000:]
    assert "compressed " in shell.stdout and "LAYER" in shell.stdout
    assert json.loads((tmp_path / "job.json").read_text())["job"]["state"] == "succeeded"
    assert (tmp_path / "digits_cnn.l2").stat().st_size > 0


def l2_remote(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        l2_command("remote", *args), env=clean_env(), cwd=cwd or ROOT, capture_output=True, text=True, timeout=600
    )


def test_l2_remote_exit_codes_tell_a_pipeline_what_happened(l2_serve, tmp_path):
    url = ["--url", l2_serve.base_url]
    bogus, data = tmp_path / "m.pt", tmp_path / "d.pt"
    bogus.write_bytes(b"not a model")
    data.write_bytes(b"not data either")
    args = ["submit", str(bogus), "--calibration", str(data), "--target-ratio", "10", "--device", "cpu"]

    failed = l2_remote(*args, "--options", '{"rounds": 0}', "--wait", "--timeout", "300", "--json", *url)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    job = json.loads(failed.stdout)["job"]
    assert job["state"] == "failed" and job["error"]

    status = l2_remote("status", job["id"], "--json", *url)
    assert status.returncode == 0 and json.loads(status.stdout)["state"] == "failed"
    listing = l2_remote("list", "--state", "failed", "--json", *url)
    assert listing.returncode == 0 and job["id"] in [j["id"] for j in json.loads(listing.stdout)]
    no_artifact = l2_remote("download", job["id"], str(tmp_path / "out.l2"), *url)
    assert no_artifact.returncode == 3 and "has no artifact" in no_artifact.stderr
    assert not (tmp_path / "out.l2").exists()

    missing = l2_remote("status", "no-such-job", *url)
    assert missing.returncode == 3 and "not found" in missing.stderr
    unreachable = l2_remote("status", "x", "--retries", "0", "--url", f"http://127.0.0.1:{free_port()}")
    assert unreachable.returncode == 4 and "failed after 1 attempt" in unreachable.stderr
    bad_json = l2_remote(*args, "--options", "{not json", *url)
    assert bad_json.returncode == 2 and "--options is not valid JSON" in bad_json.stderr
    for out in (failed, missing, unreachable, bad_json, no_artifact):
        assert "Traceback" not in out.stderr


def test_the_async_client_uploads_concurrently(l2_serve, tmp_path):
    import asyncio

    from l2_client import AsyncClient

    sources = []
    for i in range(3):
        sources.append(tmp_path / f"m{i}.pt")
        sources[-1].write_bytes(os.urandom(200_000 + i))

    async def main():
        async with AsyncClient(l2_serve.base_url) as client:
            return await asyncio.gather(*(client.upload_checkpoint(p) for p in sources))

    uploaded = asyncio.run(main())
    assert [c.sha256 for c in uploaded] == [sha256_file(p) for p in sources]
