"""Steps that follow how much of each layer's rounding error GPTQ removes on samples it did not fit.

The sensitivity allocation gives every tensor equal h_t·Δ_t² (`allocation.py`): the equal-slope steps when
each weight is rounded on its own. GPTQ then compensates, and the share r_t of the output error it leaves
differs twentyfold between layers — on EfficientNet-Lite0 at 8×, on photos the compensation was not fitted
to, 5–18 % in the stem and the projection convolutions, 60–85 % in the expansion ones, about 80–100 % in
`conv_head` and the classifier. A step in layer t then costs h_t·r_t·Δ_t², so the equal-slope steps are
Δ_t ∝ (h_t·r_t)^−½: coarser where compensation is strong, finer where it is not. r_t has to be measured out
of sample: fitted and scored on the same samples the classifier keeps 2 % of its error, 82 % on other photos.
So the Hessian samples are split in two folds, each layer is rounded with one fold's H and scored with the
other's, both ways, against rounding to nearest on the same grid.

The same held-out score picks each layer's damping among a few: how far to trust its calibration inputs'
correlations is a property of the layer. On EfficientNet-Lite0 the layers fed by few directions per sample
(`conv_head`, and the classifier, one pooled column a sample) keep less error on the other fold with ten times
the damping the others want (docs/method.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from compression_core.recon.gptq import GptqRounder, column_quantizer, gptq_round
from compression_core.transforms import Transform

# A layer whose nearest-rounding error is this small relative to its Hessian's scale has nothing to measure.
_NEGLIGIBLE = 1e-30
# The step rule rests on the high-rate model (error ∝ Δ², r independent of Δ), measured at the start's grid. A
# gain below ⅕ would make a layer's step more than √5 times coarser than that grid, where most of its codes turn
# zero and compensation has little left to work with: on the digits CNN at 25× (1.3 bits a weight) a classifier
# gain of 0.009 cost 3 of 500 test images over four seeds, and a floor of 0.05 as much; at 0.2 it gained at
# 15–20× and held 25×, and EfficientNet-Lite0 at 6× / 8× stayed within its seeds' noise (docs/method.md).
# Above 4 the layer is degenerate (constant inputs), not badly compensated.
_GAIN_RANGE = (0.2, 4.0)


def output_error(delta: torch.Tensor, hessian: torch.Tensor) -> float:
    """Σ over output rows of δ·H·δᵀ, per group: a layer's squared output error for the weight error
    ``delta`` under input statistics ``hessian`` (groups, K, K)."""
    groups, k = hessian.shape[0], hessian.shape[1]
    d = delta.reshape(groups, -1, k).double()
    return float(torch.einsum("grk,gkl,grl->", d, hessian.double(), d))


@torch.no_grad()
def held_out_gain(
    weight: torch.Tensor,
    transform: Transform,
    folds: tuple[torch.Tensor, torch.Tensor],
    dampings: Sequence[float],
) -> tuple[float, float]:
    """The share of rounding-to-nearest's output error left by GPTQ fitted on one fold and scored on the
    other (both ways), on the grid ``transform`` defines now, with whichever of ``dampings`` leaves the least
    (the first on a tie); and that damping."""
    quantize = column_quantizer(transform)
    nearest = quantize(weight) - weight  # without a rate weight the quantizer rounds to nearest
    before = output_error(nearest, folds[0]) + output_error(nearest, folds[1])
    if before <= _NEGLIGIBLE:
        return 1.0, dampings[0]
    best_left, best_damping = math.inf, dampings[0]
    for damping in dampings:
        fitted = [gptq_round(weight, h, quantize, damping) - weight for h in folds]
        left = output_error(fitted[0], folds[1]) + output_error(fitted[1], folds[0])
        if left < best_left:
            best_left, best_damping = left, damping
    return min(_GAIN_RANGE[1], max(_GAIN_RANGE[0], best_left / before)), best_damping


def rebalance_steps(transforms: dict[str, Transform], numels: dict[str, int], gains: dict[str, float],
                    exponent: float) -> None:
    """Scale each tensor's steps by r_t^−exponent (1 where no gain was measured), normalised so that the
    weights' mean log step stays where it was: the ratio controller then lands the size from nearby."""
    logs = {name: -exponent * math.log(gains.get(name, 1.0)) for name in transforms}
    total = sum(numels.values())
    mean = sum(numels[name] * logs[name] for name in transforms) / max(1, total)
    for name, transform in transforms.items():
        transform.rescale(logs[name] - mean)


def damping_choices(damping: float, further: Sequence[float]) -> list[float]:
    """The dampings each layer tries, ``damping`` first (it wins ties), each once."""
    return list(dict.fromkeys([damping, *further]))


def measure_gains(
    rounder: GptqRounder, dampings: Sequence[float] = (), after_layer: Callable[[], None] | None = None
) -> dict[str, float]:
    """`held_out_gain` of every layer the rounder holds both folds for, at its transform's current grid, each
    layer trying the rounder's damping and then ``dampings``; the one it chose stays with the rounder
    (``layer_dampings``) for every later rounding. ``after_layer`` is called after each (progress events,
    cancellation)."""
    if rounder.folds is None:
        return {}
    first, second = rounder.folds
    choices = damping_choices(rounder.damping, dampings)
    gains = {}
    for name in rounder.hessians:
        if name in first and name in second:
            gains[name], damping = held_out_gain(
                rounder.originals[name], rounder.targets[name][1], (first[name], second[name]), choices
            )
            if damping != rounder.damping:
                rounder.layer_dampings[name] = damping
            if after_layer is not None:
                after_layer()
    return gains
