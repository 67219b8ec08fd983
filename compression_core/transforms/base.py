"""Learnable element-wise transforms T with their inverse T⁻¹ (paper Eq. 9): ŵ = T⁻¹(⌊T(w)⌉).

Each transform learns its parameters in log space, so they are positive by construction and one learning rate
suits layers of any magnitude. Parameters are per tensor (shape ``()``) or per output channel (shape ``(C,)``,
broadcast along dim 0). The torch inverse here is the *training-time* T⁻¹ (differentiable); the decoder and the
final weights use the canonical NumPy T⁻¹ in `levels.py`, which computes the same formula.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

_TINY = 1e-12
# Codes are clamped to ±(2^19 − 1): far beyond any useful quantizer, well inside float32's exact integers and
# int32 symbols, and it keeps a diverging parameter from building a histogram of 10^8 bins. The span it allows,
# 2^20 − 1 levels, is what the file format accepts per tensor (`coding.manifest.MAX_LEVELS`); the former ±2^20
# let the ratio controller's finest steps write spans of 2^21 + 1 levels, which the writer refused.
MAX_CODE = float(2**19 - 1)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest with a straight-through gradient (identity in the backward pass)."""
    return x + (torch.round(x) - x).detach()


def judged_codes(codes: torch.Tensor, judged: torch.Tensor | None) -> torch.Tensor:
    """The codes the entropy counter judges: all of them, or those at the flat indices ``judged``."""
    return codes if judged is None else codes.reshape(-1)[judged]


def channel_view(p: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-channel parameter (C,) so it broadcasts over a tensor shaped (C, ...)."""
    if p.dim() == 0:
        return p
    return p.reshape((-1,) + (1,) * (like.dim() - 1))


def reduce_abs_max(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """max |w| per tensor or per output channel (float64 for safe initialisation arithmetic)."""
    a = w.detach().abs().double()
    if per_channel and w.dim() >= 1 and w.numel() > 0:
        return (
            a.reshape(a.shape[0], -1).amax(dim=1)
            if a.shape[0] and a[0].numel()
            else torch.zeros(a.shape[0], dtype=torch.float64)
        )
    return a.max() if a.numel() else torch.tensor(0.0, dtype=torch.float64)


def reduce_std(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """Root mean square per tensor or per output channel (weights are roughly zero-mean)."""
    a = w.detach().double()
    if per_channel and w.dim() >= 1 and w.numel() > 0:
        return a.reshape(a.shape[0], -1).pow(2).mean(dim=1).sqrt()
    return a.pow(2).mean().sqrt() if a.numel() else torch.tensor(0.0, dtype=torch.float64)


def safe_scale(value: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """Replace zero/NaN scales (constant or all-zero tensors) by a fallback, then by a tiny positive number."""
    value = torch.where(torch.isfinite(value) & (value > _TINY), value, fallback)
    return torch.where(torch.isfinite(value) & (value > _TINY), value, torch.full_like(value, 1e-8))


def per_channel_floor(value: torch.Tensor, whole: torch.Tensor, fraction: float = 1e-3) -> torch.Tensor:
    """Per-channel scales fall back to the tensor-wide scale ``whole`` where a channel is all-zero or
    constant, and never drop below ``fraction`` of it. Without this a dead channel gets a 1e-8 step, the first
    weight update moves it by 1e-4 and its codes explode to ~1e4…1e8 levels (seen on EfficientNet-Lite0)."""
    if value.dim() == 0:
        return value
    value = safe_scale(value, whole.expand_as(value))
    return torch.maximum(value, whole * fraction)


class Transform(nn.Module):
    """Base class: subclasses set ``kind`` and ``param_names`` and implement `forward` (T) and `inverse`."""

    kind: str = ""
    param_names: tuple[str, ...] = ()

    def __init__(self, init: dict[str, torch.Tensor]) -> None:
        super().__init__()
        for name in self.param_names:
            value = init[name].double().clamp_min(1e-30)
            self.register_parameter(f"log_{name}", nn.Parameter(value.log().float()))

    def param(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """Positive parameter ``name``, broadcastable against ``like``."""
        return channel_view(getattr(self, f"log_{name}").exp(), like)

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        """Continuous codes T(w), clamped to ±MAX_CODE. Everything (training, the counter, the symbols the
        file stores) goes through here, so the clamp is the same everywhere."""
        return self(w).clamp(-MAX_CODE, MAX_CODE)

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        """ŵ = T⁻¹(⌊T(w)⌉) with a straight-through estimator for the rounding."""
        return self.codes_and_quantized(w)[1]

    def codes_and_quantized(
        self, w: torch.Tensor, judged: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The continuous codes T(w) the entropy counter judges (all, or those at the flat indices ``judged``)
        and ŵ = T⁻¹(⌊T(w)⌉) (straight-through), from one evaluation of T. Kinds with a fused quantizer
        (`fused.py`) override it."""
        codes = self.codes(w)
        return judged_codes(codes, judged), self.inverse(round_ste(codes), w)

    def symbols(self, w: torch.Tensor) -> torch.Tensor:
        """Integer codes ⌊T(w)⌉ as int64 (what the range coder packs)."""
        with torch.no_grad():
            return torch.round(self.codes(w)).to(torch.int64)

    def param_values(self) -> dict[str, np.ndarray]:
        """Current parameters as float32 arrays, exactly what the `.l2` file stores."""
        return {
            n: getattr(self, f"log_{n}").detach().double().exp().float().cpu().numpy().astype(np.float32)
            for n in self.param_names
        }

    def rescale(self, log_factor: float) -> None:
        """Multiply every step-like parameter by exp(log_factor): coarser (> 0) or finer (< 0) levels.
        Used by the ratio controller to land exactly on the target file size."""
        with torch.no_grad():
            for name in self.step_params():
                getattr(self, f"log_{name}").add_(log_factor)

    def step_params(self) -> tuple[str, ...]:
        return self.param_names

    def inverse(self, q: torch.Tensor, like: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def levels_for_bits(bits: float) -> float:
    """Half-range (in levels) of a uniform quantizer with 2^bits levels."""
    return max(1.0, 2.0 ** (bits - 1.0))


GAUSS_ENTROPY_CONST = math.sqrt(2 * math.pi * math.e)
