"""The encoder's side of trellis-coded quantization: the cheapest path through the state machine.

`transforms.trellis` says what a symbol stands for; this module chooses the symbols. For a vector of weights
(one column of a layer, every output channel: what GPTQ rounds in one step), each state offers one quantizer
(Q0: even base levels, Q1: odd ones and 0) and each symbol parity leads to a next state, so the best levels
are a shortest path over 4 states (Viterbi), scored by squared error plus a rate term. The path search is
sequential along the vector; it runs compiled (numba), since a Python loop over every weight of a network
would take minutes per rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from numba import njit

from compression_core.transforms import Transform
from compression_core.transforms.base import MAX_CODE
from compression_core.transforms.trellis import NEXT_STATE

# Candidate symbols per quantizer: four in a row around the weight's position on that quantizer's grid hold
# the two nearest of either parity.
_OFFSETS = (-1.0, 0.0, 1.0, 2.0)


@njit(cache=True)
def _viterbi(cost: np.ndarray, next_state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
    """For cost[i, quantizer, parity], the cheapest path from state 0: per element the quantizer its state
    used and the parity it chose. (Compiled: coverage cannot trace it; `tests/core/test_trellis.py` checks it
    against an exhaustive search.)"""
    n = cost.shape[0]
    inf = np.inf
    total = np.full(4, inf)
    total[0] = 0.0
    step = np.empty(4)
    back = np.zeros((n, 4), np.int64)
    for i in range(n):
        step[:] = inf
        for state in range(4):
            if total[state] == inf:
                continue
            for parity in range(2):
                nxt = next_state[state, parity]
                c = total[state] + cost[i, state >> 1, parity]
                if c < step[nxt]:
                    step[nxt] = c
                    back[i, nxt] = state * 2 + parity
        total[:] = step
    state = int(np.argmin(total))
    quantizer = np.empty(n, np.int64)
    parity = np.empty(n, np.int64)
    for i in range(n - 1, -1, -1):
        came = back[i, state]
        state = came >> 1
        quantizer[i] = state >> 1
        parity[i] = came & 1
    return quantizer, parity


def cheapest_path(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantizer (0/1) and symbol parity per element of the cheapest path for ``cost`` of shape (N, 2, 2)."""
    return _viterbi(np.ascontiguousarray(cost, dtype=np.float64), NEXT_STATE)


def trellis_quantizer(
    transform: Transform, rate_weight: float, level_bits: Callable[[torch.Tensor], torch.Tensor] | None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The GPTQ column quantizer of trellis-coded levels under ``transform`` (its levels are the base grid).

    Each candidate's cost is (v − ŵ)² + rate_weight · ln2/6 · (2Δ)² · bits(k): the exchange rate of
    `gptq.column_quantizer`'s rate-aware rounding, with 2Δ — the step of either quantizer — as the step and
    ``level_bits`` (symbol → bits, or None for distortion alone) as the rate."""
    exchange = rate_weight * math.log(2.0) / 6.0
    offsets = torch.tensor(_OFFSETS, dtype=torch.float64)

    def quantize(v: torch.Tensor) -> torch.Tensor:
        codes = transform.codes(v).double()
        even = torch.floor(codes / 2).unsqueeze(1) + offsets  # Q0 symbols: level 2k
        odd = torch.floor((codes + torch.sign(codes)) / 2).unsqueeze(1) + offsets  # Q1: level 2k − sgn(k)
        symbols = torch.stack([even, odd], 1)  # (N, quantizer, candidate)
        levels = torch.stack([2 * even, 2 * odd - torch.sign(odd)], 1).clamp(-MAX_CODE, MAX_CODE)
        flat_levels = levels.reshape(len(v), -1).to(v.dtype)
        values = transform.inverse(flat_levels, v.reshape(-1, 1)).double().reshape(levels.shape)
        cost = (v.double().reshape(-1, 1, 1) - values).pow(2)
        if level_bits is not None and rate_weight > 0:
            nearest = torch.round(codes).to(v.dtype)
            spacing = transform.inverse(nearest + 1, v) - transform.inverse(nearest, v)
            cost = cost + exchange * (2 * spacing.double()).pow(2).reshape(-1, 1, 1) * level_bits(symbols)
        parity = symbols.remainder(2).long()
        by_parity = torch.stack([cost.masked_fill(parity != p, math.inf) for p in (0, 1)], 2)  # (N, 2, 2, 4)
        best_cost, best_candidate = by_parity.min(dim=3)
        quantizer, chosen_parity = (torch.from_numpy(a) for a in cheapest_path(best_cost.numpy()))
        rows = torch.arange(len(v))
        candidate = best_candidate[rows, quantizer, chosen_parity]
        return values[rows, quantizer, candidate].to(v.dtype)

    return quantize
