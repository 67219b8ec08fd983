"""GPTQ-gain-aware steps: the share of rounding error GPTQ leaves, measured out of sample, sets each layer's step."""

import math

import pytest
import torch
from torch import nn

from compression_core.config import CompressionConfig, ConfigError
from compression_core.recon.gptq import (
    GptqRounder,
    column_quantizer,
    fold_hessians,
    gptq_layers,
    gptq_round,
    layer_hessians,
)
from compression_core.recon.gptq_gain import (
    damping_choices,
    held_out_gain,
    measure_gains,
    output_error,
    rebalance_steps,
)
from compression_core.transforms import make_transform


def _hessian(x: torch.Tensor) -> torch.Tensor:
    return (x.t() @ x / x.shape[0]).unsqueeze(0)


def _two_layer_targets(model: nn.Sequential) -> dict:
    """GPTQ targets for the weights of layers 0 and 2, each on a 3-bit linear grid."""
    weights = {name: model.get_parameter(name).detach().clone() for name in ("0.weight", "2.weight")}
    return {name: (w, make_transform("linear", w, bits=3.0)) for name, w in weights.items()}


def test_uncorrelated_inputs_leave_nothing_for_compensation():
    """With a diagonal H there is nothing to push an error onto: GPTQ is rounding to nearest, r = 1."""
    torch.manual_seed(0)
    w = torch.randn(16, 24)
    scales = torch.rand(24) + 0.5
    h = torch.diag(scales).unsqueeze(0)
    transform = make_transform("linear", w, bits=3.0)
    assert held_out_gain(w, transform, (h, 2.0 * h), [0.1])[0] == pytest.approx(1.0)


def test_correlated_inputs_are_compensated_and_the_gain_is_scored_out_of_sample():
    torch.manual_seed(0)
    mixing = torch.randn(32, 32)
    w = torch.randn(16, 32)
    transform = make_transform("linear", w, bits=3.0)
    # Plenty of samples: what one fold's H compensates transfers to the other's.
    first, second = (_hessian(torch.randn(4096, 32) @ mixing) for _ in range(2))
    assert held_out_gain(w, transform, (first, second), [0.01])[0] < 0.5
    # 24 samples of 32 inputs: fitted and scored on the same fold the error nearly vanishes, on the other it does
    # not — the in-sample figure is the optimistic one the allocation must not use.
    few_first, few_second = (_hessian(torch.randn(24, 32) @ mixing) for _ in range(2))
    in_sample, _ = held_out_gain(w, transform, (few_first, few_first), [0.01])
    held_out, _ = held_out_gain(w, transform, (few_first, few_second), [0.01])
    assert held_out > 2.0 * in_sample


def test_output_error_is_the_layer_output_error():
    torch.manual_seed(0)
    x, delta = torch.randn(50, 12), torch.randn(6, 12)
    assert output_error(delta, _hessian(x)) == pytest.approx(float((x @ delta.t()).pow(2).sum() / 50), rel=1e-5)


def test_rebalanced_steps_follow_the_gain_and_keep_the_mean_log_step():
    torch.manual_seed(0)
    weights = {"a": torch.randn(64, 32), "b": torch.randn(16, 8), "c": torch.randn(8)}
    transforms = {k: make_transform("linear", w, bits=4.0) for k, w in weights.items()}
    before = {k: float(t.log_s.detach()) for k, t in transforms.items()}
    numels = {k: w.numel() for k, w in weights.items()}
    rebalance_steps(transforms, numels, {"a": 0.25, "b": 1.0}, 0.5)
    after = {k: float(t.log_s.detach()) for k, t in transforms.items()}
    moved = {k: after[k] - before[k] for k in weights}
    # a's step is twice b's relative to where they were (0.25^−½); c, not GPTQ-rounded, moves like b.
    assert moved["a"] - moved["b"] == pytest.approx(math.log(2.0))
    assert moved["c"] == pytest.approx(moved["b"])
    assert sum(numels[k] * moved[k] for k in weights) / sum(numels.values()) == pytest.approx(0.0, abs=1e-6)


def test_folds_are_the_even_and_odd_batches_and_add_up_to_the_whole():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    layers = gptq_layers(model, ["0.weight", "2.weight"])
    x = torch.randn(40, 6)
    whole, first, second = fold_hessians(model, layers, x, 8, torch.device("cpu"), 40)
    even = torch.cat([x[i : i + 8] for i in range(0, 40, 16)])
    odd = torch.cat([x[i : i + 8] for i in range(8, 40, 16)])
    cpu = torch.device("cpu")
    for name in layers:
        torch.testing.assert_close(whole[name], layer_hessians(model, layers, x, 40, cpu, 40)[name])
        torch.testing.assert_close(first[name], layer_hessians(model, layers, even, 40, cpu, 40)[name])
        torch.testing.assert_close(second[name], layer_hessians(model, layers, odd, 40, cpu, 40)[name])


def test_the_measurement_calls_back_after_every_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(24, 8), nn.ReLU(), nn.Linear(8, 4))
    targets = _two_layer_targets(model)
    rounder = GptqRounder(model, targets, torch.randn(64, 24), 16, torch.device("cpu"), folds=True)
    measured: list[int] = []
    gains = measure_gains(rounder, after_layer=lambda: measured.append(len(measured)))
    assert sorted(gains) == ["0.weight", "2.weight"] and len(measured) == 2


def test_a_single_batch_gives_no_second_fold_and_no_gain():
    torch.manual_seed(0)
    layer = nn.Linear(8, 4)
    w = layer.weight.detach().clone()
    targets = {"0.weight": (w, make_transform("linear", w, bits=3.0))}
    rounder = GptqRounder(nn.Sequential(layer), targets, torch.randn(8, 8), 16, torch.device("cpu"), folds=True)
    assert rounder.folds is not None and "0.weight" not in rounder.folds[1]
    assert measure_gains(rounder) == {}
    rounder.drop_folds()
    assert rounder.folds is None and measure_gains(rounder) == {}


def test_a_gain_beyond_the_high_rate_range_is_floored():
    """Inputs in a 4-dimensional subspace: GPTQ pushes nearly all the error where no input goes, but a step made
    √(1/r) coarser on that account would leave the range where r was measured — the gain stops at ⅕."""
    torch.manual_seed(0)
    basis = torch.randn(4, 32)
    w = torch.randn(16, 32)
    transform = make_transform("linear", w, bits=3.0)
    folds = tuple(_hessian(torch.randn(2048, 4) @ basis) for _ in range(2))
    assert held_out_gain(w, transform, folds, [0.001])[0] == pytest.approx(0.2)


def test_each_layer_keeps_the_damping_that_leaves_the_least_error_out_of_sample():
    """Few samples of many inputs: GPTQ at a small damping fits one fold's accidental correlations and the other
    fold pays for it; a larger damping trusts them less. With plenty of samples the small one is right."""
    torch.manual_seed(0)
    mixing = torch.randn(48, 48)
    w = torch.randn(16, 48)
    transform = make_transform("linear", w, bits=3.0)
    few = tuple(_hessian(torch.randn(20, 48) @ mixing) for _ in range(2))
    plenty = tuple(_hessian(torch.randn(4096, 48) @ mixing) for _ in range(2))
    for folds, expected in ((few, 1.0), (plenty, 0.001)):
        gain, damping = held_out_gain(w, transform, folds, [0.001, 1.0])
        assert damping == expected
        # the gain is the chosen damping's, i.e. the smaller of the two
        assert gain == pytest.approx(min(held_out_gain(w, transform, folds, [d])[0] for d in (0.001, 1.0)))


def test_the_rounder_rounds_each_layer_at_the_damping_its_folds_chose():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 4))
    targets = _two_layer_targets(model)
    rounder = GptqRounder(model, targets, torch.randn(40, 48), 10, torch.device("cpu"), damping=0.001, folds=True)
    first, second = rounder.folds
    gains = measure_gains(rounder, [1.0, 0.001])
    for name in gains:
        folds = (first[name], second[name])
        _, expected = held_out_gain(rounder.originals[name], targets[name][1], folds, [0.001, 1.0])
        assert rounder.layer_dampings.get(name, 0.001) == expected
    # 20 samples a fold for 48 inputs: the first layer trusts its calibration correlations less
    assert rounder.layer_dampings["0.weight"] == 1.0
    original, hessian = rounder.originals["0.weight"], rounder.hessians["0.weight"]
    quantize = column_quantizer(targets["0.weight"][1])
    torch.testing.assert_close(rounder.rounded("0.weight"), gptq_round(original, hessian, quantize, 1.0))
    assert not torch.equal(rounder.rounded("0.weight"), gptq_round(original, hessian, quantize, 0.001))


def test_layer_dampings_are_read_from_lists_and_checked():
    assert CompressionConfig.from_dict({"gptq_layer_dampings": [1, 3.0]}).gptq_layer_dampings == (1, 3.0)
    assert CompressionConfig.from_dict({"gptq_layer_dampings": 1.0}).gptq_layer_dampings == (1.0,)
    assert CompressionConfig.from_dict({"gptq_layer_dampings": []}).gptq_layer_dampings == ()
    for bad in ([0.0], [-1.0], ["1"], [True]):
        with pytest.raises(ConfigError, match="gptq_layer_dampings"):
            CompressionConfig.from_dict({"gptq_layer_dampings": bad})


def test_each_damping_is_tried_once_the_base_first():
    assert damping_choices(0.1, (1.0, 0.1, 1.0, 3.0)) == [0.1, 1.0, 3.0]
    assert damping_choices(0.1, ()) == [0.1]
