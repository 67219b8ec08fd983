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

from compression_core.recon.level_bits import bits_of
from compression_core.transforms import Transform
from compression_core.transforms.base import MAX_CODE
from compression_core.transforms.trellis import NEXT_STATE, TrellisPathError, as_chains

# Candidate symbols per quantizer: four in a row around the weight's position on that quantizer's grid hold
# the two nearest of either parity.
_OFFSETS = (-1.0, 0.0, 1.0, 2.0)
_MAX_CODE = float(MAX_CODE)
_UNIFORM_KINDS = ("linear", "prune_quant")
# GPTQ's loop over one block of columns: (block (groups, rows, B), its Cholesky factor) → (rounded, scaled errors).
BlockRounder = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


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


@njit(cache=True)
def _dead_zone_value(level: float, dead: float, step: float) -> float:  # pragma: no cover
    """Level ``level`` of a uniform grid with a dead zone: 0, else sign(level)·(dead + (|level| − ½)·step)."""
    return np.sign(level) * (dead + (abs(level) - 0.5) * step) if level != 0 else 0.0


@njit(cache=True)
def _uniform_levels(
    v: np.ndarray,
    dead: np.ndarray,
    step: np.ndarray,
    bits: np.ndarray,
    lowest: int,
    exchange: float,
    next_state: np.ndarray,
) -> np.ndarray:  # pragma: no cover
    """The cheapest path's levels for weights ``v`` on a uniform grid with a dead zone (level n is 0 at
    n = 0, else sign(n)·(dead + (|n| − ½)·step); `linear` is dead = step/2): the same candidates and costs as
    `trellis_quantizer`, in one compiled pass instead of ~40 tensor operations a column. (Compiled:
    `tests/core/test_trellis.py` checks it, inside `_round_uniform_block`, against `trellis_quantizer`.)"""
    n = v.shape[0]
    cost = np.empty((n, 2, 2))
    choice = np.zeros((n, 2, 2), np.int64)
    for i in range(n):
        x, e, s = np.float64(v[i]), dead[i], step[i]
        mag = abs(x)
        code = x / (2.0 * e) if mag < e else np.sign(x) * ((mag - e) / s + 0.5)
        code = min(max(code, -_MAX_CODE), _MAX_CODE)
        even = np.floor(code / 2.0)
        low = 2.0 * even
        high = low + 2.0
        spacing = _dead_zone_value(high, e, s) - _dead_zone_value(low, e, s)
        rate = exchange * spacing * spacing
        for q in range(2):
            base = even if q == 0 else np.floor((code + np.sign(code)) / 2.0)
            cost[i, q, 0] = np.inf
            cost[i, q, 1] = np.inf
            for offset in range(-1, 3):
                k = base + offset
                level = 2.0 * k if q == 0 else 2.0 * k - np.sign(k)
                level = min(max(level, -_MAX_CODE), _MAX_CODE)
                c = (x - _dead_zone_value(level, e, s)) ** 2
                if rate > 0.0:
                    index = int(k) - lowest
                    c += rate * (bits[index] if 0 <= index < bits.shape[0] - 1 else bits[bits.shape[0] - 1])
                parity = int(k) & 1
                if c < cost[i, q, parity]:
                    cost[i, q, parity] = c
                    choice[i, q, parity] = int(level)
    quantizer, parity = _viterbi(cost, next_state)
    levels = np.empty(n, np.int64)
    for i in range(n):
        levels[i] = choice[i, quantizer[i], parity[i]]
    return levels


@njit(cache=True)
def _level_value(level: int, dead: np.float32, step: np.float32, prune: bool) -> np.float32:  # pragma: no cover
    """T⁻¹(level) in float32, operation for operation as the torch `inverse` of `linear` / `prune_quant` computes
    it, so the compiled block equals GPTQ's torch column loop bit for bit."""
    q = np.float32(level)
    if not prune:
        return q * step
    if level == 0:
        return np.float32(0.0)
    return np.float32(np.sign(q)) * (dead + (np.float32(abs(level)) - np.float32(0.5)) * step)


@njit(cache=True)
def _round_uniform_block(
    block: np.ndarray,
    inverse_factor: np.ndarray,
    dead: np.ndarray,
    step: np.ndarray,
    prune: bool,
    bits: np.ndarray,
    lowest: int,
    exchange: float,
    next_state: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
    """GPTQ's column loop over one block (groups, rows, B) of float32 weights with the trellis quantizer: each
    column's cheapest path (`_uniform_levels`), its error scaled by the block's Cholesky factor
    ``inverse_factor`` (groups, B, B) pushed onto the block's later columns. Returns the rounded block and the
    scaled errors (what the columns after the block absorb). ``dead``/``step`` are float32 per output channel.
    (Compiled: `tests/core/test_trellis.py` checks it against the torch loop.)"""
    groups, rows, width = block.shape
    channels = groups * rows
    dead64, step64 = dead.astype(np.float64), step.astype(np.float64)
    if not prune:
        dead64 = step64 / 2.0
    column = np.empty(channels)
    rounded = np.empty_like(block)
    errors = np.empty_like(block)
    for j in range(width):
        for g in range(groups):
            for r in range(rows):
                column[g * rows + r] = block[g, r, j]
        levels = _uniform_levels(column, dead64, step64, bits, lowest, exchange, next_state)
        for g in range(groups):
            pivot = inverse_factor[g, j, j]
            for r in range(rows):
                c = g * rows + r
                value = _level_value(levels[c], dead[c], step[c], prune)
                error = (block[g, r, j] - value) / pivot
                rounded[g, r, j] = value
                errors[g, r, j] = error
                for later in range(j, width):
                    block[g, r, later] = block[g, r, later] - error * inverse_factor[g, j, later]
    return rounded, errors


def trellis_quantizer(
    transform: Transform, rate_weight: float, bits: tuple[torch.Tensor, int] | None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The GPTQ column quantizer of trellis-coded levels under ``transform`` (its levels are the base grid).

    Each candidate's cost is (v − ŵ)² + rate_weight · ln2/6 · (2Δ)² · bits(k): the exchange rate of
    `gptq.column_quantizer`'s rate-aware rounding, with 2Δ — the step of either quantizer — as the step and
    ``bits`` (`level_bits`'s table of the symbols, or None for the error alone) as the rate. Works for every
    kind, through T⁻¹ in torch; GPTQ rounds the uniform kinds with `trellis_block_rounder`, which computes the
    same levels compiled (tested against this)."""
    exchange = _exchange_rate(rate_weight, bits)
    offsets = torch.tensor(_OFFSETS, dtype=torch.float64)

    @torch.no_grad()
    def quantize(v: torch.Tensor) -> torch.Tensor:
        n = len(v)
        codes = transform.codes(v).double()
        # Where v sits on either quantizer's grid of symbols: Q0's level 2k, Q1's 2k − sgn(k).
        base = torch.stack([torch.floor(codes / 2), torch.floor((codes + torch.sign(codes)) / 2)], 1)
        symbols = base.unsqueeze(2) + offsets.to(v.device)  # (N, quantizer, candidate)
        levels = 2 * symbols
        levels[:, 1] -= torch.sign(symbols[:, 1])
        levels = levels.clamp_(-MAX_CODE, MAX_CODE).reshape(n, -1).to(v.dtype)
        values = transform.inverse(levels, v.reshape(-1, 1)).reshape(n, 2, len(_OFFSETS))
        cost = (v.reshape(-1, 1, 1) - values).double().square()
        if exchange > 0:
            step = (values[:, 0, 2] - values[:, 0, 1]).double()  # either quantizer's step at v: Q0's 2k → 2k + 2
            cost += exchange * step.square().reshape(-1, 1, 1) * bits_of(*bits, symbols)
        # Candidates 0 and 2 share a parity, 1 and 3 the other: the cheaper of each pair, by parity.
        pair_cost = torch.minimum(cost[..., :2], cost[..., 2:])
        second = cost[..., 2:] < cost[..., :2]
        swapped = base.remainder(2) == 0  # candidate 0 (base − 1) is odd: pair 0 holds parity 1
        by_parity = torch.where(swapped.unsqueeze(2), pair_cost.flip(2), pair_cost)
        # The path search runs on the CPU (a column at a time: a few kB either way).
        quantizer, parity = (torch.from_numpy(a).to(v.device) for a in cheapest_path(by_parity.cpu().numpy()))
        rows = torch.arange(n, device=v.device)
        pair = parity ^ swapped[rows, quantizer].long()
        candidate = pair + 2 * second[rows, quantizer, pair].long()
        return values[rows, quantizer, candidate]

    return quantize


def _exchange_rate(rate_weight: float, bits: tuple[torch.Tensor, int] | None) -> float:
    """rate_weight · ln2/6: the distortion per bit (in units of step²) the search trades, 0 without a rate."""
    return rate_weight * math.log(2.0) / 6.0 if bits is not None else 0.0


def trellis_block_rounder(
    transform: Transform, rate_weight: float, bits: tuple[torch.Tensor, int] | None
) -> BlockRounder | None:
    """For the uniform kinds, GPTQ's whole column loop over a block in one compiled call (`gptq.gptq_round`'s
    ``round_block``): the same levels and values as its torch loop with `trellis_quantizer`, without the
    ~40 tensor operations a column of that search and the loop around it. None for other kinds (they keep
    the torch loop)."""
    if transform.kind not in _UNIFORM_KINDS:
        return None
    exchange = _exchange_rate(rate_weight, bits)
    table, lowest = (bits[0].double().cpu().numpy(), bits[1]) if bits is not None else (np.ones(1), 0)
    prune = transform.kind == "prune_quant"
    cached: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def channel_params(channels: int) -> tuple[np.ndarray, np.ndarray]:
        # The transform's parameters do not change during one rounding: broadcast them once.
        if channels not in cached:
            like = torch.empty(channels)
            step = transform.param("s", like).detach().float().expand(channels).cpu()
            dead = transform.param("e", like).detach().float().expand(channels).cpu() if prune else step / 2
            cached[channels] = (np.ascontiguousarray(dead.numpy()), np.ascontiguousarray(step.numpy()))
        return cached[channels]

    @torch.no_grad()
    def round_block(block: torch.Tensor, inverse_factor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        groups, rows, _ = block.shape
        dead, step = channel_params(groups * rows)
        rounded, errors = _round_uniform_block(
            block.detach().float().cpu().numpy().copy(),
            np.ascontiguousarray(inverse_factor.detach().float().cpu().numpy()),
            dead,
            step,
            prune,
            table,
            lowest,
            exchange,
            NEXT_STATE,
        )
        rounded_back, errors_back = (torch.from_numpy(a).to(block.device, block.dtype) for a in (rounded, errors))
        return rounded_back, errors_back

    return round_block


@njit(cache=True)
def _symbols_of_chains(levels: np.ndarray, next_state: np.ndarray) -> tuple[np.ndarray, int, int]:  # pragma: no cover
    """The symbols of (rows, chains) base-grid levels, each chain walked from state 0 (the inverse of
    `transforms.trellis.trellis_levels`); (symbols, row, column) with the first off-grid level's row and column,
    or −1, −1. (Compiled: `tests/core/test_trellis.py` checks it against `trellis_levels`.)"""
    rows, chains = levels.shape
    symbols = np.empty_like(levels)
    state = np.zeros(chains, np.int64)
    for row in range(rows):
        for chain in range(chains):
            level, current = levels[row, chain], state[chain]
            if current >= 2:  # Q1: odd levels and 0
                if level % 2 == 0 and level != 0:
                    return symbols, row, chain
                symbol = (level + (1 if level > 0 else -1 if level < 0 else 0)) // 2
            else:  # Q0: even levels
                if level % 2 != 0:
                    return symbols, row, chain
                symbol = level // 2
            symbols[row, chain] = symbol
            state[chain] = next_state[current, symbol & 1]
    return symbols, -1, -1


def symbols_of_levels(levels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The symbols (int64, flat) the file stores for trellis-searched ``levels`` of a tensor of ``shape``;
    raises `TrellisPathError` where a level is not on the grid its state allows. Compiled, on the encoder's
    side: a numpy loop over output channels took 0.34 s of every 0.45 s build on EfficientNet-Lite0 (three
    builds a landing); the decoder's inverse stays numpy."""
    chains = np.ascontiguousarray(as_chains(levels, shape))
    symbols, row, column = _symbols_of_chains(chains, NEXT_STATE)
    if row >= 0:
        raise TrellisPathError(f"level {int(chains[row, column])} at ({row}, {column}) is off its state's grid")
    return symbols.reshape(-1)


def warm_up() -> None:
    """Load (or compile) the search's kernels now: the first call of a numba function in a process costs a
    second or more, which a timing of the search (`gptq.estimate_rounding_seconds`) must not count."""
    bits, block = np.ones(2), np.zeros((1, 2, 1), np.float32)
    levels = np.ones(2, np.float32)
    _round_uniform_block(block, np.ones((1, 1, 1), np.float32), levels, levels, True, bits, 0, 0.0, NEXT_STATE)
    cheapest_path(np.zeros((2, 2, 2)))
    symbols_of_levels(np.zeros(2, np.int64), (2, 1))
