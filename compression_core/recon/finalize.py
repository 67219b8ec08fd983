"""Turning the trained state into the file's records, landing exactly on the target ratio.

The hinge keeps the entropy near B, but the estimate of the side information is approximate and the soft
counter is not the hard histogram. So the last step measures the real encoded file and scales every
transform's step parameters by one common factor α (bisection on log α) until the file is at most the target
size and within ``ratio_tolerance`` of it. α stays close to 1 when the optimization did its job; the relative
allocation of bits between layers learned by the optimizer is kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from compression_core.recon.budget import UnreachableTargetError
from compression_core.recon.state import QuantizedState
from compression_core.records import ArtifactContents, CodedTensor, StoredTensor
from compression_core.transforms.trellis import trellis_symbols

log = logging.getLogger(__name__)


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
                symbols = trellis_symbols(symbols, shape)
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
) -> tuple[ArtifactContents, int, float]:
    """Scale all step sizes by exp(x) so that (1 − tol)·target ≤ file bytes ≤ target. Returns the contents,
    their exact size and the applied log-factor x. Raises `UnreachableTargetError` when even very coarse
    levels do not fit."""
    applied = 0.0

    def at(x: float) -> tuple[ArtifactContents, int]:
        nonlocal applied
        state.rescale(x - applied)
        applied = x
        contents = build()
        return contents, measure(contents)

    def fits(size: int) -> bool:
        return (1.0 - tolerance) * target_bytes <= size <= target_bytes

    best = None
    contents, size = at(0.0)
    if fits(size):
        return contents, size, 0.0
    lo, hi = (0.0, None) if size > target_bytes else (None, 0.0)
    if size <= target_bytes:
        best = (contents, size, 0.0)
    step = 0.05
    for _ in range(max_steps):  # bracket the target: lo too big, hi small enough
        x = (lo + step) if hi is None else (hi - step)
        contents, size = at(x)
        if fits(size):
            return contents, size, x
        if size > target_bytes:
            lo = x
        else:
            hi = x
            best = (contents, size, x)
        if lo is not None and hi is not None:
            break
        step *= 2.0
    if lo is None or hi is None:
        if best is not None:
            at(best[2])
            return best
        raise UnreachableTargetError(
            f"target of {target_bytes:.0f} bytes is unreachable: the smallest file tried was {size} bytes "
            "(stored tensors and side information alone may exceed it); lower the target ratio"
        )
    for _ in range(max_steps):
        mid = 0.5 * (lo + hi)
        contents, size = at(mid)
        if fits(size):
            return contents, size, mid
        if size > target_bytes:
            lo = mid
        else:
            hi, best = mid, (contents, size, mid)
        if hi - lo < 1e-7:
            break
    log.info("ratio controller: closest size %d for target %.0f bytes", best[1], target_bytes)
    contents, size, x = best
    at(x)
    return contents, size, x
