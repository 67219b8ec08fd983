"""Helpers of the API tests (a module of its own so test files can import them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class TenantKey:
    name: str
    tenant_id: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


# -- helpers shared by the tests -----------------------------------------------------------------------------
def upload_checkpoint(client, tenant, data: bytes = b"checkpoint-bytes" * 100, filename: str = "model.pt"):
    return client.post(
        "/v1/checkpoints",
        params={"filename": filename},
        content=data,
        headers={**tenant.headers, "Content-Type": "application/octet-stream"},
    )


def upload_dataset(client, tenant, data: bytes = b"tensors" * 50, filename: str = "calib.npy", **params):
    return client.post(
        "/v1/datasets/upload",
        params={"filename": filename, **params},
        content=data,
        headers={**tenant.headers, "Content-Type": "application/octet-stream"},
    )


def submit_job(client, tenant, *, headers=None, **overrides):
    body = dict(overrides)
    if "checkpoint_id" not in body:
        body["checkpoint_id"] = upload_checkpoint(client, tenant).json()["id"]
    if "dataset_id" not in body:
        body["dataset_id"] = upload_dataset(client, tenant).json()["id"]
    body.setdefault("target_ratio", 10.0)
    return client.post("/v1/jobs", json=body, headers={**tenant.headers, **(headers or {})})


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def finish_job(db, data_dir: Path, job_id: str, content: bytes = bytes(range(256)) * 40) -> bytes:
    """Do what the worker does when a job succeeds: publish the artifact and record it on the row."""
    import hashlib
    from datetime import UTC, datetime, timedelta

    from store.models import Job, JobEvent, LayerResult

    job = db.get(Job, job_id)
    db.refresh(job)
    folder = data_dir / "artifacts" / job.tenant_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{job_id}.l2").write_bytes(content)
    now = datetime.now(UTC)
    job.state, job.phase, job.progress = "succeeded", "done", 1.0
    job.started_at, job.finished_at = now - timedelta(seconds=42), now
    job.artifact_path = f"artifacts/{job.tenant_id}/{job_id}.l2"
    job.artifact_bytes, job.artifact_sha256 = len(content), hashlib.sha256(content).hexdigest()
    job.original_bytes, job.true_ratio = len(content) * 10, 10.0
    job.evaluation = {"holdout": {"top1_agreement": 0.99}}
    db.add(
        LayerResult(
            job_id=job_id,
            position=0,
            name="conv.weight",
            shape=[8, 3, 3, 3],
            dtype="float32",
            numel=216,
            mode="coded",
            transform="prune_quant",
            params={"step": 0.01},
            levels=17,
            bit_width=4.1,
            entropy_bits=3.9,
            sparsity=0.5,
            bytes=110,
            original_bytes=864,
        )
    )
    db.add(JobEvent(job_id=job_id, state="succeeded", phase="done", message="done"))
    db.commit()
    return content


def set_state(db, job_id: str, state: str) -> None:
    from datetime import UTC, datetime

    from store.models import Job

    job = db.get(Job, job_id)
    db.refresh(job)
    job.state = state
    if state == "running":
        job.started_at, job.worker, job.attempts = datetime.now(UTC), "host:1", 1
    db.commit()
