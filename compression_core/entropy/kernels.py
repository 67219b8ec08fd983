"""Relaxation kernels of the differentiable counter (paper Eq. 15–16, Table 3).

Each kernel is given by its CDF ``K(t)`` (a smooth step from 0 at t = −1 to 1 at t = +1) and its density
``k(t) = K'(t)``, both in units of the relaxation width δ. Compact support on [−1, 1] is what lets the counter
touch only the bins within δ of each sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

KernelPair = tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def _cosine_cdf(t: torch.Tensor) -> torch.Tensor:
    return 0.5 + 0.5 * torch.sin(0.5 * math.pi * t.clamp(-1.0, 1.0))


def _cosine_pdf(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t.abs() < 1.0, 0.25 * math.pi * torch.cos(0.5 * math.pi * t), torch.zeros_like(t))


def _linear_cdf(t: torch.Tensor) -> torch.Tensor:
    return 0.5 * (t.clamp(-1.0, 1.0) + 1.0)


def _linear_pdf(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t.abs() < 1.0, torch.full_like(t, 0.5), torch.zeros_like(t))


def _triangle_cdf(t: torch.Tensor) -> torch.Tensor:
    t = t.clamp(-1.0, 1.0)
    return torch.where(t < 0, 0.5 * (1.0 + t) ** 2, 1.0 - 0.5 * (1.0 - t) ** 2)


def _triangle_pdf(t: torch.Tensor) -> torch.Tensor:
    return (1.0 - t.abs()).clamp_min(0.0)


KERNELS: dict[str, KernelPair] = {
    "cosine": (_cosine_cdf, _cosine_pdf),
    "linear": (_linear_cdf, _linear_pdf),
    "triangle": (_triangle_cdf, _triangle_pdf),
}


def kernel(name: str) -> KernelPair:
    """(CDF, density) of the kernel ``name``; raises ValueError for unknown names."""
    try:
        return KERNELS[name]
    except KeyError:
        raise ValueError(f"unknown kernel {name!r}; known: {', '.join(KERNELS)}") from None
