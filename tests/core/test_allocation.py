"""Initial bit allocation: equal step spends the budget and favours wide tensors; equal bits is uniform."""

import pytest
import torch

from compression_core.config import CompressionConfig, ConfigError
from compression_core.recon.allocation import VECTOR_BITS, initial_bits


def _weights():
    g = torch.Generator().manual_seed(0)
    return {"wide": torch.randn(64, 9, generator=g) * 1.0, "narrow": torch.randn(256, 64, generator=g) * 0.02}


def test_equal_step_spends_the_budget_and_gives_wide_tensors_more_bits():
    weights = _weights()
    vectors = {"bias": torch.randn(64)}
    budget = 3.0 * sum(w.numel() for w in weights.values()) + VECTOR_BITS * 64
    bits = initial_bits(weights, vectors, budget, "equal_step", 1.5)
    assert bits["bias"] == VECTOR_BITS
    # log2(1.0 / 0.02) ≈ 5.6 bits more resolution for the wide tensor at one common step.
    assert bits["wide"] > bits["narrow"] + 4.0
    spent = sum(bits[k] * w.numel() for k, w in weights.items()) + VECTOR_BITS * 64
    assert spent == pytest.approx(budget, rel=0.02)


def test_equal_bits_is_uniform_and_degenerate_tensors_are_safe():
    weights = _weights()
    bits = initial_bits(weights, {}, 2.0 * sum(w.numel() for w in weights.values()), "equal_bits", 1.5)
    assert bits["wide"] == bits["narrow"] == 2.0
    zeros = {"z": torch.zeros(10, 10), "e": torch.zeros(0, 3)}
    bits = initial_bits(zeros, {}, 100.0, "equal_step", 1.5)
    assert set(bits) == {"z", "e"} and all(b > 0 for b in bits.values())


def test_unknown_allocation_is_a_config_error():
    with pytest.raises(ConfigError, match="allocation"):
        CompressionConfig(allocation="greedy")


class _TwoBranches(torch.nn.Module):
    """Same weights statistics, but the output cares 100× more about branch a than about branch b."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(32, 16)
        self.b = torch.nn.Linear(32, 16)

    def forward(self, x):
        return self.a(x) + 0.01 * self.b(x)


def test_sensitivity_ranks_tensors_by_what_the_output_cares_about_and_steers_the_bits():
    from compression_core.recon.sensitivity import weight_sensitivity

    torch.manual_seed(0)
    model = _TwoBranches().requires_grad_(False)
    inputs = torch.randn(64, 32)
    names = ["a.weight", "b.weight"]
    h = weight_sensitivity(model, names, inputs, batch_size=32, device=torch.device("cpu"), seed=0)
    assert h["a.weight"] > 1000 * h["b.weight"] > 0  # 100² in expectation
    assert not any(p.requires_grad for p in model.parameters()), "requires_grad must be restored"
    weights = {n: dict(model.named_parameters())[n] for n in names}
    bits = initial_bits(weights, {}, 3.0 * 1024, "sensitivity", 1.5, h)
    assert bits["a.weight"] > bits["b.weight"] + 3.0


def test_per_channel_steps_follow_channel_sensitivity_within_the_spread_and_spend_the_budget():
    from compression_core.recon.allocation import _entropy_bits_total, sensitivity_steps

    torch.manual_seed(0)
    w = torch.randn(8, 64)
    h = torch.tensor([1.0, 1.0, 4.0, 4.0, 1e-6, 1.0, 100.0, 1.0], dtype=torch.float64)
    budget = 4.0 * w.numel()
    steps, bits = sensitivity_steps({"w": w}, budget, {"w": h}, channel_spread=2.0)
    s = steps["w"]
    assert s.shape == (8,)
    assert s[2] < s[0]  # more sensitive, finer
    assert float(s.max() / s.min()) <= 4.0 + 1e-9  # each within 2× of the tensor's step
    spent = _entropy_bits_total(w.double() / s[:, None], 1.0)
    assert abs(spent - budget) / budget < 0.05
    assert abs(bits["w"] - spent / w.numel()) < 1e-6


def test_the_sensitivity_exponent_sets_how_far_the_steps_of_two_tensors_spread():
    from compression_core.recon.allocation import sensitivity_steps

    torch.manual_seed(0)
    weights = {"a": torch.randn(64, 64), "b": torch.randn(64, 64)}
    h = {"a": 16.0, "b": 1.0}
    budget = 3.0 * 2 * 64 * 64
    spread = {}
    for exponent in (0.0, 0.25, 0.5):
        steps, _ = sensitivity_steps(weights, budget, h, exponent=exponent)
        spread[exponent] = float(steps["b"] / steps["a"])
    assert spread[0.0] == pytest.approx(1.0)  # one common step
    assert spread[0.25] == pytest.approx(2.0)  # 16^¼
    assert spread[0.5] == pytest.approx(4.0)  # 16^½: equal h·Δ² per weight
    with pytest.raises(ConfigError, match="sensitivity_exponent"):
        CompressionConfig(sensitivity_exponent=1.5)
