"""The uniform kinds' straight-through quantizer ŵ = T⁻¹(⌊T(w)⌉), with its codes T(w), as one autograd node.

Composed from torch operations, one training step records about twenty graph nodes per coded tensor (abs,
where, sign, divisions, the clamp, the straight-through rounding, the inverse) and walks them all back; on
EfficientNet-Lite0 that bookkeeping, not arithmetic, was most of what the quantizer cost an iteration
(`bench/results/profile.md`). Here the forward runs without a graph and the backward is written out: the same
gradients (straight-through through the rounding, none through the clamp beyond ±MAX_CODE), and only those of
the inputs that need one, so the transform phase never forms the latent weights' gradient and the weight phase
never the parameters'.

Both functions take the parameters in log space (shape ``()`` or ``(C,)``) as the transforms store them, and
``judged``: None, or the flat indices of the codes the entropy counter judges (`counter_samples`). Then only
those codes are returned, so the rate's gradient arrives as a few thousand values added in place instead of a
full-size tensor of zeros built by the indexing's backward.
"""

from __future__ import annotations

import torch

from compression_core.transforms.base import MAX_CODE, channel_view, judged_codes


def _inner(a: torch.Tensor, b: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Σ a·b reduced to a per-tensor (``()``) or per-output-channel (``(C,)``) parameter's shape; per tensor
    as a dot product, which forms no full-size product."""
    if like.dim() == 0:
        return torch.dot(a.reshape(-1), b.reshape(-1))
    return (a * b).reshape(a.shape[0], -1).sum(dim=1)


def _unclamped(raw: torch.Tensor) -> torch.Tensor | None:
    """Where the clamp to ±MAX_CODE let the gradient through; None when it clipped nothing (the usual case).
    On an accelerator the mask is always made: reading the extremes back to decide would stall the stream once
    per tensor and step, which costs more there than the mask."""
    if raw.numel() == 0:
        return None
    if raw.device.type != "cpu":
        return raw.abs() <= MAX_CODE
    low, high = torch.aminmax(raw)
    return None if max(-float(low), float(high)) <= MAX_CODE else raw.abs() <= MAX_CODE


def _code_gradient(
    slope: torch.Tensor, grad_quantized: torch.Tensor | None, grad_codes: torch.Tensor | None, ctx
) -> torch.Tensor:
    """The gradient reaching the codes: the distortion's through T⁻¹'s ``slope`` (straight through the
    rounding) plus the rate's, none where the clamp cut. ``slope`` is consumed."""
    grad_c = slope.mul_(grad_quantized) if grad_quantized is not None else slope.zero_()
    if grad_codes is not None:
        if ctx.judged is None:
            grad_c.add_(grad_codes)
        else:
            grad_c.view(-1).index_add_(0, ctx.judged, grad_codes.reshape(-1))
    if ctx.inside is not None:
        grad_c.mul_(ctx.inside)
    return grad_c


class PruneQuantQuantizer(torch.autograd.Function):
    """Eq. 11: |w| < e maps into (−½, ½), beyond it levels ±(e + (k − ½)s). Returns (codes, ŵ).

    Written with few full-size temporaries (in-place where a value is not needed again): on the CPU a fresh
    tensor of a large layer costs its page faults, not just its arithmetic."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, log_e: torch.Tensor, log_s: torch.Tensor, judged: torch.Tensor | None):
        e, s = channel_view(log_e.exp(), w), channel_view(log_s.exp(), w)
        mag = w.abs()
        dead = mag < e
        beyond = (mag - e).div_(s).add_(0.5)
        magnitude = torch.where(dead, mag.mul_(0.5 / e), beyond)
        inside = _unclamped(magnitude)
        codes = magnitude.clamp_max_(MAX_CODE).copysign_(w)
        q = torch.round(codes)
        # sign(q)(e − s/2) + q·s = ±(e + (|q| − ½)s), and 0 at q = 0.
        quantized = torch.sign(q).mul_(e - 0.5 * s).addcmul_(q, s)
        ctx.save_for_backward(codes, q, dead, log_e, log_s)
        ctx.inside, ctx.judged = inside, judged
        ctx.set_materialize_grads(False)
        return judged_codes(codes, judged), quantized

    @staticmethod
    def backward(ctx, grad_codes: torch.Tensor, grad_quantized: torch.Tensor):
        codes, q, dead, log_e, log_s = ctx.saved_tensors
        e_, s_ = log_e.exp(), log_s.exp()
        e, s = channel_view(e_, codes), channel_view(s_, codes)
        # T⁻¹'s slope at the level: 2e at 0 and s elsewhere.
        grad_c = _code_gradient(torch.where(q == 0, 2.0 * e, s), grad_quantized, grad_codes, ctx)
        if grad_quantized is None:
            grad_quantized = torch.zeros_like(q)
        grad_w = grad_log_e = grad_log_s = None
        if ctx.needs_input_grad[0]:
            grad_w = grad_c / torch.where(dead, 2.0 * e, s)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            # The inverse's own terms (q held): ∂ŵ/∂e = sign(q) and ∂ŵ/∂s = sign(q)(|q| − ½) = q − ½sign(q).
            # The codes' terms, written with the codes c: ∂T/∂e = −c/e in the dead zone, −sign(c)/s beyond;
            # ∂T/∂s = −(c − ½sign(c))/s beyond, 0 in the dead zone. Each sum is one inner product.
            signed = _inner(grad_quantized, torch.sign(q), log_e)
            beyond_codes = codes.masked_fill(dead, 0.0)
            beyond_sign = torch.sign(beyond_codes)
            by_beyond_codes = _inner(grad_c, beyond_codes, log_e)
            by_beyond_sign = _inner(grad_c, beyond_sign, log_e)
            if ctx.needs_input_grad[1]:
                by_dead_codes = _inner(grad_c, codes, log_e) - by_beyond_codes
                grad_log_e = e_ * signed - by_dead_codes - e_ / s_ * by_beyond_sign
            if ctx.needs_input_grad[2]:
                by_levels = _inner(grad_quantized, q, log_e) - 0.5 * signed
                grad_log_s = s_ * by_levels - (by_beyond_codes - 0.5 * by_beyond_sign)
        return grad_w, grad_log_e, grad_log_s, None


class LinearQuantizer(torch.autograd.Function):
    """T(w) = w / s, ŵ = ⌊T(w)⌉·s. Returns (codes, ŵ)."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, log_s: torch.Tensor, judged: torch.Tensor | None):
        s = channel_view(log_s.exp(), w)
        raw = w / s
        inside = _unclamped(raw)
        codes = raw.clamp_(-MAX_CODE, MAX_CODE)
        q = torch.round(codes)
        ctx.save_for_backward(w, q, log_s)
        ctx.inside, ctx.judged = inside, judged
        ctx.set_materialize_grads(False)
        return judged_codes(codes, judged), q * s

    @staticmethod
    def backward(ctx, grad_codes: torch.Tensor | None, grad_quantized: torch.Tensor | None):
        w, q, log_s = ctx.saved_tensors
        s = channel_view(log_s.exp(), w)
        grad_c = _code_gradient(s.expand_as(w).clone(), grad_quantized, grad_codes, ctx)
        grad_w = grad_log_s = None
        if ctx.needs_input_grad[0]:
            grad_w = grad_c / s
        if ctx.needs_input_grad[1]:
            # ∂ŵ/∂log s = q·s directly; ∂codes/∂log s = −w/s.
            by_levels = _inner(grad_quantized, q, log_s) if grad_quantized is not None else torch.zeros_like(log_s)
            grad_log_s = by_levels * log_s.exp() - _inner(grad_c, w, log_s) / log_s.exp()
        return grad_w, grad_log_s, None
