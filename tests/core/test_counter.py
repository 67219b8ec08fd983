"""The soft-histogram counter equals the naive O(n·levels) definition, values and gradients, for every kernel,
and tends to the empirical entropy as δ → 0."""

import math

import numpy as np
import pytest
import torch

from compression_core.entropy import entropy_bits, entropy_bits_many
from compression_core.entropy.kernels import kernel


def naive_entropy_bits(m: torch.Tensor, kernel_name: str, delta: float) -> torch.Tensor:
    """Paper Eq. 12–17 literally: every query against every sample (O(n²) here, tiny tensors only)."""
    cdf, _ = kernel(kernel_name)
    m = m.reshape(-1)
    x = m + (torch.round(m) - m).detach()  # STE queries
    upper = cdf((x[:, None] + 0.5 - m[None, :]) / delta).sum(1)
    lower = cdf((x[:, None] - 0.5 - m[None, :]) / delta).sum(1)
    p = (upper - lower) / m.numel()
    return -torch.log2(p).sum()


@pytest.mark.parametrize("kernel_name", ["cosine", "linear", "triangle"])
@pytest.mark.parametrize("delta", [0.3, 1.0, 2.7])
def test_counter_matches_naive_reference_values_and_gradients(kernel_name, delta):
    gen = torch.Generator().manual_seed(1)
    base = torch.distributions.Laplace(0.0, 3.0).sample((300,)).double()
    base += torch.rand(300, generator=gen, dtype=torch.float64) * 0.01
    m1 = base.clone().requires_grad_(True)
    m2 = base.clone().requires_grad_(True)
    fast = entropy_bits(m1, kernel_name, delta=delta)
    slow = naive_entropy_bits(m2, kernel_name, delta)
    fast.backward()
    slow.backward()
    assert fast.item() == pytest.approx(slow.item(), rel=1e-9, abs=1e-9)
    torch.testing.assert_close(m1.grad, m2.grad, rtol=1e-7, atol=1e-9)


def test_counter_tends_to_empirical_entropy_as_delta_shrinks():
    torch.manual_seed(0)
    m = torch.distributions.Laplace(0.0, 4.0).sample((200_000,))
    symbols = torch.round(m).numpy()
    _, counts = np.unique(symbols, return_counts=True)
    p = counts / counts.sum()
    empirical = float(-(p * np.log2(p)).sum())
    estimate = entropy_bits(m, "cosine", resolution=2000.0).item() / m.numel()
    assert abs(estimate - empirical) < 0.05
    coarse = entropy_bits(m, "cosine", resolution=4.0).item() / m.numel()
    assert abs(coarse - empirical) > abs(estimate - empirical)


def test_constant_and_empty_tensors_give_zero_bits_without_nan():
    for m in (torch.zeros(100, requires_grad=True), torch.full((7,), 3.0, requires_grad=True)):
        s = entropy_bits(m)
        s.backward()
        assert s.item() == 0.0
        assert torch.isfinite(m.grad).all()
    assert entropy_bits(torch.zeros(0)).item() == 0.0


def test_rate_gradient_lowers_entropy_when_followed():
    torch.manual_seed(0)
    w = torch.randn(5000)
    log_s = torch.tensor(math.log(0.05), requires_grad=True)
    opt = torch.optim.Adam([log_s], lr=0.05)
    first = None
    for _ in range(30):
        s = entropy_bits(w / log_s.exp()) / w.numel()
        first = s.item() if first is None else first
        opt.zero_grad()
        s.backward()
        opt.step()
    assert s.item() < first - 0.5


def test_chunked_passes_equal_one_piece(monkeypatch):
    """Tensors beyond one chunk are processed piecewise; the result must not depend on the split."""
    from compression_core.entropy import counter

    torch.manual_seed(5)
    base = torch.distributions.Laplace(0.0, 3.0).sample((50_000,))
    results = []
    for chunk in (1 << 20, 7_919):
        monkeypatch.setattr(counter, "_CHUNK", chunk)
        m = base.clone().requires_grad_(True)
        bits = counter.entropy_bits(m, resolution=64.0)
        bits.backward()
        results.append((bits.detach(), m.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kernel_name", ["cosine", "triangle"])
def test_one_histogram_for_many_tensors_equals_the_weighted_sum_of_their_own(kernel_name):
    """Tensors of very different widths (δ from 0.01 to 0.3 levels and a constant one) share one histogram:
    value and every gradient equal the per-tensor counters', weights included."""
    torch.manual_seed(0)
    shapes = ((5000, 3.0), (300, 0.7), (4096, 20.0), (64, 1.0))
    codes = [torch.randn(n) * spread for n, spread in shapes] + [torch.full((10,), 2.0)]
    weights = [1.0, 2.5, 1.0, 3.0, 1.0]
    alone = [c.clone().requires_grad_() for c in codes]
    together = [c.clone().requires_grad_() for c in codes]
    expected = sum(w * entropy_bits(c, kernel_name) for w, c in zip(weights, alone, strict=True))
    got = entropy_bits_many(together, weights, kernel_name)
    expected.backward()
    got.backward()
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    for a, b in zip(alone, together, strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-5)
