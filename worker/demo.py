"""``l2 serve --demo``: watch one compression from upload to decoded accuracy, through the public API.

Trains the digits CNN of `compression_core.zoo` (registered with the loaders as ``digits_cnn``; scikit-learn's
8×8 handwritten digits, a few seconds on a CPU), uploads its state_dict, calibration images and a labelled
held-out set, submits a job, prints its progress until it ends, downloads the ``.l2`` file, decodes it and
prints the true ratio (measured file bytes) and the accuracy before and after.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from api.auth import create_key
from compression_core import zoo
from compression_core.coding import load_l2
from store.db import get_session_factory
from store.settings import get_settings

# Quick enough to watch (tens of seconds on a laptop CPU), slow enough to see the phases go by.
DEMO_OPTIONS = {"rounds": 2, "transform_iters": 60, "weight_iters": 60}
CALIBRATION_SAMPLES = 512


def _say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def wait_until_ready(client: httpx.Client, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the API at {client.base_url} did not answer within {timeout_s:.0f} s")
        time.sleep(0.25)


def _check(response: httpx.Response) -> dict:
    if response.status_code >= 400:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path} → {response.status_code}: "
            f"{response.text[:500]}"
        )
    return response.json()


def api_key_for_demo(settings) -> str | None:
    """With authentication on, the demo issues itself a key for tenant ``demo`` (it runs by the server)."""
    if not settings.auth_enabled:
        return None
    with get_session_factory()() as session:
        return create_key(session, "demo").key


def format_progress(job: dict) -> str:
    parts = [
        f"{job['state']:<9}",
        f"{job.get('phase') or '':<16}",
        f"{100 * (job.get('progress') or 0):5.1f} %",
    ]
    if job.get("eta_seconds") is not None:
        parts.append(f"ETA {job['eta_seconds']:5.0f} s")
    if job.get("estimated_ratio"):
        parts.append(f"est. ratio {job['estimated_ratio']:.2f}")
    losses = job.get("latest_losses") or {}
    if losses:
        parts.append(" ".join(f"{k}={v:.4g}" for k, v in losses.items() if isinstance(v, int | float)))
    return "  ".join(parts)


def run_demo(
    base_url: str,
    settings,
    *,
    target_ratio: float = 10.0,
    options: dict | None = None,
    poll_s: float = 1.0,
    timeout_s: float = 1800.0,
) -> int:
    # One line per poll from httpx and from uvicorn's access log would bury the demo's own lines; both are
    # quiet from here on (errors still show).
    for name in ("httpx", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
    headers = {}
    key = api_key_for_demo(settings)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    with (
        httpx.Client(base_url=base_url, headers=headers, timeout=60.0) as client,
        tempfile.TemporaryDirectory(prefix="l2-demo-") as tmp,
    ):
        wait_until_ready(client)
        _say("training a small CNN on scikit-learn's handwritten digits ...")
        started = time.monotonic()
        model, split = zoo.train_digits_cnn(seed=0)
        fp32_accuracy = zoo.accuracy(model, split.test_x, split.test_y)
        n_params = sum(p.numel() for p in model.parameters())
        _say(
            f"trained in {time.monotonic() - started:.1f} s: {n_params} parameters, "
            f"test accuracy {100 * fp32_accuracy:.2f} %"
        )

        folder = Path(tmp)
        torch.save(model.state_dict(), folder / "digits_cnn.pt")
        torch.save(split.train_x[:CALIBRATION_SAMPLES].clone(), folder / "calibration.pt")
        torch.save({"images": split.test_x.clone(), "labels": split.test_y.clone()}, folder / "heldout.pt")

        checkpoint = _check(
            client.post(
                "/v1/checkpoints",
                params={"filename": "digits_cnn.pt"},
                content=(folder / "digits_cnn.pt").read_bytes(),
            )
        )
        calibration = _check(
            client.post(
                "/v1/datasets/upload",
                params={
                    "filename": "calibration.pt",
                    "name": "digits calibration",
                    "spec": json.dumps({"kind": "tensors"}),
                },
                content=(folder / "calibration.pt").read_bytes(),
            )
        )
        heldout = _check(
            client.post(
                "/v1/datasets/upload",
                params={
                    "filename": "heldout.pt",
                    "name": "digits test set",
                    "spec": json.dumps({"kind": "tensors", "labels_key": "labels"}),
                },
                content=(folder / "heldout.pt").read_bytes(),
            )
        )
        _say(
            f"uploaded checkpoint {checkpoint['id']}, calibration {calibration['id']} "
            f"({CALIBRATION_SAMPLES} unlabelled images), eval set {heldout['id']}"
        )

        job = _check(
            client.post(
                "/v1/jobs",
                json={
                    "checkpoint_id": checkpoint["id"],
                    "dataset_id": calibration["id"],
                    "eval_dataset_id": heldout["id"],
                    "architecture": "digits_cnn",
                    "target_ratio": target_ratio,
                    "options": options or DEMO_OPTIONS,
                    "device": "cpu",
                },
            )
        )
        _say(f"submitted job {job['id']} (target ratio {target_ratio:g}); web page: {base_url}/ui/jobs/{job['id']}")

        job = follow(client, job["id"], poll_s=poll_s, timeout_s=timeout_s)
        if job["state"] != "succeeded":
            _say(f"job ended {job['state']}: {job.get('error')}")
            return 1

        response = client.get(f"/v1/jobs/{job['id']}/artifact")
        response.raise_for_status()
        artifact = folder / "digits_cnn.l2"
        artifact.write_bytes(response.content)
        decoded = zoo.DigitsCNN()
        decoded.load_state_dict(load_l2(artifact))
        accuracy = zoo.accuracy(decoded, split.test_x, split.test_y)
        original = job["original_bytes"]
        size = artifact.stat().st_size
        _say(f"artifact: {size} bytes (fp32 tensors: {original} bytes)")
        _say(f"true ratio {original / size:.2f}x (target {target_ratio:g}x)")
        _say(f"test accuracy: fp32 {100 * fp32_accuracy:.2f} %  →  decoded .l2 {100 * accuracy:.2f} %")
        _say(f"per-layer report: {base_url}/v1/jobs/{job['id']}/layers   (API docs: {base_url}/docs)")
        return 0


def follow(client: httpx.Client, job_id: str, *, poll_s: float = 1.0, timeout_s: float = 1800.0) -> dict:
    """Poll the job and print a line whenever what it shows changes; returns the final job."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        job = _check(client.get(f"/v1/jobs/{job_id}"))
        line = format_progress(job)
        if line != last:
            print(f"  {line}", flush=True)
            last = line
        if job["state"] in ("succeeded", "failed", "canceled"):
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} did not finish within {timeout_s:.0f} s")
        time.sleep(poll_s)


if __name__ == "__main__":  # python -m worker.demo http://127.0.0.1:8000
    sys.exit(run_demo(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000", get_settings()))
