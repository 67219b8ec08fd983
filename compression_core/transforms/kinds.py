"""The four transform kinds of the paper (Eq. 9–11, Fig. 3), initialised from the tensor's statistics.

Initial step sizes aim at ``bits`` bits per weight of entropy: for a roughly Gaussian tensor with RMS σ,
uniform quantization with step s spends about log2(σ·√(2πe)/s) bits, so s = σ·√(2πe)/2^bits.
"""

from __future__ import annotations

import math

import torch

from compression_core.transforms.base import (
    GAUSS_ENTROPY_CONST,
    Transform,
    channel_view,
    per_channel_floor,
    reduce_abs_max,
    reduce_std,
    safe_scale,
)
from compression_core.transforms.fused import LinearQuantizer, PruneQuantQuantizer


def _gauss_step(w: torch.Tensor, per_channel: bool, bits: float) -> torch.Tensor:
    std = reduce_std(w, per_channel)
    amax = reduce_abs_max(w, per_channel)
    step = std * GAUSS_ENTROPY_CONST / (2.0**bits)
    # Never coarser than the full range (at least the levels 0 and ±1 stay meaningful).
    step = safe_scale(torch.minimum(step, amax), amax)
    return per_channel_floor(step, _gauss_step(w, False, bits)) if step.dim() else step


class LinearTransform(Transform):
    """T(w) = w / s: uniform quantization (used for biases and norm parameters)."""

    kind = "linear"
    param_names = ("s",)

    @classmethod
    def from_tensor(cls, w: torch.Tensor, per_channel: bool = False, bits: float = 8.0) -> LinearTransform:
        return cls({"s": _gauss_step(w, per_channel, bits)})

    @classmethod
    def from_step(cls, w: torch.Tensor, step: torch.Tensor) -> LinearTransform:
        return cls({"s": step})

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w / self.param("s", w)

    def codes_and_quantized(
        self, w: torch.Tensor, judged: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return LinearQuantizer.apply(w, self.log_s, judged)

    def inverse(self, q: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return q * self.param("s", like)


class PruneQuantTransform(Transform):
    """Joint pruning + quantization (Eq. 11): |w| < e maps into (−½, ½) and becomes 0; beyond it, uniform
    levels ±(e + (k − ½)s). Learns the threshold e and the step s."""

    kind = "prune_quant"
    param_names = ("e", "s")

    @classmethod
    def from_tensor(
        cls, w: torch.Tensor, per_channel: bool = False, bits: float = 6.0
    ) -> PruneQuantTransform:
        s = _gauss_step(w, per_channel, bits)
        return cls({"e": s / 2.0, "s": s})

    @classmethod
    def from_step(cls, w: torch.Tensor, step: torch.Tensor) -> PruneQuantTransform:
        """A plain uniform grid k·step (dead zone e = step/2) that training may then widen or narrow."""
        return cls({"e": step / 2.0, "s": step})

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        e, s = self.param("e", w), self.param("s", w)
        mag = w.abs()
        return torch.where(mag < e, w / (2.0 * e), torch.sign(w) * ((mag - e) / s + 0.5))

    def codes_and_quantized(
        self, w: torch.Tensor, judged: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return PruneQuantQuantizer.apply(w, self.log_e, self.log_s, judged)

    def inverse(self, q: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        e, s = self.param("e", like), self.param("s", like)
        mag = q.abs()
        # q·2e below ½ keeps the straight-through gradient alive in the dead zone (its value there is 0).
        return torch.where(mag < 0.5, q * 2.0 * e, torch.sign(q) * (e + (mag - 0.5) * s))


class LogTransform(Transform):
    """T(w) = sign(w)·ln(1 + |w|/a)/s: levels dense near zero (Fig. 3c)."""

    kind = "log"
    param_names = ("a", "s")

    @classmethod
    def from_tensor(cls, w: torch.Tensor, per_channel: bool = False, bits: float = 6.0) -> LogTransform:
        amax = reduce_abs_max(w, per_channel)
        a = safe_scale(reduce_std(w, per_channel) / 4.0, amax)
        if a.dim():
            a = per_channel_floor(a, safe_scale(reduce_std(w, False) / 4.0, reduce_abs_max(w, False)))
        span = torch.log1p(amax / a)
        s = safe_scale(span / (2.0 ** (bits - 1.0)), torch.ones_like(span))
        return cls({"a": a, "s": s})

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        a, s = self.param("a", w), self.param("s", w)
        return torch.sign(w) * torch.log1p(w.abs() / a) / s

    def inverse(self, q: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        a, s = self.param("a", like), self.param("s", like)
        return torch.sign(q) * a * torch.expm1(q.abs() * s)


class ExpTransform(Transform):
    """T(w) = sign(w)·(exp(|w|/a) − 1)/s: levels dense at large magnitude (Fig. 3b)."""

    kind = "exp"
    param_names = ("a", "s")

    @classmethod
    def from_tensor(cls, w: torch.Tensor, per_channel: bool = False, bits: float = 6.0) -> ExpTransform:
        amax = reduce_abs_max(w, per_channel)
        a = safe_scale(amax, torch.ones_like(amax))
        if a.dim():
            a = per_channel_floor(a, safe_scale(reduce_abs_max(w, False), torch.ones(())))
        s = torch.full_like(a, (math.e - 1.0) / (2.0 ** (bits - 1.0)))
        return cls({"a": a, "s": s})

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        a, s = self.param("a", w), self.param("s", w)
        # Clamp the exponent: values far beyond the initial range would overflow; they still map monotonically.
        return torch.sign(w) * torch.expm1((w.abs() / a).clamp(max=60.0)) / s

    def inverse(self, q: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        a, s = self.param("a", like), self.param("s", like)
        return torch.sign(q) * a * torch.log1p(q.abs() * s)


TRANSFORM_CLASSES: dict[str, type[Transform]] = {
    cls.kind: cls for cls in (LinearTransform, PruneQuantTransform, LogTransform, ExpTransform)
}


# Kinds whose grid is uniform, so that an allocation can hand them their step directly.
UNIFORM_KINDS = ("linear", "prune_quant")


def make_transform(
    kind: str,
    w: torch.Tensor,
    per_channel: bool = False,
    bits: float = 6.0,
    step: torch.Tensor | None = None,
) -> Transform:
    """Build a transform of ``kind`` initialised from ``w`` (safe on constant, all-zero and tiny tensors).
    Per-channel parameters need a tensor with at least one dimension. ``step`` (a scalar or one value per
    output channel), when given for a uniform kind, sets the grid exactly instead of deriving it from ``bits``."""
    per_channel = per_channel and w.dim() >= 1 and w.shape[0] > 0
    if step is not None and kind in UNIFORM_KINDS:
        amax = reduce_abs_max(w, step.dim() > 0)
        # Never coarser than 4× the range (all codes 0 already) and never degenerate.
        step = safe_scale(torch.minimum(step.double(), 4.0 * amax.clamp_min(1e-12)), amax)
        return TRANSFORM_CLASSES[kind].from_step(w, step).to(w.device)
    transform = TRANSFORM_CLASSES[kind].from_tensor(w, per_channel=per_channel, bits=bits)
    return transform.to(w.device)


__all__ = ["TRANSFORM_CLASSES", "channel_view", "make_transform"]
