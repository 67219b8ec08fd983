"""Which output positions are real tokens. A padded batch of short sentences is mostly padding, and a
transformer's outputs at padded positions are whatever attention makes of nothing: if they counted in the
distillation distance or the held-out metrics, the optimizer would spend bits on them and the reports would
average them in. Dict inputs carrying ``attention_mask`` (batch, seq) mark the real tokens.

Which outputs are token outputs: tensors of ≥ 3 dimensions whose leading dimensions equal the mask's
(batch, seq), e.g. ``last_hidden_state`` (B, S, H) or token-classification logits (B, S, C). Pooled outputs
(B, H) are not masked, and neither are 2-D (B, S) outputs: a pooled (B, H) output with H equal to the padded
length would be indistinguishable from one, and masking it would silently drop features.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

MASK_KEY = "attention_mask"


def token_mask(inputs) -> torch.Tensor | None:
    """The (batch, seq) attention mask of dict inputs, or None (tensor / tuple inputs, no such key, or a
    mask that is not 2-D)."""
    if not isinstance(inputs, Mapping):
        return None
    mask = inputs.get(MASK_KEY)
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        return None
    return mask


def position_weights(output: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
    """``mask`` as 0/1 weights broadcastable to ``output`` (same device and dtype) when ``output`` is a token
    output (see the module docstring); None when the output is to be averaged over every element."""
    if mask is None or output.dim() < 3 or tuple(output.shape[:2]) != tuple(mask.shape):
        return None
    weights = (mask != 0).to(device=output.device, dtype=output.dtype)
    return weights.reshape(*mask.shape, *([1] * (output.dim() - 2)))


def masked_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` over the real positions (every element when ``weights`` is None). With no real
    position at all the mean is 0."""
    if weights is None:
        return values.mean()
    count = weights.sum() * math.prod(values.shape[2:])
    real = torch.where(weights != 0, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return real.sum() / count.clamp_min(1.0)  # `where`, not a product: inf · 0 at a padded position is NaN
