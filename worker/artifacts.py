"""Where a job's artifact lives and how it gets there without ever being seen half-written.

The final name ``<data_dir>/artifacts/<tenant>/<job>.l2`` only ever appears through ``os.replace`` of a fully
written and fsynced temporary file in the same folder (same filesystem, so the rename is atomic). Temporary
files are named ``.<job>.l2.<attempt>.tmp``, so a new attempt can remove what a killed one left behind.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def _safe_component(value) -> str:
    text = str(value)
    if not text or text in (".", "..") or "/" in text or "\\" in text or "\x00" in text:
        raise ValueError(f"{text!r} cannot be used as a path component")
    return text


class ArtifactPaths:
    def __init__(self, data_dir: str | Path, tenant_id, job_id) -> None:
        self.folder = Path(data_dir) / "artifacts" / _safe_component(tenant_id)
        self.job = _safe_component(job_id)
        self.final = self.folder / f"{self.job}.l2"

    def temp(self, attempt: int) -> Path:
        return self.folder / f".{self.job}.l2.{attempt}.tmp"

    def remove_temps(self) -> int:
        removed = 0
        if self.folder.is_dir():
            for path in self.folder.glob(f".{self.job}.l2.*.tmp"):
                path.unlink(missing_ok=True)
                removed += 1
        return removed


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def publish(temp: Path, final: Path) -> None:
    """Atomically move a finished temporary file to its final name (fsync file, rename, fsync folder)."""
    fsync_file(temp)
    os.replace(temp, final)
    fsync_dir(final.parent)
