"""The fused quantizers of the uniform kinds give the same codes, the same ŵ and the same gradients as the
quantizer composed from the transform's own T and T⁻¹ with a straight-through rounding — per tensor and per
channel, through the rate (codes) and the distortion (ŵ) at once, in the dead zone and beyond the clamp."""

import pytest
import torch

from compression_core.transforms import make_transform, round_ste
from compression_core.transforms.base import MAX_CODE


def _composed(t, w, judged=None):
    codes = t.codes(w)
    return (codes if judged is None else codes.reshape(-1)[judged]), t.inverse(round_ste(codes), w)


def _losses(codes, quantized, probe_c, probe_q):
    # Non-trivial upstream gradients on both outputs: what the rate and the distortion send back.
    return (codes * probe_c).sum() + (quantized.pow(2) * probe_q).sum()


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("kind", ["prune_quant", "linear"])
@pytest.mark.parametrize("needs", ["both", "weights_only", "params_only"])
@pytest.mark.parametrize("subset", [False, True])
def test_fused_matches_composed_values_and_gradients(kind, per_channel, needs, subset):
    """``subset``: the counter judges 17 of the 90 codes (`counter_samples`), so only those carry a rate
    gradient."""
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(6, 5, 3, generator=gen, dtype=torch.float64)
    base[0, 0, 0] = 0.0  # exactly zero: sign(0) on both paths
    judged = torch.randperm(base.numel(), generator=gen)[:17].sort().values if subset else None
    probe_c = torch.randn(base.shape if judged is None else judged.shape, generator=gen, dtype=torch.float64)
    probe_q = torch.randn(base.shape, generator=gen, dtype=torch.float64)
    grads = []
    for fused in (True, False):
        t = make_transform(kind, base.float(), per_channel=per_channel, bits=3.0).double()
        w = base.clone().requires_grad_(needs != "params_only")
        t.requires_grad_(needs != "weights_only")
        codes, quantized = t.codes_and_quantized(w, judged) if fused else _composed(t, w, judged)
        _losses(codes, quantized, probe_c, probe_q).backward()
        grads.append((codes.detach(), quantized.detach(), w.grad, [p.grad for p in t.parameters()]))
    (c1, q1, gw1, gp1), (c2, q2, gw2, gp2) = grads
    torch.testing.assert_close(c1, c2)
    torch.testing.assert_close(q1, q2)
    if needs == "params_only":
        assert gw1 is None and gw2 is None
    else:
        torch.testing.assert_close(gw1, gw2)
    for a, b in zip(gp1, gp2, strict=True):
        if needs == "weights_only":
            assert a is None and b is None
        else:
            assert a is not None and float(a.abs().sum()) > 0
            torch.testing.assert_close(a, b)


def test_dead_zone_widened_past_a_level_still_matches():
    """A threshold e far above the step (as training can make it) puts most weights in the dead zone."""
    w = torch.linspace(-1.0, 1.0, 41, dtype=torch.float64).reshape(41, 1).requires_grad_()
    t = make_transform("prune_quant", w.detach().float(), step=torch.tensor(0.1)).double()
    with torch.no_grad():
        t.log_e.fill_(torch.tensor(0.45).log())
    composed = _composed(t, w)
    loss = _losses(*composed, torch.ones_like(w), torch.ones_like(w))
    reference = torch.autograd.grad(loss, [w, t.log_e, t.log_s])
    fused = t.codes_and_quantized(w)
    got = torch.autograd.grad(_losses(*fused, torch.ones_like(w), torch.ones_like(w)), [w, t.log_e, t.log_s])
    assert int((fused[0].detach().abs() < 0.5).sum()) >= 17  # |w| < 0.45
    for a, b in zip(got, reference, strict=True):
        torch.testing.assert_close(a, b)


def test_clamped_codes_pass_no_gradient():
    w = torch.tensor([[1.0], [3e6], [-3e6]], dtype=torch.float64, requires_grad=True)
    t = make_transform("linear", w.detach().float(), step=torch.tensor(1.0)).double()
    codes, quantized = t.codes_and_quantized(w)
    assert float(codes.detach().abs().max()) == MAX_CODE
    (codes.sum() + quantized.sum()).backward()
    assert w.grad[1:].abs().max() == 0 and w.grad[0] != 0
