"""Canonical inverse transforms: integer symbols -> float weights.

This module is the single definition of T⁻¹ used by *both* the optimizer's final evaluation and the `.l2`
decoder, so that the weights a job reports accuracy for are bit-for-bit the weights a user decodes. It works in
NumPy float64 and rounds once to float32 at the end, which is deterministic across machines (no fused
multiply-add or device-dependent kernels involved).

Parameters are given as float32 arrays of shape ``(C,)`` (one value per output channel) or ``()`` (per
tensor). Values per kind (paper Eq. 9–11, Fig. 3):

- ``linear``      ŵ = q · s
- ``prune_quant`` ŵ = q · 2e for |q| ≤ ½ (only q = 0 occurs), else sign(q) · (e + (|q| − ½) · s)
- ``log``         ŵ = sign(q) · a · (exp(|q| · s) − 1)
- ``exp``         ŵ = sign(q) · a · ln(1 + |q| · s)
"""

from __future__ import annotations

import numpy as np

from compression_core.transforms.trellis import trellis_levels

TRANSFORM_KINDS = ("linear", "prune_quant", "log", "exp")

PARAM_NAMES: dict[str, tuple[str, ...]] = {
    "linear": ("s",),
    "prune_quant": ("e", "s"),
    "log": ("a", "s"),
    "exp": ("a", "s"),
}


class UnknownTransformError(ValueError):
    """A transform kind or its parameters do not match what this library can decode."""


def _check_params(kind: str, params: dict[str, np.ndarray]) -> None:
    if kind not in PARAM_NAMES:
        raise UnknownTransformError(f"unknown transform kind {kind!r}; known: {', '.join(TRANSFORM_KINDS)}")
    expected = set(PARAM_NAMES[kind])
    if set(params) != expected:
        raise UnknownTransformError(
            f"transform {kind!r} needs parameters {sorted(expected)}, got {sorted(params)}"
        )


def inverse_values(kind: str, params: dict[str, np.ndarray], q: np.ndarray) -> np.ndarray:
    """T⁻¹ of integer codes ``q`` broadcast against ``params`` (float64 math, float32 result)."""
    _check_params(kind, params)
    p = {k: np.asarray(v, dtype=np.float32).astype(np.float64) for k, v in params.items()}
    q = np.asarray(q, dtype=np.float64)
    mag, sign = np.abs(q), np.sign(q)
    if kind == "linear":
        out = q * p["s"]
    elif kind == "prune_quant":
        out = np.where(mag < 0.5, 0.0, sign * (p["e"] + (mag - 0.5) * p["s"]))
    elif kind == "log":
        out = sign * p["a"] * np.expm1(mag * p["s"])
    else:  # exp
        out = sign * p["a"] * np.log1p(mag * p["s"])
    return out.astype(np.float32)


def level_values(kind: str, params: dict[str, np.ndarray], lo: int, hi: int) -> np.ndarray:
    """Table of decoded values for every symbol in ``[lo, hi]``.

    Returns float32 of shape ``(C, hi - lo + 1)`` where C is the number of channels (1 for per-tensor
    parameters). Decoding a tensor is then a gather: ``table[channel, symbol - lo]``.
    """
    _check_params(kind, params)
    shapes = {np.asarray(v).shape for v in params.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) > 1:
        raise UnknownTransformError(f"parameters of {kind!r} must share one shape () or (C,), got {shapes}")
    channels = max(1, int(np.prod(next(iter(shapes)))))
    col = {k: np.asarray(v, dtype=np.float32).reshape(channels, 1) for k, v in params.items()}
    q = np.arange(lo, hi + 1, dtype=np.int64).reshape(1, -1)
    return inverse_values(kind, col, q)


def decode_symbols(
    kind: str, params: dict[str, np.ndarray], symbols: np.ndarray, shape: tuple[int, ...], trellis: bool = False
) -> np.ndarray:
    """Canonical decode of one coded tensor: float32 array of ``shape`` (a gather in the level table); with
    ``trellis`` the symbols are first mapped to the levels they stand for (`trellis.trellis_levels`)."""
    if trellis:
        symbols = trellis_levels(symbols, shape)
    symbols = np.asarray(symbols, dtype=np.int64).reshape(shape)
    if symbols.size == 0:
        return np.zeros(shape, dtype=np.float32)
    lo, hi = int(symbols.min()), int(symbols.max())
    table = level_values(kind, params, lo, hi)
    if table.shape[0] == 1:
        return table[0][symbols - lo]
    rows = np.arange(shape[0]).reshape((-1,) + (1,) * (len(shape) - 1))
    return table[rows, symbols - lo]
