"""The rate judged from a fixed subset of each large tensor's codes (``counter_samples``)."""

import torch

from compression_core.config import CompressionConfig
from compression_core.recon.state import QuantizedState
from compression_core.transforms import TensorPlan


def _state(counter_samples: int) -> QuantizedState:
    torch.manual_seed(0)
    originals = {"big": torch.randn(256, 512) * 0.05, "small": torch.randn(64, 32) * 0.05}
    plans = [TensorPlan(name, "prune_quant", True, "weight") for name in originals]
    config = CompressionConfig(counter_samples=counter_samples)
    return QuantizedState(originals, plans, config, {"big": 4.0, "small": 4.0})


def test_subsampled_rate_estimates_the_exact_rate_and_keeps_its_gradient():
    exact = _state(0)
    sampled = _state(8192)
    _, exact_bits = exact.quantized_and_rate()
    _, sampled_bits = sampled.quantized_and_rate()
    assert abs(sampled_bits.item() / exact_bits.item() - 1.0) < 0.03
    sampled_bits.backward()
    step_grads = [p.grad for p in sampled.transform_parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in step_grads)
    assert any(float(g.abs().sum()) > 0 for g in step_grads)


def test_the_subset_is_fixed_and_small_tensors_are_counted_whole():
    state = _state(8192)
    _, first = state.quantized_and_rate()
    _, second = state.quantized_and_rate()
    assert first.item() == second.item()
    assert state._counter_subset(0, 256 * 512).numel() == 8192
    assert state._counter_subset(1, 64 * 32) is None
