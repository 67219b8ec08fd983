"""Turning the trained state into the file's records, landing exactly on the target ratio.

The hinge keeps the entropy near B, but the estimate of the side information is approximate and the soft
counter is not the hard histogram. So the last step measures the real encoded file and scales every
transform's step parameters by one common factor α (a safeguarded secant on log α) until the file is at most
the target size and within ``ratio_tolerance`` of it. α stays close to 1 when the optimization did its job;
the relative allocation of bits between layers learned by the optimizer is kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from compression_core.recon.budget import UnreachableTargetError
from compression_core.recon.state import QuantizedState
from compression_core.recon.trellis_search import symbols_of_levels
from compression_core.records import ArtifactContents, CodedTensor, StoredTensor

log = logging.getLogger(__name__)
# How fast ln(file bytes) falls per unit of log step scale: about 1/(ln 2 · bits a weight) for the coded share,
# 0.3–0.4 on the bench models at 5–10×. Only the first move uses it; secants take over from the second.
_PRIOR_SLOPE = 0.35
# The part of the ratio window (from its top) a landing is content with: 1/8 of 1 % is 0.125 %.
_TOP_OF_WINDOW = 0.125


def dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def tensor_bytes(t: torch.Tensor) -> bytes:
    """Exact little-endian bytes of a tensor in row-major order (bfloat16 through its int16 view)."""
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def build_contents(
    state: QuantizedState,
    original: dict[str, torch.Tensor],
    trellis: frozenset[str] = frozenset(),
) -> ArtifactContents:
    """Records in state_dict order: coded entries from ``state``, stored entries from ``original``
    (`replace_stored` swaps in recalibrated statistics afterwards). The coded entries named in ``trellis``
    hold levels a trellis search chose, and are written as the symbols that stand for them."""
    coded = {name: (w, t) for name, w, t in state.items()}
    records = []
    for name, tensor in original.items():
        shape = tuple(tensor.shape)
        if name in coded:
            w, transform = coded[name]
            symbols = transform.symbols(w).cpu().numpy()
            if symbols.size and (
                symbols.min() < np.iinfo(np.int32).min or symbols.max() > np.iinfo(np.int32).max
            ):
                raise UnreachableTargetError(f"{name}: symbols overflow int32; the transform diverged")
            if name in trellis:
                symbols = symbols_of_levels(symbols, shape)
            records.append(
                CodedTensor(
                    name,
                    shape,
                    dtype_name(tensor),
                    transform.kind,
                    transform.param_values(),
                    symbols.astype(np.int32).reshape(-1),
                    trellis=name in trellis,
                )
            )
        else:
            records.append(StoredTensor(name, shape, dtype_name(tensor), tensor_bytes(tensor)))
    return ArtifactContents(records=records)


def replace_stored(contents: ArtifactContents, values: dict[str, torch.Tensor]) -> ArtifactContents:
    """The same contents with the named stored tensors' bytes replaced (e.g. recalibrated BN statistics);
    same dtypes and shapes, so the file size does not change."""
    records = []
    for record in contents.records:
        if isinstance(record, StoredTensor) and record.name in values:
            value = values[record.name]
            record = StoredTensor(record.name, record.shape, record.dtype,
                                  tensor_bytes(value.to(getattr(torch, record.dtype))))
        records.append(record)
    return ArtifactContents(records=records, metadata=contents.metadata)


def fit_target(
    state: QuantizedState,
    build: Callable[[], ArtifactContents],
    measure: Callable[[ArtifactContents], int],
    target_bytes: float,
    tolerance: float,
    max_steps: int = 40,
    refine_builds: int = 2,
) -> tuple[ArtifactContents, int, float]:
    """Scale all step sizes by exp(x) so that (1 − tol)·target ≤ file bytes ≤ target. Returns the contents,
    their exact size and the applied log-factor x. Raises `UnreachableTargetError` when even very coarse
    levels do not fit.

    Every build may be a whole GPTQ rounding of the network, so the search is a secant on ln(bytes), aimed at
    the middle of the window, safeguarded into the bracket once it has one (Illinois regula falsi): the
    trellis-coded rate-aware rounding lands 15–25 % under the start's size, which bisection took eight builds
    to correct and this three. Once inside the window, up to ``refine_builds`` more builds aim at its top
    (`_TOP_OF_WINDOW`): every byte under the target is budget the weights did not get, and landing mid-window
    left 0.1–0.8 % of it unspent on EfficientNet-Lite0 — at 8×, where a percent of budget is worth ~3 % of
    KL, not nothing. The largest size that fits wins."""
    applied = 0.0

    def at(x: float) -> tuple[ArtifactContents, int]:
        nonlocal applied
        state.rescale(x - applied)
        applied = x
        contents = build()
        return contents, measure(contents)

    def fits(size: int) -> bool:
        return (1.0 - tolerance) * target_bytes <= size <= target_bytes

    goal = float(np.log(target_bytes * (1.0 - tolerance / 2.0)))
    too_big: tuple[float, float] | None = None  # (x, ln bytes − goal) with bytes above the target
    small: tuple[float, float] | None = None  # the same with bytes at most the target, below the window
    best = None
    fitted: tuple[ArtifactContents, int, float] | None = None  # the largest size inside the window
    refinements = 0
    last: list[tuple[float, float]] = []
    x, previous_side = 0.0, None
    for _ in range(max_steps):
        contents, size = at(x)
        if fits(size) and (fitted is None or size > fitted[1]):
            fitted = (contents, size, x)
        if fitted is not None:  # every build from the first fit on is a refinement
            if fitted[1] >= (1.0 - tolerance * _TOP_OF_WINDOW) * target_bytes or refinements == refine_builds:
                break
            if refinements == 0:  # aim higher: every miss recorded so far moves by the same amount
                shift = goal - float(np.log(target_bytes * (1.0 - tolerance * _TOP_OF_WINDOW / 2.0)))
                goal -= shift
                too_big = None if too_big is None else (too_big[0], too_big[1] + shift)
                small = None if small is None else (small[0], small[1] + shift)
                last = [(lx, lf + shift) for lx, lf in last]
            refinements += 1
        miss = float(np.log(max(size, 1))) - goal
        last = [*last[-1:], (x, miss)]
        if size > target_bytes:
            too_big = (x, miss)
            side = "big"
        else:
            small, best = (x, miss), (contents, size, x)
            side = "small"
        if too_big is not None and small is not None:
            # Illinois: an end kept twice in a row has its miss halved, so the secant cannot stall on it.
            if side == previous_side:
                if side == "big":
                    small = (small[0], small[1] / 2.0)
                else:
                    too_big = (too_big[0], too_big[1] / 2.0)
            previous_side = side
            (x0, f0), (x1, f1) = too_big, small
            if abs(x1 - x0) < 1e-7:
                break
            x = x0 - f0 * (x1 - x0) / (f1 - f0)
            margin = 0.02 * abs(x1 - x0)
            x = min(max(x, min(x0, x1) + margin), max(x0, x1) - margin)
        else:
            x = _extrapolate(last, bigger=side == "big")
    if fitted is not None:
        if fitted[2] != applied:  # a refinement overshot: back to the largest size that fitted
            contents, size = at(fitted[2])
            return contents, size, fitted[2]
        return fitted
    if best is None:
        raise UnreachableTargetError(
            f"target of {target_bytes:.0f} bytes is unreachable: the smallest file tried was {size} bytes "
            "(stored tensors and side information alone may exceed it); lower the target ratio"
        )
    log.info("ratio controller: closest size %d for target %.0f bytes", best[1], target_bytes)
    contents, size, x = best
    at(x)
    return contents, size, x


def _extrapolate(last: list[tuple[float, float]], bigger: bool) -> float:
    """The next x while the target is not yet bracketed: the secant through the last two points when it
    points the right way (at most 4× the last move), else twice the last move; from one point, the move a
    slope of ``_PRIOR_SLOPE`` asks for (coarser when the file is too big)."""
    x1, f1 = last[-1]
    direction = 1.0 if bigger else -1.0
    if len(last) < 2:
        return x1 + direction * min(max(abs(f1) / _PRIOR_SLOPE, 0.02), 1.0)
    x0, f0 = last[0]
    move = abs(x1 - x0)
    if f1 != f0:
        guess = x1 - f1 * (x1 - x0) / (f1 - f0)
        if (guess - x1) * direction > 0:
            return x1 + direction * min(abs(guess - x1), 4.0 * move)
    return x1 + direction * 2.0 * move
