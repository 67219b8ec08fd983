"""GPTQ rounding under L² transforms: lower layer-output error than rounding to nearest, always on the grid."""

import pytest
import torch
from torch import nn

from compression_core.recon.gptq import (
    GptqRounder,
    _unfolded_columns,
    column_quantizer,
    estimate_rounding_seconds,
    gptq_round,
    grouped_columns,
)
from compression_core.transforms import make_transform


def _correlated_images(n=48, c=8, size=10):
    """Smooth images: neighbouring pixels and channels correlate, as in real feature maps."""
    x = torch.randn(n, c, size, size).cumsum(2).cumsum(3) / size
    return x + 0.5 * x.mean(1, keepdim=True)


CASES = [
    ("linear", lambda: nn.Linear(64, 32), lambda: torch.randn(256, 64) @ torch.randn(64, 64)),
    ("conv", lambda: nn.Conv2d(8, 16, 3, padding=1), _correlated_images),
    ("depthwise", lambda: nn.Conv2d(8, 8, 3, padding=1, groups=8), _correlated_images),
    ("conv1d", lambda: nn.Conv1d(8, 12, 3), lambda: torch.randn(32, 8, 20).cumsum(2)),
]


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize(("name", "make_layer", "make_inputs"), CASES, ids=[c[0] for c in CASES])
def test_gptq_beats_round_to_nearest_on_the_layer_output_and_stays_on_the_grid(
    name, make_layer, make_inputs, per_channel
):
    torch.manual_seed(0)
    layer, x = make_layer().requires_grad_(False), make_inputs()
    w = layer.weight.detach().clone()
    transform = make_transform("prune_quant", w, per_channel=per_channel, bits=3.0)
    with torch.no_grad():
        nearest = transform.inverse(torch.round(transform.codes(w)), w)
    latent = w.clone()
    GptqRounder(nn.Sequential(layer), {"0.weight": (latent, transform)}, x, 16, torch.device("cpu")).round_into()

    @torch.no_grad()
    def output_error(q):
        reference = layer(x)
        layer.weight.copy_(q)
        error = float((layer(x) - reference).pow(2).mean())
        layer.weight.copy_(w)
        return error

    assert output_error(latent) < 0.9 * output_error(nearest), name
    with torch.no_grad():
        codes = torch.round(transform.codes(latent))
        assert torch.equal(transform.inverse(codes, latent), latent), "GPTQ output must be exactly on the grid"


def test_rounding_again_starts_from_the_originals():
    """The ratio controller rescales the grid between calls; each call re-rounds the original weights."""
    torch.manual_seed(0)
    layer, x = nn.Linear(32, 16).requires_grad_(False), torch.randn(128, 32)
    w = layer.weight.detach().clone()
    transform = make_transform("prune_quant", w, bits=4.0)
    latent = w.clone()
    rounder = GptqRounder(nn.Sequential(layer), {"0.weight": (latent, transform)}, x, 32, torch.device("cpu"))
    rounder.round_into()
    first = latent.clone()
    transform.rescale(0.3)
    rounder.round_into()
    transform.rescale(-0.3)
    rounder.round_into()
    assert torch.equal(latent, first)


def test_timing_a_rounding_writes_nothing():
    """The progress estimate's sample rounding (every 2nd layer here, under H = I, before any Hessian is
    measured; grouped convolutions and linear layers) leaves every latent weight as it was."""
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(64, 64) if i % 2 else nn.Conv2d(4, 8, 3, groups=2) for i in range(4)])
    targets = {}
    for i, layer in enumerate(model.requires_grad_(False)):
        w = layer.weight.detach().clone()
        targets[f"{i}.weight"] = (w.clone(), make_transform("prune_quant", w, bits=2.0))
    before = {n: latent.clone() for n, (latent, _) in targets.items()}
    assert estimate_rounding_seconds(model, targets, stride=2) > 0.0
    assert estimate_rounding_seconds(model, targets, stride=1) > 0.0
    assert all(torch.equal(targets[n][0], before[n]) for n in before)
    assert estimate_rounding_seconds(nn.Sequential(nn.ReLU()), {}) == 0.0


def test_rate_aware_rounding_spends_fewer_bits_for_a_bounded_error():
    """RDOQ inside GPTQ: weights near a rounding boundary take the cheaper (more frequent) level, so the
    codes' entropy drops; every weight still takes one of its two neighbouring levels."""
    torch.manual_seed(0)
    weight = torch.distributions.Laplace(0.0, 0.05).sample((64, 96))
    hessian = torch.eye(96).unsqueeze(0) + 0.1
    transform = make_transform("prune_quant", weight, step=torch.tensor(0.04))

    def entropy(w: torch.Tensor) -> float:
        symbols = transform.symbols(w).reshape(-1)
        p = torch.bincount(symbols - symbols.min()).double()
        p = p[p > 0] / p.sum()
        return float(-(p * p.log2()).sum())

    plain = gptq_round(weight, hessian, column_quantizer(transform))
    aware = gptq_round(weight, hessian, column_quantizer(transform, rate_weight=1.0, reference=weight))
    assert entropy(aware) < entropy(plain) - 0.05
    codes = transform.codes(aware)
    assert torch.allclose(codes, torch.round(codes), atol=1e-3)  # on the grid
    error = lambda w: float(((w - weight) @ hessian[0] * (w - weight)).sum())  # noqa: E731
    assert error(plain) < error(aware) < 2.0 * error(plain)
    same = gptq_round(weight, hessian, column_quantizer(transform, rate_weight=0.0, reference=weight))
    assert torch.equal(same, plain)


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(6, 6, 3, padding=1, groups=6),
        nn.Conv2d(6, 12, 5, stride=2, padding=2, groups=6),  # depth multiplier 2, stride 2
        nn.Conv2d(4, 4, (3, 5), stride=(2, 1), padding=(0, 2), dilation=(1, 2), groups=4),
        nn.Conv2d(1, 3, 3),  # one input channel: groups == in_channels
    ],
)
def test_depthwise_columns_equal_the_im2col_ones(conv):
    """The depthwise shortcut (shifted views instead of im2col) gives the very same columns, so GPTQ's
    Hessians and every file written stay bit for bit what they were."""
    x = torch.randn(3, conv.in_channels, 11, 13)
    assert torch.equal(grouped_columns(conv, x), _unfolded_columns(conv, x))
