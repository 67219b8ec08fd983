"""BatchNorm running statistics coded at the precision their layer's scale and shift were given.

Stored as fp32 they are 7 % of EfficientNet-Lite0's file at 8× (42 k floats); every value is unique, so
coding them needs a step. Eval-mode BN computes ``y = γ (x − μ) / σ + β`` with ``σ = √(var + eps)``, so an
error Δμ in channel c moves the output by ``γ_c Δμ / σ_c`` — exactly what an error in β does — and an
error in ``log var`` moves it by ``γ_c x̂ Δ(log var) / 2`` (x̂ of unit variance), what an error Δγ = γ Δ(log
var) / 2 does. The steps are therefore tied to the steps the allocation chose for that layer's β and γ:

- ``running_mean``: ``linear`` with step ``s_β / rms(γ / σ)`` (the same output error as β's),
- ``running_var``: ``log`` (uniform in log var, sign-free values ≥ 0) with step ``2 s_γ / rms(γ)``,

both times ``precision`` (< 1 spends more bits on the statistics than the layer's own β and γ get). The
steps follow β and γ when the ratio controller rescales them, and the decoder needs nothing new: they are
ordinary coded tensors of kinds it already knows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from compression_core.records import ArtifactContents, CodedTensor

# The levels of one statistic never exceed this (≤ 12 bits a value): a layer whose β step is tiny must not
# spend more on its statistics than fp32 would.
MAX_STATISTIC_LEVELS = 4096
# Bytes a coded statistic costs before the ratio controller measures it (values + its share of the table):
# what the budget reserves for them instead of 4.
ESTIMATED_BYTES_PER_VALUE = 1.25
# Smallest variance representable apart from 0 is ``a · expm1(s)``; ``a`` sits this far below the smallest
# positive variance, so the smallest ones keep nearly the relative precision of the largest.
_LOG_OFFSET_DIVISOR = 8.0


@dataclass(frozen=True)
class StatisticPlan:
    """How one running statistic is coded: ``kind`` ("linear" for the mean, "log" for the variance), the
    coded parameter (β or γ) whose step sets its precision, and ``ratio`` = its step / that step."""

    name: str
    kind: str
    anchor: str
    ratio: float


def plan_statistics(model: nn.Module, coded_vectors: set[str], precision: float) -> dict[str, StatisticPlan]:
    """Plans for every BN layer with running statistics whose γ and β are both coded vectors."""
    plans: dict[str, StatisticPlan] = {}
    for prefix, module in model.named_modules():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm) or not module.track_running_stats:
            continue
        if module.running_var is None or not module.affine:
            continue
        dot = f"{prefix}." if prefix else ""
        gamma_name, beta_name = f"{dot}weight", f"{dot}bias"
        if gamma_name not in coded_vectors or beta_name not in coded_vectors:
            continue
        gamma = module.weight.detach().double()
        sigma = torch.sqrt(module.running_var.detach().double() + module.eps)
        gain = _rms(gamma / sigma)
        scale = _rms(gamma)
        plans[f"{dot}running_mean"] = StatisticPlan(f"{dot}running_mean", "linear", beta_name, precision / gain)
        plans[f"{dot}running_var"] = StatisticPlan(f"{dot}running_var", "log", gamma_name, 2 * precision / scale)
    return plans


def code_statistics(
    contents: ArtifactContents,
    plans: dict[str, StatisticPlan],
    values: dict[str, torch.Tensor],
    coarsen: float = 1.0,
) -> ArtifactContents:
    """The same contents with each planned statistic coded from ``values`` at the step its anchor record
    (already in ``contents``) implies, times ``coarsen``."""
    anchors = {r.name: r for r in contents.records if isinstance(r, CodedTensor)}
    records = []
    for record in contents.records:
        plan = plans.get(record.name)
        if plan is not None and plan.anchor in anchors:
            step = coarsen * plan.ratio * _rms_step(anchors[plan.anchor])
            record = _coded(plan, record, values[record.name], step)
        records.append(record)
    return ArtifactContents(records=records, metadata=contents.metadata)


def _coded(plan: StatisticPlan, record, value: torch.Tensor, step: float) -> CodedTensor:
    shape = tuple(record.shape)
    dtype = record.dtype
    v = value.detach().cpu().double().reshape(-1).numpy()
    if plan.kind == "linear":
        step = max(step, _span(v) / (MAX_STATISTIC_LEVELS - 1), np.finfo(np.float32).tiny)
        s = np.float32(step)
        symbols = np.rint(v / np.float64(s))
        params = {"s": np.asarray(s, dtype=np.float32)}
    else:
        v = np.maximum(v, 0.0)
        positive = v[v > 0]
        a = np.float32(positive.min() / _LOG_OFFSET_DIVISOR if positive.size else 1.0)
        a = max(a, np.finfo(np.float32).tiny)
        top = math.log1p(float(v.max()) / np.float64(a)) if v.size else 0.0
        s = np.float32(max(step, top / (MAX_STATISTIC_LEVELS - 1), 1e-12))
        symbols = np.rint(np.log1p(v / np.float64(a)) / np.float64(s))
        symbols = np.where(v > 0, np.maximum(symbols, 1), 0)  # a positive variance never decodes to 0
        params = {"a": np.asarray(a, dtype=np.float32), "s": np.asarray(s, dtype=np.float32)}
    return CodedTensor(plan.name, shape, dtype, plan.kind, params, symbols.astype(np.int32))


def _rms(t: torch.Tensor) -> float:
    value = float(torch.sqrt(torch.mean(t * t))) if t.numel() else 0.0
    return value if value > 0 and math.isfinite(value) else 1.0


def _rms_step(record: CodedTensor) -> float:
    step = np.asarray(record.params["s"], dtype=np.float64)
    return float(np.sqrt(np.mean(step * step)))


def _span(v: np.ndarray) -> float:
    return float(v.max() - v.min()) if v.size else 0.0
