"""Distillation distance between the compressed model and the original: no labels needed.

Each floating-point output (and each captured intermediate feature) contributes its MSE divided by the mean
square of the teacher's value, so the distance is scale-free and λ of the rate term means the same on any model.
"""

from __future__ import annotations

import torch

_EPS = 1e-12


def relative_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return (student - teacher).pow(2).mean() / (teacher.pow(2).mean() + _EPS)


def distillation_distance(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Mean relative MSE over matching output tensors (the lists come from `model_io.float_outputs`)."""
    if len(student) != len(teacher) or not teacher:
        raise ValueError(
            f"model gave {len(student)} float outputs, the original {len(teacher)}; need ≥ 1 and equal"
        )
    return torch.stack([relative_mse(s, t.detach()) for s, t in zip(student, teacher, strict=True)]).mean()
