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

Four vectors describe a function of two (eval-mode BN is ``a·x + b``), so the statistics need not be precise
at all: `snap_statistics` moves them onto a coarse fixed grid before anything is rounded and gives γ and β the
difference (``γ' = γ σ̂ / σ``, ``β' = β + γ (μ̂ − μ) / σ``: the same function). Their coding then costs
a few bits a value and adds no output error; only β and γ carry the layer's precision. Statistics the
BatchNorm stage later moves off the grid are put back on it the same way when coded, the difference folded into
the coded γ and β (rounded again at their own steps), so the file keeps its size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from compression_core.records import ArtifactContents, CodedTensor
from compression_core.transforms.levels import inverse_values

# The levels of one statistic never exceed this (≤ 12 bits a value): a layer whose β step is tiny must not
# spend more on its statistics than fp32 would.
MAX_STATISTIC_LEVELS = 4096
# Bytes a coded statistic costs before the ratio controller measures it (values + its share of the table):
# what the budget reserves for them instead of 4.
ESTIMATED_BYTES_PER_VALUE = 1.25
# Smallest variance representable apart from 0 is ``a · expm1(s)``; ``a`` sits this far below the smallest
# positive variance, so the smallest ones keep nearly the relative precision of the largest.
_LOG_OFFSET_DIVISOR = 8.0
# How much wider a γ or β may get when it absorbs statistics moved off their grid (else they are coded as before).
_MAX_SPAN_GROWTH = 4


@dataclass(frozen=True)
class StatisticPlan:
    """How one running statistic is coded: ``kind`` ("linear" for the mean, "log" for the variance), the
    coded parameter (β or γ) whose step sets its precision, and ``ratio`` = its step / that step."""

    name: str
    kind: str
    anchor: str
    ratio: float
    # The fixed grid's parameters (``s``, and ``a`` for "log") once `snap_statistics` has put the values on it.
    grid: dict[str, np.ndarray] | None = None
    eps: float = 1e-5  # the layer's own, for σ = √(var + eps)


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
        mean_name, var_name, eps = f"{dot}running_mean", f"{dot}running_var", float(module.eps)
        plans[mean_name] = StatisticPlan(mean_name, "linear", beta_name, precision / gain, eps=eps)
        plans[var_name] = StatisticPlan(var_name, "log", gamma_name, 2 * precision / scale, eps=eps)
    return plans


@torch.no_grad()
def snap_statistics(model: nn.Module, plans: dict[str, StatisticPlan], grid: float) -> dict[str, StatisticPlan]:
    """Put every planned layer's running statistics on a fixed grid, in place, and fold what moved into its γ
    and β so that eval-mode outputs do not change; the plans, each with its grid. ``grid`` is the step of
    ``log var`` (σ within a factor e^(grid/4)) and, times the layer's RMS σ, of the mean."""
    snapped = dict(plans)
    for prefix, module in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        mean_plan, var_plan = plans.get(f"{dot}running_mean"), plans.get(f"{dot}running_var")
        if mean_plan is None or var_plan is None:
            continue
        mean, var = _numpy(module.running_mean), np.maximum(_numpy(module.running_var), 0.0)
        sigma = np.sqrt(var + module.eps)
        mean_plan = replace(mean_plan, grid=_linear_grid(mean, grid * _rms(torch.from_numpy(sigma))))
        var_plan = replace(var_plan, grid=_log_grid(var, grid))
        snapped_mean = _grid_values(mean_plan, _grid_symbols(mean_plan, mean))
        snapped_var = _grid_values(var_plan, _grid_symbols(var_plan, var))
        gamma, beta = _absorbed(
            _numpy(module.weight), _numpy(module.bias), mean, var, snapped_mean, snapped_var, module.eps
        )
        new_values = ((module.weight, gamma), (module.bias, beta))
        for tensor, value in (*new_values, (module.running_mean, snapped_mean), (module.running_var, snapped_var)):
            tensor.copy_(torch.from_numpy(value).to(tensor.device, tensor.dtype))
        snapped[mean_plan.name], snapped[var_plan.name] = mean_plan, var_plan
    return snapped


def _absorbed(gamma, beta, mean, var, snapped_mean, snapped_var, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """γ' and β' that keep ``γ (x − μ) / σ + β`` with the snapped statistics: ``γ σ̂ / σ``, ``β + γ (μ̂ − μ) / σ``."""
    sigma = np.sqrt(var + eps)
    return gamma * np.sqrt(snapped_var + eps) / sigma, beta + gamma * (snapped_mean - mean) / sigma


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().reshape(-1).numpy()


def code_statistics(
    contents: ArtifactContents,
    plans: dict[str, StatisticPlan],
    values: dict[str, torch.Tensor],
    coarsen: float = 1.0,
) -> ArtifactContents:
    """The same contents with each planned statistic coded from ``values``: on its snapped grid where it has
    one (a layer whose ``values`` left the grid is put back on it, its coded γ and β taking the difference),
    else at the step its anchor record (already in ``contents``) implies, times ``coarsen``."""
    by_name = {r.name: r for r in contents.records}
    regridded: dict[str, CodedTensor] = {}
    for mean_plan in plans.values():
        var_plan = plans.get(mean_plan.name.removesuffix("running_mean") + "running_var")
        if mean_plan.kind == "linear" and mean_plan.grid is not None and var_plan is not None:
            regridded.update(_regridded_layer(by_name, mean_plan, var_plan, values) or {})
    anchors = {r.name: r for r in contents.records if isinstance(r, CodedTensor)}
    records = []
    for record in contents.records:
        plan = plans.get(record.name)
        if record.name in regridded:
            record = regridded[record.name]
        elif plan is not None and plan.anchor in anchors:  # no grid, or a layer γ and β could not absorb
            step = coarsen * plan.ratio * _rms_step(anchors[plan.anchor])
            record = _coded(plan, record, values[record.name], step)
        records.append(record)
    return ArtifactContents(records=records, metadata=contents.metadata)


def _regridded_layer(
    records: dict, mean_plan: StatisticPlan, var_plan: StatisticPlan, values: dict[str, torch.Tensor]
) -> dict[str, CodedTensor]:
    """One layer's statistics coded on their grids; where ``values`` lie off them, also its γ and β records
    re-rounded (at their own steps) to keep the function the off-grid statistics gave. None when γ and β cannot
    take it within a few times their own range (e.g. a re-estimated variance near 0 makes γ(μ̂ − μ)/σ explode):
    the statistics are then coded at their anchors' steps."""
    mean, var = _numpy(values[mean_plan.name]), np.maximum(_numpy(values[var_plan.name]), 0.0)
    mean_symbols, var_symbols = _grid_symbols(mean_plan, mean), _grid_symbols(var_plan, var)
    snapped_mean, snapped_var = _grid_values(mean_plan, mean_symbols), _grid_values(var_plan, var_symbols)
    out = {
        plan.name: _grid_coded(plan, records[plan.name], symbols)
        for plan, symbols in ((mean_plan, mean_symbols), (var_plan, var_symbols))
    }
    gamma_record, beta_record = records[var_plan.anchor], records[mean_plan.anchor]
    moved = not (np.array_equal(snapped_mean, mean) and np.array_equal(snapped_var, var))
    if moved:
        gamma, beta = _absorbed(
            _decoded(gamma_record), _decoded(beta_record), mean, var, snapped_mean, snapped_var, mean_plan.eps
        )
        for record, value in ((gamma_record, gamma), (beta_record, beta)):
            rerounded = _rerounded(record, value)
            if rerounded is None:
                return None
            out[record.name] = rerounded
    return out


def _decoded(record: CodedTensor) -> np.ndarray:
    return inverse_values(record.kind, record.params, record.symbols).astype(np.float64).reshape(-1)


def _rerounded(record: CodedTensor, value: np.ndarray) -> CodedTensor:
    """``record`` (a "linear" vector) holding ``value`` at its own step; None when ``value`` is not finite or
    would span more than `_MAX_SPAN_GROWTH` times the record's levels."""
    symbols = np.rint(value / np.asarray(record.params["s"], dtype=np.float32).astype(np.float64))
    old_span = int(record.symbols.max() - record.symbols.min()) + 1 if record.symbols.size else 1
    if not np.isfinite(symbols).all():
        return None
    if symbols.size and symbols.max() - symbols.min() + 1 > _MAX_SPAN_GROWTH * old_span:
        return None
    return replace(record, symbols=symbols.astype(np.int32))


def _coded(plan: StatisticPlan, record, value: torch.Tensor, step: float) -> CodedTensor:
    v = _numpy(value)
    if plan.kind == "linear":
        grid = _linear_grid(v, step)
        symbols = _linear_symbols(v, grid)
    else:
        v = np.maximum(v, 0.0)
        grid = _log_grid(v, step)
        symbols = _log_symbols(v, grid)
    return CodedTensor(plan.name, tuple(record.shape), record.dtype, plan.kind, grid, symbols.astype(np.int32))


def _linear_grid(values: np.ndarray, step: float) -> dict[str, np.ndarray]:
    """The "linear" grid of step ``step``, widened to stay within `MAX_STATISTIC_LEVELS` levels."""
    step = max(step, _span(values) / (MAX_STATISTIC_LEVELS - 1), np.finfo(np.float32).tiny)
    return {"s": np.asarray(step, dtype=np.float32)}


def _log_grid(var: np.ndarray, step: float) -> dict[str, np.ndarray]:
    """The "log" grid for variances ``var`` (≥ 0): offset ``a`` below the smallest positive one, step ``step``
    widened to stay within `MAX_STATISTIC_LEVELS` levels."""
    positive = var[var > 0]
    a = np.float32(positive.min() / _LOG_OFFSET_DIVISOR if positive.size else 1.0)
    a = max(a, np.finfo(np.float32).tiny)
    top = math.log1p(float(var.max()) / np.float64(a)) if var.size else 0.0
    s = np.float32(max(step, top / (MAX_STATISTIC_LEVELS - 1), 1e-12))
    return {"a": np.asarray(a, dtype=np.float32), "s": np.asarray(s, dtype=np.float32)}


def _log_symbols(var: np.ndarray, grid: dict[str, np.ndarray]) -> np.ndarray:
    a, s = np.float64(grid["a"]), np.float64(grid["s"])
    symbols = np.rint(np.log1p(var / a) / s)
    return np.where(var > 0, np.maximum(symbols, 1), 0)  # a positive variance never decodes to 0


def _linear_symbols(values: np.ndarray, grid: dict[str, np.ndarray]) -> np.ndarray:
    return np.rint(values / np.float64(grid["s"]))


def _grid_symbols(plan: StatisticPlan, values: np.ndarray) -> np.ndarray:
    return (_log_symbols if plan.kind == "log" else _linear_symbols)(values, plan.grid)


def _grid_values(plan: StatisticPlan, symbols: np.ndarray) -> np.ndarray:
    """The values ``symbols`` stand for on the plan's grid, as the decoder will produce them."""
    return inverse_values(plan.kind, plan.grid, symbols).astype(np.float64)


def _grid_coded(plan: StatisticPlan, record, symbols: np.ndarray) -> CodedTensor:
    symbols = symbols.astype(np.int32)
    return CodedTensor(plan.name, tuple(record.shape), record.dtype, plan.kind, dict(plan.grid), symbols)


def _rms(t: torch.Tensor) -> float:
    value = float(torch.sqrt(torch.mean(t * t))) if t.numel() else 0.0
    return value if value > 0 and math.isfinite(value) else 1.0


def _rms_step(record: CodedTensor) -> float:
    step = np.asarray(record.params["s"], dtype=np.float64)
    return float(np.sqrt(np.mean(step * step)))


def _span(v: np.ndarray) -> float:
    return float(v.max() - v.min()) if v.size else 0.0
