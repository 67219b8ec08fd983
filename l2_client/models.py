"""What the service returns, as pydantic models. Unknown fields are kept (``extra="allow"``), so a newer
server that adds fields does not break an older client."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class Checkpoint(_Model):
    id: str
    filename: str
    size_bytes: int
    sha256: str
    created_at: datetime


class Dataset(_Model):
    id: str
    name: str
    source: str
    filename: str | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    spec: dict[str, Any] = {}
    created_at: datetime


class Artifact(_Model):
    url: str
    bytes: int | None = None
    sha256: str | None = None


class JobInfo(_Model):
    """A job as ``GET /v1/jobs/{id}`` shows it."""

    id: str
    state: str
    phase: str | None = None
    progress: float = 0.0
    eta_seconds: float | None = None
    target_ratio: float
    true_ratio: float | None = None
    estimated_ratio: float | None = None
    error: str | None = None
    evaluation: dict[str, Any] | None = None
    artifact: Artifact | None = None
    created_at: datetime

    @property
    def done(self) -> bool:
        return self.state in ("succeeded", "failed", "canceled")


class LayerResult(_Model):
    position: int
    name: str
    shape: list[int]
    numel: int
    mode: str
    transform: str | None = None
    bit_width: float | None = None
    sparsity: float | None = None
    bytes: int | None = None
    original_bytes: int | None = None


class JobEvent(_Model):
    id: str
    state: str
    phase: str | None = None
    message: str | None = None
    created_at: datetime
