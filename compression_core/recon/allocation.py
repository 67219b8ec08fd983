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
