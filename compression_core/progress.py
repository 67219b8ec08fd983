"""Progress reporting and cancellation hooks shared by the optimizer, the command line and the worker."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


class CompressionCanceled(RuntimeError):
    """Raised inside `compress` when the caller's cancellation check returned True."""


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report. ``fraction`` ∈ [0, 1] over the whole run; ``losses`` holds the latest loss terms
    (``distortion``, ``rate_bits_per_weight``, ``total``); ``estimated_ratio`` is the true-file ratio implied by
    the current entropy estimate plus side information."""

    phase: str
    iteration: int
    total_iterations: int
    fraction: float
    losses: dict[str, float] = field(default_factory=dict)
    estimated_ratio: float | None = None
    message: str = ""


ProgressCallback = Callable[[ProgressEvent], None]
CancelCheck = Callable[[], bool]
