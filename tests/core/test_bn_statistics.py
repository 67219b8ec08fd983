"""BatchNorm running statistics coded at their layer's β/γ precision (`recon/bn_statistics.py`)."""

import numpy as np
import pytest
import torch
from torch import nn

from compression_core import CompressionConfig, compress
from compression_core.coding import encode_l2, load_l2
from compression_core.compressor import decode_state_dict
from compression_core.recon.bn_statistics import code_statistics, plan_statistics
from compression_core.records import ArtifactContents, CodedTensor, StoredTensor


def _bn_layer(channels: int = 96) -> nn.BatchNorm2d:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.requires_grad_(False)
        bn.weight.copy_(torch.rand(channels) * 2 + 0.1)
        bn.bias.normal_()
        bn.running_mean.normal_(0, 0.5)
        bn.running_var.copy_(torch.exp(torch.randn(channels) * 1.5))  # spans ~4 orders of magnitude
        bn.running_var[0] = bn.weight[0] = 0.0  # a dead channel
    return bn


def _contents_with_anchor_steps(model: nn.Module, step: float) -> ArtifactContents:
    """γ and β coded with one step, everything else stored."""
    records = []
    for name, t in model.state_dict().items():
        if name.endswith(("weight", "bias")):
            symbols = np.rint(t.numpy() / step).astype(np.int32)
            records.append(
                CodedTensor(name, tuple(t.shape), "float32", "linear", {"s": np.asarray(step, np.float32)}, symbols)
            )
        else:
            records.append(StoredTensor(name, tuple(t.shape), str(t.dtype).removeprefix("torch."), t.numpy().tobytes()))
    return ArtifactContents(records)


@pytest.mark.parametrize("precision", [0.25, 1.0])
def test_statistics_errors_match_their_layers_beta_and_gamma_precision(precision):
    bn = _bn_layer()
    model = nn.Sequential(bn)
    plans = plan_statistics(model, {"0.weight", "0.bias"}, precision)
    assert {(name, p.kind) for name, p in plans.items()} == {("0.running_mean", "linear"), ("0.running_var", "log")}
    step = 0.01
    coded = code_statistics(_contents_with_anchor_steps(model, step), plans, model.state_dict())
    values = {k.removeprefix("0."): v for k, v in decode_state_dict(coded, model.state_dict()).items()}
    sigma = torch.sqrt(bn.running_var + bn.eps)
    # Output error of the mean: γ Δμ / σ; its RMS over channels is at most precision × β's worst error s/2.
    mean_error = bn.weight * (values["running_mean"] - bn.running_mean) / sigma
    assert float(mean_error.pow(2).mean().sqrt()) <= precision * step / 2 + 1e-9
    # Output error of the variance: γ Δ(log var) / 2, likewise bounded by γ's step.
    var = bn.running_var
    live = var > 0
    log_error = bn.weight[live] * (values["running_var"][live].double().log() - var[live].double().log()) / 2
    assert float(log_error.pow(2).mean().sqrt()) <= precision * step / 2 * 1.2
    assert values["running_var"][0] == 0 and bool((values["running_var"][live] > 0).all())
    # Fewer bits than fp32 even for this spread-out layer.
    raw = encode_l2(_contents_with_anchor_steps(model, step))
    assert len(encode_l2(coded)) < len(raw)


def test_statistics_are_stored_exactly_when_gamma_or_beta_is_not_coded():
    bn = _bn_layer()
    assert plan_statistics(nn.Sequential(bn), {"0.weight"}, 0.5) == {}


def test_compressed_bn_model_codes_its_statistics_and_decodes_them_bit_exact(digits, tmp_path):
    model, split = digits
    result = compress(model, split.train_x[:200], 8.0, config=CompressionConfig.from_dict({"preset": "fast"}))
    kinds = {r.name: (type(r), getattr(r, "kind", None)) for r in result.contents.records}
    assert kinds["features.8.running_mean"] == (CodedTensor, "linear")  # BN(64): γ and β are coded
    assert kinds["features.8.running_var"] == (CodedTensor, "log")
    assert kinds["features.1.running_var"][0] is StoredTensor  # BN(16): γ, β below min_coded_numel
    summary = result.write(tmp_path / "m.l2")
    assert 8.0 <= summary.true_ratio <= 8.0 / (1 - 0.01)
    decoded = load_l2(tmp_path / "m.l2")
    for name in ("features.8.running_mean", "features.8.running_var"):
        assert torch.equal(decoded[name], result.state_dict[name])
    original = model.state_dict()["features.8.running_var"]
    assert torch.allclose(result.state_dict["features.8.running_var"], original, rtol=0.5)


def test_precision_zero_stores_statistics_as_fp32(digits):
    model, split = digits
    config = CompressionConfig.from_dict({"preset": "fast", "bn_statistics_precision": 0})
    result = compress(model, split.train_x[:200], 8.0, config=config)
    assert all(isinstance(r, StoredTensor) for r in result.contents.records if "running" in r.name)
