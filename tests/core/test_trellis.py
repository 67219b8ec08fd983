"""Trellis-coded quantization: the state machine's two mappings invert each other, the path search finds the
cheapest path, GPTQ with it spends fewer bits at equal error than scalar rounding, and compress() writes
files that decode bit-exact."""

import itertools
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from compression_core import CompressionConfig, compress, load_l2
from compression_core.coding import read_manifest
from compression_core.recon.gptq import GptqRounder, column_quantizer, gptq_round, round_layer
from compression_core.recon.level_bits import level_bits
from compression_core.recon.trellis_search import (
    cheapest_path,
    symbols_of_levels,
    trellis_block_rounder,
    trellis_quantizer,
)
from compression_core.transforms import make_transform
from compression_core.transforms.trellis import NEXT_STATE, TrellisPathError, trellis_levels


def _entropy_bits(symbols: np.ndarray) -> float:
    _, counts = np.unique(symbols, return_counts=True)
    p = counts / counts.sum()
    return float(-(counts * np.log2(p)).sum())


def test_symbols_and_levels_invert_each_other_along_every_column():
    rng = np.random.default_rng(0)
    shape = (17, 3, 2, 2)
    symbols = rng.integers(-6, 7, size=math.prod(shape))
    levels = trellis_levels(symbols, shape)
    assert np.array_equal(symbols_of_levels(levels, shape), symbols)
    # Every column is its own chain from state 0, so the first output channel decodes as Q0: level = 2·symbol.
    first = symbols.reshape(shape[0], -1)[0]
    assert np.array_equal(levels.reshape(shape[0], -1)[0], 2 * first)
    # Symbol 0 is level 0 in either quantizer, so sparsity reads the same from symbols and levels.
    assert np.array_equal(levels == 0, symbols == 0)


def test_levels_off_their_states_grid_are_refused():
    with pytest.raises(TrellisPathError, match=r"level 1 at \(0, 0\)"):
        symbols_of_levels(np.array([1, 2]), (2, 1))  # state 0 allows even levels only
    # After symbol 1 (odd) the chain is in state 2 (Q1): odd levels and 0 are allowed, 2 is not.
    assert trellis_levels(np.array([1, 1]), (2, 1)).tolist() == [2, 1]
    with pytest.raises(TrellisPathError, match=r"level 2 at \(1, 0\)"):
        symbols_of_levels(np.array([2, 2]), (2, 1))


@pytest.mark.parametrize("shape", [(17, 3, 2, 2), (1000, 64), (5,), (1, 9)])
def test_the_encoders_compiled_symbols_invert_the_decoders_levels(shape):
    rng = np.random.default_rng(len(shape))
    symbols = rng.integers(-40, 41, size=math.prod(shape))
    levels = trellis_levels(symbols, shape)
    assert np.array_equal(symbols_of_levels(levels, shape), symbols)
    # Off the grid, the error names the first offending level and where it sits (row, chain).
    broken = levels.copy()
    at = len(broken) // 2 + int(np.flatnonzero(levels[len(levels) // 2 :])[0])  # a nonzero level: its state is known
    broken[at] += 1 if broken[at] != -1 else -1  # the other parity and not 0: off either quantizer's grid
    row, chain = divmod(at, len(broken) // shape[0])
    with pytest.raises(TrellisPathError, match=re.escape(f"level {broken[at]} at ({row}, {chain})")):
        symbols_of_levels(broken, shape)


def _path_cost(cost: np.ndarray, parities) -> tuple[float, list[int]]:
    state, total, quantizers = 0, 0.0, []
    for i, parity in enumerate(parities):
        quantizers.append(state >> 1)
        total += cost[i, state >> 1, parity]
        state = NEXT_STATE[state, parity]
    return total, quantizers


@pytest.mark.parametrize("seed", range(5))
def test_the_path_search_finds_the_cheapest_path(seed):
    """Against every one of the 2^9 parity sequences (each fixes a path through the states)."""
    cost = np.random.default_rng(seed).exponential(size=(9, 2, 2))
    quantizer, parity = cheapest_path(cost)
    found, followed = _path_cost(cost, parity)
    assert followed == quantizer.tolist(), "the quantizers reported are those the path's states use"
    best = min(_path_cost(cost, p)[0] for p in itertools.product((0, 1), repeat=9))
    assert found == pytest.approx(best, rel=1e-12)


def test_trellis_rounding_spends_fewer_bits_than_scalar_rounding_at_equal_error():
    """Plain squared error (H = I) on Laplacian weights, at about 4 bits a weight: the trellis's granular gain
    (EfficientNet-Lite0's largest layers: 3.2–3.5 %)."""
    torch.manual_seed(0)
    w = torch.distributions.Laplace(0.0, 1.0).sample((256, 384))
    identity = torch.eye(w.shape[1]).unsqueeze(0)

    def curve(trellis: bool):
        points = []
        for step in (0.3, 0.25, 0.2):
            transform = make_transform("prune_quant", w, step=torch.tensor(step / 2 if trellis else step))
            q = round_layer(w, transform, identity, damping=0.1, rate_weight=0.5, trellis=trellis)
            levels = torch.round(transform.codes(q)).long().numpy().reshape(-1)
            symbols = symbols_of_levels(levels, tuple(w.shape)) if trellis else levels
            points.append((float((q - w).pow(2).mean()), _entropy_bits(symbols) / w.numel()))
        return points

    scalar, trellis = curve(False), curve(True)
    mse = scalar[1][0]
    xs, ys = np.log([p[0] for p in trellis]), [p[1] for p in trellis]
    trellis_bits = float(np.interp(np.log(mse), xs[::-1], ys[::-1]))
    assert trellis_bits < 0.975 * scalar[1][1], (scalar, trellis)


TRELLIS_CASES = [
    ("grouped", lambda: nn.Conv2d(8, 8, 3, padding=1, groups=4), lambda: torch.randn(32, 8, 10, 10).cumsum(3)),
    ("linear", lambda: nn.Linear(48, 24), lambda: torch.randn(256, 48) @ torch.randn(48, 48)),
]


@pytest.mark.parametrize(("name", "make_layer", "make_inputs"), TRELLIS_CASES, ids=[c[0] for c in TRELLIS_CASES])
def test_gptq_with_the_trellis_compensates_and_chooses_a_valid_path(name, make_layer, make_inputs):
    """A grouped convolution (one chain across the groups, so they share one column order) and a linear layer:
    lower output error than the same trellis search without compensation (H = I), every level on the grid
    its state allows."""
    torch.manual_seed(0)
    layer, x = make_layer().requires_grad_(False), make_inputs()
    w = layer.weight.detach().clone()
    transform = make_transform("prune_quant", w, bits=3.0)
    latent = w.clone()
    targets = {"0.weight": (latent, transform)}
    rounder = GptqRounder(nn.Sequential(layer), targets, x, 16, torch.device("cpu"), trellis=True)
    rounder.round_into()
    groups = getattr(layer, "groups", 1)
    identity = torch.eye(w[0].numel()).expand(groups, -1, -1).contiguous()
    uncompensated = round_layer(w, transform, identity, damping=0.1, rate_weight=0.5, trellis=True)

    errors = {}
    with torch.no_grad():
        reference = layer(x)
        for label, q in (("trellis", latent), ("uncompensated", uncompensated)):
            layer.weight.copy_(q)
            errors[label] = float((layer(x) - reference).pow(2).mean())
        layer.weight.copy_(w)
    with torch.no_grad():
        levels = torch.round(transform.codes(latent))
        assert torch.equal(transform.inverse(levels, latent), latent), "on the base grid"
    symbols_of_levels(levels.long().numpy(), tuple(w.shape))  # raises off the trellis
    assert errors["trellis"] < 0.9 * errors["uncompensated"], name


def test_shared_column_order_changes_nothing_for_one_group():
    torch.manual_seed(0)
    w, x = torch.randn(12, 20), torch.randn(64, 20)
    h = (x.t() @ x / 64).unsqueeze(0)
    quantize = column_quantizer(make_transform("prune_quant", w, bits=3.0))
    assert torch.equal(gptq_round(w, h, quantize), gptq_round(w, h, quantize, shared_order=True))


def test_compress_with_the_trellis_writes_a_version_2_or_later_file_that_decodes_bit_exact(digits, tmp_path):
    model, split = digits
    config = CompressionConfig.from_dict({"preset": "fast", "gptq_trellis": True})
    result = compress(model, split.train_x[:128], 12.0, config=config)
    assert result.evaluation["selection"]["kept"] != "start"
    path = tmp_path / "m.l2"
    summary = result.write(path)
    assert summary.file_bytes == path.stat().st_size
    assert 1.0 <= summary.original_bytes / summary.file_bytes / 12.0 <= 1.0 / (1.0 - config.ratio_tolerance)
    manifest = read_manifest(path)
    assert manifest.version == (3 if any(e.bin_bits for e in manifest.entries) else 2)
    trellised = {e.name for e in manifest.entries if e.trellis}
    assert trellised == {n for n, t in model.state_dict().items() if t.dim() >= 2}
    decoded = load_l2(path)
    for name, tensor in result.state_dict.items():
        assert torch.equal(decoded[name], tensor), name


@pytest.mark.parametrize(
    ("kind", "per_channel", "groups"),
    [("prune_quant", True, 1), ("prune_quant", False, 4), ("linear", True, 1), ("linear", False, 4)],
)
def test_the_compiled_block_loop_equals_the_torch_column_loop(kind, per_channel, groups):
    """`trellis_block_rounder` does GPTQ's whole block in one compiled call (`_uniform_levels` for the search,
    T⁻¹ in float32): the same weights, bit for bit, as the torch column loop around `trellis_quantizer`, which
    computes the costs through the transform's own T⁻¹ (several blocks, grouped layers, both uniform kinds,
    per tensor and per channel)."""
    torch.manual_seed(2)
    w = torch.distributions.Laplace(0.0, 0.05).sample((24, 150 // groups if groups > 1 else 300))
    k = w.shape[1]
    x = torch.randn(groups, k, 2 * k).cumsum(1)
    h = x @ x.transpose(1, 2) / x.shape[2]
    transform = make_transform(kind, w, per_channel=per_channel, bits=4.0)
    bits = level_bits(torch.round(transform.codes(w) / 2).long().reshape(-1))
    quantize = trellis_quantizer(transform, 0.5, bits)
    looped = gptq_round(w, h, quantize, shared_order=True)
    compiled = gptq_round(w, h, quantize, shared_order=True, round_block=trellis_block_rounder(transform, 0.5, bits))
    assert torch.equal(compiled, looped)
    identity = torch.eye(k).expand(groups, k, k).contiguous()
    assert not torch.equal(compiled, gptq_round(w, identity, quantize, shared_order=True)), "compensation acts"
