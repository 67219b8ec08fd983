"""`QuantizedState.learning`: each schedule phase computes only its own group's gradients, and the same ones."""

import torch

from compression_core.config import CompressionConfig
from compression_core.recon.state import QuantizedState
from compression_core.transforms import TensorPlan


def _state() -> QuantizedState:
    torch.manual_seed(0)
    originals = {"conv": torch.randn(16, 8, 3, 3) * 0.1, "fc": torch.randn(10, 32) * 0.1}
    plans = [TensorPlan(name, "prune_quant", True, "weight") for name in originals]
    return QuantizedState(originals, plans, CompressionConfig(), {"conv": 4.0, "fc": 4.0})


def _backward(state: QuantizedState) -> None:
    quantized, rate = state.quantized_and_rate()
    loss = sum((v.sin() ** 2).sum() for v in quantized.values()) + 1e-3 * rate
    state.zero_grad(set_to_none=True)
    loss.backward()


def test_transform_phase_skips_latent_gradients_and_keeps_the_transform_gradients():
    state = _state()
    _backward(state)
    expected = [p.grad.clone() for p in state.transform_parameters()]
    with state.learning("transform"):
        _backward(state)
        assert all(w.grad is None for w in state.latents)
        got = [p.grad for p in state.transform_parameters()]
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))
    assert all(w.requires_grad for w in state.latents)  # restored on leaving


def test_weight_phase_skips_transform_gradients_and_keeps_frozen_latents_frozen():
    state = _state()
    state.latents[1].requires_grad_(False)  # e.g. a tensor the plan marks not learnable
    with state.learning("weights"):
        _backward(state)
        assert all(p.grad is None for p in state.transform_parameters())
        assert state.latents[0].grad is not None and state.latents[1].grad is None
    assert all(p.requires_grad for p in state.transform_parameters())
    assert not state.latents[1].requires_grad
