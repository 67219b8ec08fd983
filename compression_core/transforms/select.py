"""Which state_dict entries are coded, with which transform kind, and which are stored exactly."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch

from compression_core.config import CompressionConfig


@dataclass(frozen=True)
class TensorPlan:
    """Decision for one state_dict entry: ``kind`` is a transform kind, or None when stored exactly."""

    name: str
    kind: str | None
    learnable: bool  # True for parameters (latent weights tuned), False for buffers
    reason: str


def plan_tensor(name: str, tensor: torch.Tensor, is_parameter: bool, config: CompressionConfig) -> TensorPlan:
    """Weights (ndim ≥ 2) get the configured kind (overrides by name pattern, first match wins); other float
    parameters (biases, norm scales) get ``linear``; buffers (BN running statistics, counters) and tensors
    smaller than ``min_coded_numel`` are stored exactly because coding them does not pay."""
    if not tensor.is_floating_point():
        return TensorPlan(name, None, False, "integer tensor")
    if not is_parameter:
        return TensorPlan(name, None, False, "buffer (e.g. BatchNorm running statistics)")
    if tensor.numel() < config.min_coded_numel:
        return TensorPlan(name, None, False, f"fewer than {config.min_coded_numel} elements")
    for pattern, kind in config.transform_overrides:
        if fnmatch.fnmatchcase(name, pattern):
            return TensorPlan(name, kind, True, f"override {pattern!r}")
    if tensor.dim() >= 2:
        return TensorPlan(name, config.transform, True, "weight")
    return TensorPlan(name, "linear", True, "bias or norm parameter")
