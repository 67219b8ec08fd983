"""Asymmetric GPTQ targets: W* solves the layer's least squares against the original output, and rounding
every layer against it, in network order, brings the compressed network's output closer than plain GPTQ."""

import copy

import pytest
import torch
from torch import nn

from compression_core import compress
from compression_core.config import CompressionConfig
from compression_core.progress import CompressionCanceled
from compression_core.recon.asymmetric import asymmetric_target, retarget
from compression_core.recon.gptq import GptqRounder
from compression_core.recon.state import QuantizedState
from compression_core.transforms import plan_tensor


def test_without_error_upstream_the_target_is_the_weight():
    torch.manual_seed(0)
    w, x = torch.randn(6, 10), torch.randn(10, 400)
    h = (x @ x.t() / 400).unsqueeze(0)
    assert torch.allclose(asymmetric_target(w, h, h.clone(), damping=0.1), w, atol=1e-6)


def test_the_target_solves_the_least_squares_against_the_original_output():
    torch.manual_seed(0)
    w, x = torch.randn(6, 10), torch.randn(10, 400)
    # an upstream error the layer can undo (a linear distortion of its inputs) plus one it cannot (noise)
    x_student = (torch.eye(10) + 0.3 * torch.randn(10, 10)) @ x + 0.05 * torch.randn(10, 400)
    h, cross = x_student @ x_student.t() / 400, x @ x_student.t() / 400
    target = asymmetric_target(w, h.unsqueeze(0), cross.unsqueeze(0), damping=1e-9)
    solution = torch.linalg.lstsq(x_student.t().double(), (w @ x).t().double()).solution.t().float()
    assert torch.allclose(target, solution, atol=1e-4)
    # and it fits the original output better than the original weight does on the student's inputs
    assert (target @ x_student - w @ x).pow(2).mean() < 0.1 * (w @ x_student - w @ x).pow(2).mean()


def _network():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 8 * 8, 10),
    ).eval().requires_grad_(False)


def _rounded_network(model, inputs, asymmetric: bool):
    config = CompressionConfig(per_channel=False)
    sd = model.state_dict()
    plans = [plan_tensor(n, sd[n], True, config) for n in sd]
    weights = [p.name for p in plans if p.kind is not None and sd[p.name].dim() > 1]
    state = QuantizedState(sd, plans, config, dict.fromkeys(sd, 2.0))
    targets = {n: (w, t) for n, w, t in state.items() if n in weights}
    rounder = GptqRounder(model, targets, inputs, 32, torch.device("cpu"), max_samples=256)
    rounder.round_into()
    note = retarget(model, state, rounder, inputs, 32, torch.device("cpu"), 256) if asymmetric else None
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for name, w, t in state.items():
            rounded.get_parameter(name).copy_(t.inverse(torch.round(t.codes(w)), w) if name in weights else w)
    return rounded, state, weights, note


def test_retargeting_brings_the_network_output_closer_and_keeps_the_codes_on_the_grid():
    model = _network()
    torch.manual_seed(1)
    inputs = torch.randn(256, 3, 8, 8).cumsum(2).cumsum(3) / 8
    held_out = torch.randn(256, 3, 8, 8).cumsum(2).cumsum(3) / 8
    reference = model(held_out)
    plain, _, _, _ = _rounded_network(model, inputs, asymmetric=False)
    retargeted, state, weights, note = _rounded_network(model, inputs, asymmetric=True)
    error_plain = float((plain(held_out) - reference).pow(2).mean())
    error_retargeted = float((retargeted(held_out) - reference).pow(2).mean())
    assert error_retargeted < 0.9 * error_plain
    assert [layer["layer"] for layer in note["layers"]] == weights  # one layer at a time, in order
    assert note["layers"][0]["moved"] == 0.0  # nothing upstream of the first layer
    with torch.no_grad():
        for name, w, t in state.items():
            if name in weights:
                assert torch.equal(t.inverse(torch.round(t.codes(w)), w), w), name


def test_compress_judges_the_asymmetric_rounding_beside_plain_gptq(digits):
    """The retargeted rounding is a candidate like any other: both distances are reported, the kept one is the
    closest that passed the paired test, and every rounded layer is listed with how far its target moved."""
    model, split = digits
    config = CompressionConfig.from_dict({"preset": "fast", "gptq_asymmetric": True})
    result = compress(model, split.train_x[:300], 20.0, config=config)
    selection = result.evaluation["selection"]
    assert {"start_distance", "gptq_distance", "optimized_distance"} <= set(selection)
    assert selection["kept"] in {"gptq", "optimized"}
    layers = [entry["layer"] for entry in result.evaluation["asymmetric"]["layers"]]
    assert layers == [n for n, v in model.state_dict().items() if n.endswith("weight") and v.dim() > 1]
    assert all(entry["moved"] >= 0.0 for entry in result.evaluation["asymmetric"]["layers"])
    plain = compress(model, split.train_x[:300], 20.0, config=CompressionConfig.from_dict({"preset": "fast"}))
    assert "asymmetric" not in plain.evaluation and "gptq_distance" not in plain.evaluation["selection"]


def test_a_cancel_stops_the_asymmetric_stage_between_layers(digits):
    """The stage runs two passes a layer (minutes on a large model): a cancel is honoured after the layer it
    arrives in, not at the end of the stage."""
    model, split = digits
    events = []

    def cancel_once_the_stage_began():
        return any(e.message and "each layer" in e.message for e in events)

    config = CompressionConfig.from_dict({"preset": "fast", "gptq_asymmetric": True})
    with pytest.raises(CompressionCanceled):
        compress(model, split.train_x[:200], 20.0, config=config, progress=events.append,
                 should_cancel=cancel_once_the_stage_began)
    stage = [i for i, e in enumerate(events) if e.message and "each layer" in e.message][0]
    assert len(events) - stage <= 2  # the stage's own report and at most one layer's
