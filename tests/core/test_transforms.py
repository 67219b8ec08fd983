"""Transforms: positive parameters, safe initialisation on degenerate tensors, training-time T⁻¹ equal to the
canonical decoder, per-channel scales that cannot explode, and per-layer kind selection."""

import numpy as np
import pytest
import torch

from compression_core import CompressionConfig
from compression_core.entropy import entropy_bits
from compression_core.transforms import make_transform, plan_tensor
from compression_core.transforms.base import MAX_CODE
from compression_core.transforms.levels import TRANSFORM_KINDS, decode_symbols

DEGENERATE = {
    "constant": torch.full((8, 5), 0.37),
    "all_zero": torch.zeros(8, 5),
    "tiny": torch.randn(8, 5, generator=torch.Generator().manual_seed(0)) * 1e-30,
    "single": torch.tensor([[2.5]]),
    "scalar": torch.tensor(1.5),
    "empty": torch.zeros(0, 4),
}


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("case", list(DEGENERATE))
@pytest.mark.parametrize("kind", TRANSFORM_KINDS)
def test_degenerate_tensors_initialise_to_finite_positive_parameters(kind, case, per_channel):
    w = DEGENERATE[case]
    t = make_transform(kind, w, per_channel=per_channel)
    for name, value in t.param_values().items():
        assert np.all(np.isfinite(value)) and np.all(value > 0), (name, value)
    q = t.quantize(w)
    assert q.shape == w.shape and torch.isfinite(q).all()
    symbols = t.symbols(w)
    decoded = decode_symbols(kind, t.param_values(), symbols.numpy(), tuple(w.shape))
    assert np.all(np.isfinite(decoded))


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("kind", TRANSFORM_KINDS)
def test_training_inverse_matches_the_canonical_decoder(kind, per_channel):
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(1)) * 0.05
    t = make_transform(kind, w, per_channel=per_channel, bits=4.0)
    with torch.no_grad():
        trained = t.quantize(w).numpy()
    canonical = decode_symbols(kind, t.param_values(), t.symbols(w).numpy(), tuple(w.shape))
    np.testing.assert_allclose(trained, canonical, rtol=1e-5, atol=1e-7)
    assert np.all(canonical[t.symbols(w).numpy() == 0] == 0.0), "symbol 0 must decode to exactly 0"


@pytest.mark.parametrize("kind", TRANSFORM_KINDS)
def test_parameters_stay_positive_after_any_gradient_step(kind):
    w = torch.randn(8, 8, generator=torch.Generator().manual_seed(2))
    t = make_transform(kind, w)
    opt = torch.optim.SGD(t.parameters(), lr=100.0)
    loss = (t.quantize(w) - w).pow(2).sum() - 1e3 * sum(p.sum() for p in t.parameters())
    loss.backward()
    opt.step()
    for value in t.param_values().values():
        assert np.all(value > 0)


@pytest.mark.parametrize("kind", TRANSFORM_KINDS)
def test_a_dead_channel_gets_a_sane_step_and_its_codes_stay_small_when_it_wakes(kind):
    """The EfficientNet-Lite0 failure: an all-zero output channel used to get a 1e-8 step."""
    w = torch.randn(6, 20, generator=torch.Generator().manual_seed(3)) * 0.1
    w[2] = 0.0
    t = make_transform(kind, w, per_channel=True, bits=3.0)
    woken = w.clone()
    woken[2] = 1e-3
    with torch.no_grad():
        assert float(t.codes(woken).abs().max()) < 1e4


def test_codes_are_clamped_and_the_counter_copes_with_huge_codes():
    w = torch.tensor([[1.0, -1.0, 0.5, 0.0]])
    t = make_transform("linear", w)
    with torch.no_grad():
        t.log_s.fill_(np.log(1e-12))
    assert t.codes(w).abs().max().item() == MAX_CODE
    # Integer codes far beyond float32's exact range of differences used to index past the histogram.
    m = (torch.full((1000,), 3.0e7) + torch.randn(1000, generator=torch.Generator().manual_seed(4)) * 20)
    m.requires_grad_(True)
    bits = entropy_bits(m, resolution=64.0)
    bits.backward()
    assert torch.isfinite(bits) and torch.isfinite(m.grad).all()


def test_kind_selection_by_layer_name_pattern():
    config = CompressionConfig(transform="prune_quant", transform_overrides=(("head.*", "log"), ("*", "exp")))
    weight = torch.randn(16, 16)
    assert plan_tensor("head.weight", weight, True, config).kind == "log"
    assert plan_tensor("body.0.weight", weight, True, config).kind == "exp"
    plain = CompressionConfig(transform="prune_quant")
    assert plan_tensor("body.0.weight", weight, True, plain).kind == "prune_quant"
    assert plan_tensor("body.0.bias", torch.randn(128), True, plain).kind == "linear"
    assert plan_tensor("bn.running_var", torch.rand(128), False, plain).kind is None
    assert plan_tensor("bn.num_batches_tracked", torch.tensor(3), False, plain).kind is None
