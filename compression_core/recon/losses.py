"""Distillation distance between the compressed model and the original: no labels needed.

Each floating-point output (and each captured intermediate feature) contributes its MSE divided by the mean
square of the teacher's value, so the distance is scale-free and λ of the rate term means the same on any model.
With an attention mask (dict inputs of a transformer), token outputs count only their real positions, in both
the error and the teacher's mean square (`compression_core.token_mask`).
"""

from __future__ import annotations

import torch

from compression_core.token_mask import masked_mean, position_weights

_EPS = 1e-12


def relative_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """MSE / teacher mean square; over the real positions only when ``mask`` (batch, seq) applies to it."""
    weights = position_weights(teacher, mask)
    return masked_mean((student - teacher).pow(2), weights) / (masked_mean(teacher.pow(2), weights) + _EPS)


def distillation_distance(
    student: list[torch.Tensor], teacher: list[torch.Tensor], mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean relative MSE over matching output tensors (the lists come from `model_io.float_outputs`).
    ``mask``: the batch's attention mask (`token_mask.token_mask(batch)`), or None to average every position."""
    if len(student) != len(teacher) or not teacher:
        raise ValueError(
            f"model gave {len(student)} float outputs, the original {len(teacher)}; need ≥ 1 and equal"
        )
    return torch.stack([relative_mse(s, t.detach(), mask) for s, t in zip(student, teacher, strict=True)]).mean()


def per_sample_distances(
    student: list[torch.Tensor], teacher: list[torch.Tensor], mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Each sample's share of `distillation_distance`, shape (batch,): their mean is the distance. Each
    output's squared error per sample is divided by the teacher's energy over the whole batch, as the distance
    does, so two candidates' shares on the same samples can be compared pairwise."""
    shares = []
    for s, t in zip(student, teacher, strict=True):
        t = t.detach()
        weights = position_weights(t, mask)
        error, energy = (s - t).pow(2), t.pow(2)
        if weights is not None:
            zero = torch.zeros((), dtype=t.dtype, device=t.device)
            error, energy = torch.where(weights != 0, error, zero), torch.where(weights != 0, energy, zero)
        n = t.shape[0]
        shares.append(n * error.reshape(n, -1).sum(dim=1) / (energy.sum() + _EPS * max(1, energy.numel())))
    return torch.stack(shares).mean(dim=0)
