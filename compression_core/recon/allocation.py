"""Where the optimization starts: how many bits each coded tensor gets before any learning.

``equal_bits`` gives every weight tensor the same bits per weight. ``equal_step`` gives every
weight the same quantization step Δ, chosen so that the hard entropy of ⌊w/Δ⌉ over all weight tensors spends
the budget: for equally sensitive weights, equal step = equal distortion per weight is the rate-distortion
optimum (reverse water-filling), and it is what a global quantization parameter does in NNCodec. Small,
large-valued tensors (depthwise convolutions) then start with many bits, big redundant ones with few; the
learned transforms move on from there. ``sensitivity`` (the default) does the same after scaling each tensor
by √h_t, its measured sensitivity (`sensitivity.py`): steps Δ_t ∝ 1/√h_t make every tensor's expected cost
h_t·Δ_t²/12 per weight equal, the optimum when weights differ in how much the outputs care. Biases and
norm scales (1-D, `linear`) start at a fixed fine resolution either way: they are few and sensitive.
"""

from __future__ import annotations

import math

import torch

ALLOCATIONS = ("sensitivity", "equal_step", "equal_bits")
VECTOR_BITS = 8.0
MIN_BITS = 0.25
_MAX_BITS = 16.0


def _entropy_bits_total(w: torch.Tensor, step: float) -> float:
    """n · H(⌊w/step⌉) in bits, from the hard histogram (exact, O(n))."""
    q = torch.round(w.reshape(-1).double() / step).clamp(-(2**30), 2**30).long()
    counts = torch.bincount(q - q.min()).double()
    counts = counts[counts > 0]
    p = counts / counts.sum()
    return float(-(counts * torch.log2(p)).sum())


def _equal_step_bits(
    weights: dict[str, torch.Tensor], budget_bits: float, scales: dict[str, float] | None = None
) -> dict[str, float]:
    """Per-tensor bits/weight at the common step (on w·scale) whose total entropy is closest to
    ``budget_bits``."""
    scales = scales or {}
    tensors = {k: w.detach().double() * scales.get(k, 1.0) for k, w in weights.items() if w.numel()}
    if not tensors:
        return {}
    scale = max(float(w.abs().max()) for w in tensors.values())
    if scale == 0.0:
        return dict.fromkeys(weights, MIN_BITS)
    lo, hi = math.log(scale * 2.0**-_MAX_BITS), math.log(scale * 4.0)  # fine enough … everything zero
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        total = sum(_entropy_bits_total(w, math.exp(mid)) for w in tensors.values())
        if total > budget_bits:
            lo = mid
        else:
            hi = mid
    step = math.exp(hi)
    return {
        k: min(_MAX_BITS, max(MIN_BITS, _entropy_bits_total(tensors[k], step) / w.numel()))
        if w.numel()
        else MIN_BITS
        for k, w in weights.items()
    }


def initial_bits(
    weights: dict[str, torch.Tensor],
    vectors: dict[str, torch.Tensor],
    budget_bits: float,
    allocation: str,
    min_uniform_bits: float,
    sensitivity: dict[str, float] | None = None,
) -> dict[str, float]:
    """Bits per weight to initialise each coded tensor with. ``weights`` are the tensors with learned
    allocation, ``vectors`` the 1-D linear-coded ones (fixed ``VECTOR_BITS``); ``sensitivity`` (h_t per
    weight tensor) is needed by the ``sensitivity`` allocation."""
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation={allocation!r}; one of {ALLOCATIONS}")
    bits = dict.fromkeys(vectors, VECTOR_BITS)
    left = budget_bits - VECTOR_BITS * sum(v.numel() for v in vectors.values())
    numel = sum(w.numel() for w in weights.values())
    if allocation == "equal_bits" or left <= 0 or numel == 0:
        uniform = max(min_uniform_bits, left / max(1, numel))
        bits.update(dict.fromkeys(weights, uniform))
        return bits
    scales = None
    if allocation == "sensitivity":
        if sensitivity is None:
            raise ValueError("the sensitivity allocation needs the per-tensor sensitivities")
        mean = sum(sensitivity.get(k, 0.0) for k in weights) / max(1, len(weights))
        scales = {k: (sensitivity.get(k, 0.0) / mean) ** 0.5 if mean > 0 else 1.0 for k in weights}
    bits.update(_equal_step_bits(weights, left, scales))
    return bits


def _channel_rows(w: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` as (C, rest) float64 rows and ``h`` broadcast to one value per row (per-tensor h → one row)."""
    h = torch.as_tensor(h, dtype=torch.float64).reshape(-1)
    if h.numel() == 1:
        return w.detach().double().reshape(1, -1), h
    return w.detach().double().reshape(h.numel(), -1), h


def sensitivity_steps(
    weights: dict[str, torch.Tensor],
    budget_bits: float,
    sensitivity: dict[str, torch.Tensor | float],
    channel_spread: float = 2.0,
    exponent: float = 0.5,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Uniform steps Δ_c = Δ · (h_c / h̄)^(−exponent) for every tensor (h scalar) or output channel (h of
    shape (C,)), with the one Δ whose hard entropy over all tensors spends ``budget_bits``. At exponent ½ every
    weight has the same expected cost h_c·Δ_c²/12 (reverse water-filling, the high-rate optimum when h is
    exact); a smaller exponent shrinks the spread of the steps towards one common step, for an h measured on a
    few batches and for rates of 1–3 bits where the high-rate model is loose. Returns the steps (scalar or
    (C,), float64) and the bits per weight they spend per tensor. Channels the outputs ignore (h_c = 0) get a
    step so coarse that they code as zeros.

    Per channel, the estimate (a few batches) is noisy and only local: a channel it calls unimportant still
    feeds a BatchNorm whose statistics assume its values, and zeroing it shifts that BN's output. So a
    channel's step stays within ``channel_spread`` of its tensor's (measured on EfficientNet-Lite0:
    unbounded per-channel steps wiped channels out and the start distance grew fivefold)."""
    rows = {k: _channel_rows(w, sensitivity.get(k, 0.0)) for k, w in weights.items() if w.numel()}
    if not rows:
        return {}, {}
    tensor_h = {k: h.mean() for k, (_, h) in rows.items()}
    positive = [float(v) for v in tensor_h.values() if v > 0]
    mean_h = sum(positive) / len(positive) if positive else 1.0
    scale = {}
    for k, (_, h) in rows.items():
        whole = (tensor_h[k] / mean_h).pow(exponent).clamp_min(1e-4)
        within = (h / tensor_h[k]).pow(exponent) if tensor_h[k] > 0 else torch.ones_like(h)
        scale[k] = whole * within.clamp(1.0 / channel_spread, channel_spread)
    scaled = {k: (r * scale[k][:, None]) for k, (r, _) in rows.items()}
    top = max(float(t.abs().max()) for t in scaled.values())
    if top == 0.0:
        steps = {k: torch.ones(()) if rows[k][1].numel() == 1 else torch.ones(rows[k][1].numel()) for k in rows}
        return {k: v.double() for k, v in steps.items()}, dict.fromkeys(rows, MIN_BITS)
    lo, hi = math.log(top * 2.0**-_MAX_BITS), math.log(top * 4.0)
    for _ in range(36):
        mid = 0.5 * (lo + hi)
        total = sum(_entropy_bits_total(t, math.exp(mid)) for t in scaled.values())
        lo, hi = (mid, hi) if total > budget_bits else (lo, mid)
    step = math.exp(hi)
    steps = {}
    for k, s in scale.items():
        per_row = step / s
        steps[k] = per_row.reshape(()) if rows[k][1].numel() == 1 else per_row
    bits = {k: max(MIN_BITS, _entropy_bits_total(scaled[k], step) / weights[k].numel()) for k in rows}
    return steps, bits
