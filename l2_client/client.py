"""`Client` (uploads, datasets, job submission) and `Job` (a long-running operation: refresh, wait with
progress, cancel, per-layer results, events, download that resumes and verifies its SHA-256)."""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from l2_client.errors import ChecksumMismatch, ConnectionFailed, JobFailed, L2Error, WaitTimeout, error_from_response
from l2_client.models import Checkpoint, Dataset, JobEvent, JobInfo, LayerResult
from l2_client.progress import ProgressBar
from l2_client.transport import Transport
from l2_client.tus import CHUNK_BYTES, ResumableUpload

DEFAULT_URL = "http://127.0.0.1:8000"
RESUMABLE_THRESHOLD = 64 * 1024**2  # bytes: above this, uploads go through tus (resumable)
DOWNLOAD_BLOCK = 1024**2


def _id(value: Any) -> str:
    return value if isinstance(value, str) else value.id


class Client:
    """``Client(url, api_key)``; either falls back to ``L2_URL`` / ``L2_API_KEY`` (the key may be absent when
    the server runs without authentication, e.g. the embedded default on localhost)."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 5,
        resumable_threshold: int = RESUMABLE_THRESHOLD,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self.url = (url or os.environ.get("L2_URL") or DEFAULT_URL).rstrip("/")
        self.api_key = api_key or os.environ.get("L2_API_KEY") or None
        self.transport = Transport(self.url, self.api_key, timeout=timeout, max_retries=max_retries)
        self.resumable_threshold, self.chunk_bytes = resumable_threshold, chunk_bytes

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.transport.close()

    def _json(self, method: str, path: str, **kwargs) -> Any:
        return self.transport.request(method, path, **kwargs).json()

    # -- uploads --
    def _upload(self, path: Path, kind: str, plain_path: str, params: dict, name=None, spec=None) -> dict:
        size = path.stat().st_size
        if size > self.resumable_threshold:
            upload = ResumableUpload(
                self.transport, path, kind=kind, name=name, spec=spec, chunk_bytes=self.chunk_bytes
            )
            return self._json("GET", upload.upload())

        def body():
            return path.read_bytes()

        headers = {"Content-Type": "application/octet-stream"}
        return self._json("POST", plain_path, params=params, body=body, headers=headers)

    def upload_checkpoint(self, path: str | os.PathLike) -> Checkpoint:
        """Upload a model file (.pt, .pth, .safetensors, .pt2, ...); files above ``resumable_threshold`` bytes
        go through the resumable (tus) path and survive dropped connections."""
        path = Path(path)
        return Checkpoint.model_validate(self._upload(path, "checkpoint", "/v1/checkpoints", {"filename": path.name}))

    def upload_dataset(self, path: str | os.PathLike, spec: dict | None = None, *, name: str | None = None) -> Dataset:
        """Upload calibration or evaluation data (an image archive or a tensor file); ``spec`` holds the
        calibration settings, e.g. ``{"kind": "tensors"}`` or ``{"kind": "images", "crop": 224}``."""
        path = Path(path)
        params = {"filename": path.name, **({"name": name} if name else {})}
        if spec:
            params["spec"] = json.dumps(spec)
        return Dataset.model_validate(
            self._upload(path, "dataset", "/v1/datasets/upload", params, name=name, spec=spec)
        )

    def register_dataset(self, server_path: str, spec: dict | None = None, *, name: str | None = None) -> Dataset:
        """Register data already on the server (inside its allowed data roots) by its absolute path."""
        body = {"name": name or Path(server_path).name, "path": server_path, "spec": spec or {}}
        return Dataset.model_validate(self._json("POST", "/v1/datasets", json=body))

    def checkpoint(self, checkpoint_id: str) -> Checkpoint:
        return Checkpoint.model_validate(self._json("GET", f"/v1/checkpoints/{checkpoint_id}"))

    def dataset(self, dataset_id: str) -> Dataset:
        return Dataset.model_validate(self._json("GET", f"/v1/datasets/{dataset_id}"))

    # -- jobs --
    def submit(
        self,
        checkpoint: Checkpoint | str,
        dataset: Dataset | str,
        target_ratio: float,
        *,
        architecture: str | None = None,
        arch_kwargs: dict | None = None,
        preset: str | None = None,
        options: dict | None = None,
        eval_dataset: Dataset | str | None = None,
        device: str = "auto",
        idempotency_key: str | None = None,
    ) -> Job:
        """Submit a compression job. An Idempotency-Key (a fresh UUID unless given) goes with it, so the
        retries after a lost response return the same job instead of creating a second one."""
        body: dict[str, Any] = {
            "checkpoint_id": _id(checkpoint),
            "dataset_id": _id(dataset),
            "target_ratio": target_ratio,
            "device": device,
        }
        if eval_dataset is not None:
            body["eval_dataset_id"] = _id(eval_dataset)
        if architecture:
            body["architecture"] = architecture
        if arch_kwargs:
            body["arch_kwargs"] = arch_kwargs
        if preset:
            body["preset"] = preset
        if options:
            body["options"] = options
        key = idempotency_key or str(uuid.uuid4())
        info = self._json("POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key})
        return Job(self, JobInfo.model_validate(info))

    def job(self, job_id: str) -> Job:
        return Job(self, JobInfo.model_validate(self._json("GET", f"/v1/jobs/{job_id}")))

    def jobs(self, *, state: str | None = None, limit: int = 50, offset: int = 0) -> list[Job]:
        params = {"limit": limit, "offset": offset, **({"state": state} if state else {})}
        page = self._json("GET", "/v1/jobs", params=params)
        return [Job(self, JobInfo.model_validate(j)) for j in page["data"]]


class Job:
    """A submitted job. ``info`` is the last state read from the server (`refresh` reads it again)."""

    def __init__(self, client: Client, info: JobInfo) -> None:
        self.client, self.info = client, info

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def state(self) -> str:
        return self.info.state

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, state={self.state!r}, phase={self.info.phase!r})"

    def refresh(self) -> Job:
        self.info = JobInfo.model_validate(self.client._json("GET", f"/v1/jobs/{self.id}"))
        return self

    def wait(
        self,
        timeout: float | None = None,
        *,
        progress: bool = True,
        poll_interval: float = 1.0,
        raise_on_failure: bool = True,
        on_update: Callable[[JobInfo], None] | None = None,
    ) -> Job:
        """Poll until the job finishes (a progress bar with phase and ETA on stderr when ``progress``).
        Raises `JobFailed` when it failed or was canceled (unless ``raise_on_failure`` is False) and
        `WaitTimeout` after ``timeout`` seconds (the job goes on running)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = ProgressBar(f"job {self.id[:8]}") if progress else None
        try:
            while True:
                self.refresh()
                if bar:
                    bar.update(self.info.progress, self.info.phase or self.state, self.info.eta_seconds)
                if on_update:
                    on_update(self.info)
                if self.info.done:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeout(
                        f"job {self.id} is still {self.state} ({self.info.phase}, "
                        f"{100 * self.info.progress:.0f} %) after {timeout:g} s"
                    )
                time.sleep(poll_interval)
        finally:
            if bar:
                bar.close(f"job {self.id} {self.state}")
        if raise_on_failure and self.state != "succeeded":
            raise JobFailed(self.id, self.state, self.info.error)
        return self

    def cancel(self) -> Job:
        self.info = JobInfo.model_validate(self.client._json("POST", f"/v1/jobs/{self.id}/cancel"))
        return self

    def layers(self) -> list[LayerResult]:
        data = self.client._json("GET", f"/v1/jobs/{self.id}/layers")["data"]
        return [LayerResult.model_validate(r) for r in data]

    def events(self) -> list[JobEvent]:
        data = self.client._json("GET", f"/v1/jobs/{self.id}/events")["data"]
        return [JobEvent.model_validate(e) for e in data]

    def download(self, path: str | os.PathLike, *, max_resumes: int = 10) -> Path:
        """Stream the .l2 artifact to ``path``. A broken transfer resumes where it stopped (HTTP Range, with
        If-Range so a changed file restarts); the result must match the job's SHA-256 or `ChecksumMismatch`
        is raised and nothing is left at ``path``."""
        if self.info.artifact is None:
            self.refresh()
        # Without an artifact the server's 409 (job not succeeded) or 410 (file gone) says why.
        expected = self.info.artifact.sha256 if self.info.artifact else None
        path = Path(path)
        part = path.with_name(path.name + ".part")
        part.unlink(missing_ok=True)
        resumes = 0
        while True:
            try:
                self._fetch(part, expected)
                break
            except httpx.TransportError as exc:
                resumes += 1
                if resumes > max_resumes:
                    raise ConnectionFailed(f"download of job {self.id} failed {resumes} times: {exc}") from exc
                time.sleep(self.client.transport.delay(min(resumes, 5)))
        digest = hashlib.sha256()
        with open(part, "rb") as f:
            while block := f.read(DOWNLOAD_BLOCK):
                digest.update(block)
        if expected is None:
            part.unlink(missing_ok=True)
            raise L2Error(f"job {self.id} has no recorded SHA-256 to verify its artifact against")
        if digest.hexdigest() != expected:
            part.unlink(missing_ok=True)
            raise ChecksumMismatch(
                f"downloaded artifact of job {self.id} has SHA-256 {digest.hexdigest()}, expected {expected}"
            )
        os.replace(part, path)
        return path

    def _fetch(self, part: Path, etag: str | None) -> None:
        have = part.stat().st_size if part.exists() else 0
        headers = {}
        if have:
            headers["Range"] = f"bytes={have}-"
            if etag:
                headers["If-Range"] = f'"{etag}"'
        with self.client.transport.stream("GET", f"/v1/jobs/{self.id}/artifact", headers=headers) as response:
            if response.status_code >= 400 and response.status_code != 416:
                response.read()
                raise error_from_response(response)
            if response.status_code == 416:  # already complete
                return
            mode = "ab" if response.status_code == 206 else "wb"
            with open(part, mode) as out:
                for block in response.iter_bytes(DOWNLOAD_BLOCK):
                    out.write(block)
