"""Asymmetric GPTQ targets: W* solves the layer's least squares against the original output, and rounding
every layer against it, in network order, brings the compressed network's output closer than plain GPTQ."""

import copy

import pytest
import torch
from torch import nn

from compression_core import compress
from compression_core.config import CompressionConfig
from compression_core.progress import CompressionCanceled
from compression_core.recon import asymmetric
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


def test_a_weaker_correction_moves_the_target_part_of_the_way():
    torch.manual_seed(0)
    w, x = torch.randn(6, 10), torch.randn(10, 400)
    x_student = (torch.eye(10) + 0.3 * torch.randn(10, 10)) @ x
    h = (x_student @ x_student.t() / 400).unsqueeze(0)
    cross = (x @ x_student.t() / 400).unsqueeze(0)
    full = asymmetric_target(w, h, cross, damping=1.0)
    quarter = asymmetric_target(w, h, cross, damping=1.0, strength=0.25)
    assert (full - w).norm() > 0.05 * w.norm()
    assert torch.allclose(quarter, w + 0.25 * (full - w), atol=1e-5)


def _network():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 8 * 8, 10),
    ).eval().requires_grad_(False)


def _plans(model):
    """The state dict, every tensor's coding plan, and the names of the weights GPTQ rounds (the coded ones
    with 2+ dims)."""
    config = CompressionConfig(per_channel=False)
    sd = model.state_dict()
    plans = [plan_tensor(n, sd[n], True, config) for n in sd]
    return config, sd, plans, [p.name for p in plans if p.kind is not None and sd[p.name].dim() > 1]


def _gptq_rounded(model, inputs):
    """Every weight at 2 bits, rounded by plain GPTQ: the state, the rounded weights' names and the rounder."""
    config, sd, plans, weights = _plans(model)
    state = QuantizedState(sd, plans, config, dict.fromkeys(sd, 2.0))
    targets = {n: (w, t) for n, w, t in state.items() if n in weights}
    rounder = GptqRounder(model, targets, inputs, 32, torch.device("cpu"), max_samples=256)
    rounder.round_into()
    return state, weights, rounder


def _rounded_network(model, inputs, asymmetric: bool):
    state, weights, rounder = _gptq_rounded(model, inputs)
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


def test_weights_taken_after_the_stage_are_rounded_under_the_original_inputs():
    """A gradient phase after the stage (``paper``) hands the rounder its learned weights: they are fitted to the
    original network's inputs, so the stage's H̃ (the compressed network's) must not round them."""
    model = _network()
    torch.manual_seed(1)
    inputs = torch.randn(128, 3, 8, 8).cumsum(2).cumsum(3) / 8
    state, weights, rounder = _gptq_rounded(model, inputs)
    plain = {name: h.clone() for name, h in rounder.hessians.items()}
    retarget(model, state, rounder, inputs, 32, torch.device("cpu"), 256)
    assert not torch.equal(rounder.hessians[weights[-1]], plain[weights[-1]])  # the stage swapped it
    rounder.take_current_weights()
    assert all(torch.equal(rounder.hessians[name], plain[name]) for name in weights)
    assert all(torch.equal(rounder.originals[name], w) for name, w, _ in state.items() if name in weights)


def test_a_layer_whose_folds_chose_a_heavier_damping_gets_a_heavier_correction(monkeypatch):
    """The correction is a least-squares fit to the calibration samples: where the gains stage found a layer's
    calibration correlations less trustworthy (a heavier GPTQ damping), its correction is damped in proportion."""
    model = _network()
    torch.manual_seed(1)
    inputs = torch.randn(128, 3, 8, 8).cumsum(2).cumsum(3) / 8
    state, weights, rounder = _gptq_rounded(model, inputs)
    rounder.layer_dampings[weights[-1]] = 10.0 * rounder.damping
    used = []
    real = asymmetric.asymmetric_target

    def recording(weight, hessian, cross, damping, strength=1.0):
        used.append(damping)
        return real(weight, hessian, cross, damping, strength)

    monkeypatch.setattr(asymmetric, "asymmetric_target", recording)
    retarget(model, state, rounder, inputs, 32, torch.device("cpu"), 256)
    assert used == [pytest.approx(asymmetric.CORRECTION_DAMPING)] * (len(weights) - 1) + [
        pytest.approx(10.0 * asymmetric.CORRECTION_DAMPING)
    ]


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


def test_the_paper_preset_judges_its_learned_weights_against_every_shorter_candidate(digits):
    """``paper`` builds ``balanced``'s candidates (the GPTQ start, the asymmetric rounding) before its gradient
    phases, and keeps the learned weights only where they beat the candidate kept before them."""
    model, split = digits
    config = CompressionConfig.from_dict(
        {"preset": "paper", "rounds": 1, "transform_iters": 4, "weight_iters": 4, "batch_size": 32}
    )
    result = compress(model, split.train_x[:300], 20.0, config=config)
    selection = result.evaluation["selection"]
    distances = {k: selection[f"{k}_distance"] for k in ("start", "gptq", "asymmetric", "optimized")}
    assert selection["kept"] in distances and "asymmetric" in result.evaluation
    assert distances[selection["kept"]] <= distances["start"]


def test_a_cancel_stops_the_asymmetric_stage_between_layers(digits):
    """The stage measures and rounds one layer at a time (minutes on a large model): a cancel is honoured after
    the layer it arrives in, not at the end of the stage."""
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


def _retargeted_latents(model, inputs, **options):
    state, _, rounder = _gptq_rounded(model, inputs)
    note = retarget(model, state, rounder, inputs, 32, torch.device("cpu"), 256, **options)
    return [w.detach().clone() for _, w, _ in state.items()], note


class _Doubled(nn.Module):
    """A Sequential whose modules the model calls itself, changing the value between them."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))

    def forward(self, x):
        return self.body[2](2.0 * self.body[1](self.body[0](x)))


@pytest.mark.parametrize("make", [_network, lambda: _Doubled().eval().requires_grad_(False)])
def test_cached_block_inputs_give_what_running_from_the_inputs_gives(make, monkeypatch):
    """Within an nn.Sequential the next block's input is computed from the cached one instead of running both
    networks from the start for every layer; the codes are bit for bit those of the full passes, also when a
    model changes the value between a Sequential's modules (the bridge is checked and dropped) and when the
    cache lives on disk."""
    import compression_core.recon.asymmetric as asymmetric

    model = make()
    torch.manual_seed(1)
    inputs = torch.randn(96, 3, 8, 8).cumsum(2).cumsum(3) / 8
    segments = asymmetric._segments(model, [], inputs[:1], torch.device("cpu"))
    assert segments == []
    cached, note = _retargeted_latents(model, inputs)
    on_disk, disk_note = _retargeted_latents(model, inputs, cache_bytes=0)
    # compress plans the stage once, before GPTQ, on its own probe batch: any probe gives the same codes
    plan = asymmetric.plan_stage(model, _plans(model)[3], inputs[:4], torch.device("cpu"), 1 << 30)
    assert len(plan.layer_seconds) == len(cached) and plan.seconds_per_sample > 0  # one per rounded layer
    planned, _ = _retargeted_latents(model, inputs, plan=plan)
    monkeypatch.setattr(asymmetric, "_sequential_bridge", lambda *_: [])
    full_passes, _ = _retargeted_latents(model, inputs)
    assert all(torch.equal(a, b) for a, b in zip(cached, full_passes, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(on_disk, full_passes, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(planned, full_passes, strict=True))
    assert disk_note["spilled_bytes"] > 0 and disk_note["cache_peak_bytes"] == 0
    assert note["cache_peak_bytes"] > 0 and note["spilled_bytes"] == 0


def test_bridges_follow_the_sequential_and_are_dropped_when_the_model_changes_the_value():
    import compression_core.recon.asymmetric as asymmetric
    from compression_core.recon.blockwise import Block

    def bridges(model):
        layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
        units = [Block(name, module, [name + ".weight"]) for name, module in layers]
        segments = asymmetric._segments(model, units, torch.randn(1, 3, 8, 8), torch.device("cpu"))
        return [(s.block, s.bridge) for s in segments]

    assert bridges(_network()) == [("0", ["0", "1"]), ("2", ["2", "3", "4"]), ("5", [])]
    assert bridges(_Doubled().eval()) == [("body.0", []), ("body.2", [])]
