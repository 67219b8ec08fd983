"""BatchNorm running statistics coded at their layer's β/γ precision (`recon/bn_statistics.py`)."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from compression_core import CompressionConfig, compress
from compression_core.coding import encode_l2, load_l2
from compression_core.compressor import decode_state_dict
from compression_core.recon.bn_statistics import code_statistics, plan_statistics, snap_statistics
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
    assert all(plan.grid is None for plan in plans.values())
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


def _decoded_statistics(contents: ArtifactContents, model: nn.Module) -> dict[str, torch.Tensor]:
    return {k.removeprefix("0."): v for k, v in decode_state_dict(contents, model.state_dict()).items()}


def test_snapped_statistics_keep_the_function_and_decode_exactly_in_a_few_bits():
    bn = _bn_layer()
    model = nn.Sequential(bn).eval()
    original = {k: v.clone() for k, v in bn.state_dict().items()}
    x = torch.randn(64, 96, 3, 3) * torch.sqrt(bn.running_var + 1).view(1, -1, 1, 1)
    before = model(x)
    grid = 0.125
    plans = snap_statistics(model, plan_statistics(model, {"0.weight", "0.bias"}, 1.0), grid)
    assert {p.kind for p in plans.values() if p.grid is not None} == {"linear", "log"}
    # Eval-mode outputs unchanged: γ and β took what the statistics lost.
    assert torch.allclose(model(x), before, atol=1e-5, rtol=1e-5)
    # The statistics moved by at most half a grid step: σ within e^(grid/4), the mean within grid/2 · RMS σ.
    live = original["running_var"] > 0
    log_ratio = (bn.running_var[live].double() / original["running_var"][live].double()).log()
    assert float(log_ratio.abs().max()) <= grid / 2 + 1e-6
    rms_sigma = float(torch.sqrt(original["running_var"] + bn.eps).pow(2).mean().sqrt())
    assert float((bn.running_mean - original["running_mean"]).abs().max()) <= grid / 2 * rms_sigma * 1.001
    assert bn.running_var[0] == 0 and not torch.equal(bn.weight, original["weight"])
    # Coded on the grid they decode bit for bit, in fewer bytes than at their anchors' step.
    step = 0.01
    snapped = code_statistics(_contents_with_anchor_steps(model, step), plans, model.state_dict())
    decoded = _decoded_statistics(snapped, model)
    for name in ("running_mean", "running_var"):
        assert torch.equal(decoded[name], bn.state_dict()[name])
    unsnapped = {name: replace(plan, grid=None) for name, plan in plans.items()}
    tied = code_statistics(_contents_with_anchor_steps(model, step), unsnapped, model.state_dict())
    assert len(encode_l2(snapped)) < len(encode_l2(tied)) - 40


def test_statistics_moved_off_their_grid_go_back_on_it_and_gamma_beta_take_the_difference():
    bn = _bn_layer()
    model = nn.Sequential(bn).eval()
    plans = snap_statistics(model, plan_statistics(model, {"0.weight", "0.bias"}, 1.0), 0.125)
    step = 0.01
    contents = _contents_with_anchor_steps(model, step)
    decoded = _decoded_statistics(contents, model)  # γ and β as the file holds them
    # What the BatchNorm stage does: the means corrected, the variances re-estimated.
    moved = dict(model.state_dict())
    moved["0.running_mean"] = moved["0.running_mean"] + 0.37 * torch.randn(96)
    moved["0.running_var"] = moved["0.running_var"] * torch.exp(0.2 * torch.randn(96))
    coded = code_statistics(contents, plans, moved)
    records = {r.name: r for r in coded.records}
    for name in ("0.running_mean", "0.running_var"):
        assert records[name].params == plans[name].grid  # back on the grid: a few bits a value
    after = _decoded_statistics(coded, model)
    assert not torch.equal(after["running_mean"], moved["0.running_mean"])

    def affine(v: dict) -> tuple[torch.Tensor, torch.Tensor]:
        scale = v["weight"].double() / torch.sqrt(v["running_var"].double() + bn.eps)
        return scale, v["bias"].double() - scale * v["running_mean"].double()

    wanted = affine({**decoded, "running_mean": moved["0.running_mean"], "running_var": moved["0.running_var"]})
    got = affine(after)
    # The function the moved statistics gave, to within γ's and β's own rounding (half a step each).
    live = moved["0.running_var"] > 0
    scale_error = (got[0] - wanted[0]).abs() * torch.sqrt(after["running_var"].double() + bn.eps)
    assert float(scale_error[live].max()) <= step / 2 + 1e-6
    shift_error = (got[1] - wanted[1]) + (got[0] - wanted[0]) * after["running_mean"].double()
    assert float(shift_error[live].abs().max()) <= step / 2 + 1e-6


def test_compressed_statistics_lie_on_their_grid_and_cost_less(digits):
    model, split = digits
    configs = {g: CompressionConfig.from_dict({"preset": "fast", "bn_statistics_grid": g}) for g in (0.0, 0.125)}
    results = {grid: compress(model, split.train_x[:200], 8.0, config=config) for grid, config in configs.items()}
    names = ("features.8.running_mean", "features.8.running_var")
    sizes = {grid: sum(r.bytes for r in result.layers if r.name in names) for grid, result in results.items()}
    assert sizes[0.125] < 0.75 * sizes[0.0]
    gridded = results[0.125].state_dict
    sigma = torch.sqrt(model.state_dict()["features.8.running_var"] + 1e-5)
    # The mean sits on one grid step for the whole layer: 1/8 of its RMS σ.
    steps = gridded["features.8.running_mean"].double() / (0.125 * float(sigma.pow(2).mean().sqrt()))
    assert torch.allclose(steps, steps.round(), atol=1e-3)


def test_statistics_gamma_and_beta_cannot_absorb_are_coded_at_their_anchors_step():
    bn = _bn_layer()
    model = nn.Sequential(bn).eval()
    plans = snap_statistics(model, plan_statistics(model, {"0.weight", "0.bias"}, 1.0), 0.125)
    contents = _contents_with_anchor_steps(model, 0.01)
    # A re-estimated variance of 0 (a channel the decoded network never excites) with a moved mean: γ(μ̂ − μ)/σ
    # over σ = √eps would blow β far beyond its range.
    moved = dict(model.state_dict())
    moved["0.running_var"] = torch.zeros(96)
    moved["0.running_mean"] = moved["0.running_mean"] + 0.37
    coded = code_statistics(contents, plans, moved)
    records = {r.name: r for r in coded.records}
    assert records["0.running_mean"].params != plans["0.running_mean"].grid
    assert np.array_equal(records["0.bias"].symbols, {r.name: r for r in contents.records}["0.bias"].symbols)
    decoded = _decoded_statistics(coded, model)
    mean_step = float(records["0.running_mean"].params["s"])
    assert float((decoded["running_mean"] - moved["0.running_mean"]).abs().max()) <= mean_step
    assert torch.equal(decoded["running_var"], torch.zeros(96))
