"""Screenshots of the web UI's four pages after real digits-CNN jobs: ``docs/ui/{jobs,new_job,job,compare}.png``.

Runs ``l2 serve`` as ``make serve`` does (the embedded SQLite database and broker, the API and one Celery worker,
authentication off on 127.0.0.1, so the pages carry the banner that says so), trains the digits CNN (kept for
the next run), uploads it with its calibration and labelled held-out data, and submits a few jobs at different
target ratios (one with a longer schedule, so its page has loss curves). Then headless chromium photographs the
pages at 1280 px wide.

    .venv/bin/python scripts/ui_screenshots.py             # about 3-6 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "ui"
WATCHED_OPTIONS = {"rounds": 1, "transform_iters": 60, "weight_iters": 60}
QUICK_OPTIONS = {"rounds": 0}
RATIOS = (6, 14, 20)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(env: dict, logs: Path) -> subprocess.Popen:
    """``l2 serve`` exactly as ``make serve`` runs it (API + one worker, schema migrated at start-up)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from compression_core.cli import main; sys.exit(main())", "serve"],
        env=env,
        cwd=ROOT,
        stdout=open(logs / "serve.log", "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{env['L2_API_PORT']}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError("l2 serve did not become ready:\n" + (logs / "serve.log").read_text()[-3000:])


def prepare_files(folder: Path) -> dict[str, Path]:
    """The trained digits CNN and its data in ``folder``; kept there, so a second run skips the training."""
    import torch

    from compression_core import zoo

    folder.mkdir(parents=True, exist_ok=True)
    files = {"checkpoint": folder / "digits_cnn.pt", "calib": folder / "calib.pt", "heldout": folder / "heldout.pt"}
    if all(path.is_file() for path in files.values()):
        return files
    model, split = zoo.train_digits_cnn(seed=0, epochs=8)
    torch.save(model.state_dict(), files["checkpoint"])
    torch.save(split.train_x[:512].clone(), files["calib"])
    torch.save({"images": split.test_x.clone(), "labels": split.test_y.clone()}, files["heldout"])
    return files


def upload(client: httpx.Client, files: dict[str, Path]) -> dict[str, str]:
    def post(path, params, file):
        response = client.post(path, params=params, content=file.read_bytes())
        response.raise_for_status()
        return response.json()["id"]

    return {
        "checkpoint_id": post("/v1/checkpoints", {"filename": "digits_cnn.pt"}, files["checkpoint"]),
        "dataset_id": post(
            "/v1/datasets/upload",
            {"filename": "calib.pt", "name": "digits calibration (512)", "spec": json.dumps({"kind": "tensors"})},
            files["calib"],
        ),
        "eval_dataset_id": post(
            "/v1/datasets/upload",
            {
                "filename": "heldout.pt",
                "name": "digits held-out (labelled)",
                "spec": json.dumps({"kind": "tensors", "labels_key": "labels"}),
            },
            files["heldout"],
        ),
    }


def submit(client: httpx.Client, ids: dict, ratio: float, options: dict) -> str:
    body = {**ids, "architecture": "digits_cnn", "target_ratio": ratio, "device": "cpu", "options": options}
    response = client.post("/v1/jobs", json=body)
    response.raise_for_status()
    return response.json()["id"]


def wait_all(client: httpx.Client, job_ids: list[str], timeout_s: float = 1200) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        states = [client.get(f"/v1/jobs/{j}").json()["state"] for j in job_ids]
        if all(s in ("succeeded", "failed", "canceled") for s in states):
            return
        time.sleep(2)
    raise TimeoutError(f"jobs still unfinished: {states}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--files",
        type=Path,
        default=Path(tempfile.gettempdir()) / "l2-ui-screenshots-model",
        help="where the trained model and data are kept between runs",
    )
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    folder = Path(tempfile.mkdtemp(prefix="l2-ui-shots-"))
    (folder / "data").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("L2_")}
    env.update(
        {
            "L2_DATA_DIR": str(folder / "data"),
            "L2_AUTH_ENABLED": "false",
            "L2_API_PORT": str(free_port()),
            "L2_PROGRESS_MIN_INTERVAL_S": "0.3",
            "PYTHONUNBUFFERED": "1",
        }
    )
    files = prepare_files(args.files)
    server = serve(env, folder)
    base = f"http://127.0.0.1:{env['L2_API_PORT']}"
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        with httpx.Client(base_url=base, timeout=120) as client, sync_playwright() as playwright:
            ids = upload(client, files)
            quick = [submit(client, ids, ratio, QUICK_OPTIONS) for ratio in RATIOS]
            watched = submit(client, ids, 10, WATCHED_OPTIONS)
            browser = playwright.chromium.launch(
                executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
            )
            page = browser.new_page(viewport={"width": 1280, "height": 900}, base_url=base)
            page.set_default_timeout(300_000)  # a busy 2-core machine serves the 4.8 MB plotly bundle slowly
            wait_all(client, [*quick, watched])
            page.goto(f"/ui/jobs/{watched}")
            page.wait_for_selector("#chart-bits .trace.bars .point")
            page.screenshot(path=str(args.out / "job.png"), full_page=True)
            page.goto("/ui")
            page.screenshot(path=str(args.out / "jobs.png"), full_page=True)
            page.goto(f"/ui/new?checkpoint={ids['checkpoint_id']}")
            page.fill("#architecture", "digits_cnn")
            page.screenshot(path=str(args.out / "new_job.png"), full_page=True)
            page.goto("/ui/compare")
            page.wait_for_selector("#chart-compare .scatterlayer .point")
            page.screenshot(path=str(args.out / "compare.png"), full_page=True)
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # l2 serve stops its worker too
        server.wait(timeout=120)
    print(f"wrote {', '.join(sorted(p.name for p in args.out.glob('*.png')))} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
