"""compress(): true-file ratios land on target, decoded weights keep accuracy, every tensor is accounted for."""

import copy
import time

import numpy as np
import pytest
import torch
from torch import nn

from compression_core import CompressionCanceled, CompressionConfig, ConfigError, compress, load_l2, zoo
from compression_core.coding import read_manifest
from compression_core.recon.budget import UnreachableTargetError
from compression_core.records import CodedTensor, StoredTensor

FAST = CompressionConfig(rounds=1, transform_iters=40, weight_iters=40, batch_size=64)


@pytest.mark.parametrize("target", [5.0, 10.0, 15.0, 20.0, 25.0])
def test_true_file_ratio_lands_within_3_percent_and_decodes_bit_exact(digits, tmp_path, target):
    """The issue asks ±3 %; the controller promises more: never larger than the target, at most 1 % smaller,
    with the caller's metadata inside the file."""
    model, split = digits
    result = compress(
        model,
        split.train_x[:400],
        target,
        config=FAST,
        metadata={"source_sha256": "ab" * 32, "architecture": "digits_cnn", "note": "x" * 300},
    )
    path = tmp_path / "m.l2"
    summary = result.write(path)
    true_ratio = summary.original_bytes / path.stat().st_size
    assert summary.file_bytes == summary.estimated_file_bytes == path.stat().st_size
    in_file = {e.name: e.payload_bytes for e in read_manifest(path).entries}
    assert {r.name: r.bytes for r in result.layers} == in_file
    assert 1.0 <= true_ratio / target <= 1.0 / (1.0 - FAST.ratio_tolerance) + 1e-9
    decoded = load_l2(path)
    assert list(decoded) == list(model.state_dict())
    for name, tensor in result.state_dict.items():
        assert decoded[name].dtype == tensor.dtype
        assert torch.equal(decoded[name], tensor), name


def test_10x_keeps_test_accuracy_within_0_3_points(digits):
    model, split = digits
    fp32 = zoo.accuracy(model, split.test_x, split.test_y)
    result = compress(
        model,
        split.train_x[:512],
        10.0,
        config=CompressionConfig(rounds=2, transform_iters=80, weight_iters=80),
    )
    decoded = zoo.DigitsCNN()
    decoded.load_state_dict(result.state_dict)
    assert zoo.accuracy(decoded, split.test_x, split.test_y) >= fp32 - 0.003
    assert result.evaluation["holdout_samples"] > 0


def test_every_state_dict_entry_is_coded_or_stored_and_counted(digits):
    model, split = digits
    result = compress(model, split.train_x[:200], 8.0, config=FAST)
    sd = model.state_dict()
    names = [r.name for r in result.contents.records]
    assert names == list(sd)
    kinds = {r.name: type(r) for r in result.contents.records}
    assert kinds["features.0.weight"] is CodedTensor
    assert kinds["features.1.running_var"] is StoredTensor
    assert kinds["features.1.num_batches_tracked"] is StoredTensor
    expected_original = sum(4 * t.numel() if t.is_floating_point() else 8 * t.numel() for t in sd.values())
    assert result.summary.original_bytes == expected_original
    for layer in result.layers:
        if layer.mode == "coded":
            assert layer.levels >= 1 and layer.bit_width == pytest.approx(np.log2(layer.levels))
            assert 0.0 <= layer.sparsity <= 1.0 and layer.entropy_bits <= layer.bit_width + 1e-9


def test_same_seed_gives_identical_artifact_on_cpu(digits):
    model, split = digits
    cfg = CompressionConfig(rounds=1, transform_iters=10, weight_iters=10, seed=3)
    a = compress(model, split.train_x[:128], 10.0, config=cfg)
    b = compress(model, split.train_x[:128], 10.0, config=cfg)
    for ra, rb in zip(a.contents.records, b.contents.records, strict=True):
        if isinstance(ra, CodedTensor):
            assert np.array_equal(ra.symbols, rb.symbols) and ra.params.keys() == rb.params.keys()
            for k in ra.params:
                assert np.array_equal(ra.params[k], rb.params[k])
        else:
            assert ra.data == rb.data


def test_progress_reports_phases_and_cancel_stops_the_run(digits):
    model, split = digits
    events = []
    compress(
        model,
        split.train_x[:64],
        10.0,
        config=CompressionConfig(rounds=1, transform_iters=5, weight_iters=5),
        progress=events.append,
    )
    phases = [e.phase for e in events]
    assert {"start", "transform", "weights", "finalize", "done"} <= set(phases)
    assert events[-1].fraction == 1.0
    assert all(0.0 <= e.fraction <= 1.0 for e in events)
    calls = []

    def cancel_after_three():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(CompressionCanceled):
        compress(model, split.train_x[:64], 10.0, config=FAST, should_cancel=cancel_after_three)


def test_batchnorm_stage_reports_its_own_progress(digits):
    """The BatchNorm stage tells how far it is after each of its pieces, so the ETA follows its real pace
    instead of an up-front price (which was a fifth too low on EfficientNet-Lite0)."""
    model, split = digits
    events = []
    config = CompressionConfig.from_dict({"preset": "fast", "bn_recalibration": True})  # fast skips it by default
    result = compress(model, split.train_x[:128], 10.0, config=config, progress=events.append)
    assert result.evaluation["batchnorm_recalibration"]["applied"]
    in_stage = [e.fraction for e in events if e.phase == "bn_recalibration"]
    assert len(in_stage) == 9  # the start and each of its eight pieces
    assert all(0.0 < f < 1.0 for f in in_stage)
    assert "batchnorm" in result.evaluation["stages"]


def test_fast_skips_the_batchnorm_stage_only_after_gptq_rounding(digits):
    """GPTQ already compensates the output shifts the stage would correct, so ``fast`` skips it (and does not
    price it) after GPTQ rounding; with rounding to nearest, and in the default preset, it runs."""
    model, split = digits
    events = []
    fast = CompressionConfig.from_dict({"preset": "fast"})
    gptq = compress(model, split.train_x[:128], 10.0, config=fast, progress=events.append)
    assert gptq.evaluation["selection"]["kept"] != "start"
    note = gptq.evaluation["batchnorm_recalibration"]
    assert not note["applied"] and "GPTQ" in note["skipped"]
    assert not [e for e in events if e.phase == "bn_recalibration"]
    assert gptq.evaluation["stages"]["batchnorm"]["estimated"] == 0.0
    nearest = CompressionConfig.from_dict({"preset": "fast", "rounding": "nearest"})
    for config in (nearest, CompressionConfig()):
        note = compress(model, split.train_x[:128], 10.0, config=config).evaluation["batchnorm_recalibration"]
        assert note["applied"] and "distance_before" in note


def test_original_model_is_not_modified(digits):
    model, split = digits
    before = copy.deepcopy(model.state_dict())
    compress(
        model, split.train_x[:64], 10.0, config=CompressionConfig(rounds=1, transform_iters=3, weight_iters=3)
    )
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_unreachable_target_and_bad_options_raise_clear_errors(digits):
    model, split = digits
    with pytest.raises(UnreachableTargetError, match="lower the target ratio"):
        compress(model, split.train_x[:32], 5000.0, config=FAST)
    with pytest.raises(ConfigError, match="target_ratio"):
        compress(model, split.train_x[:32], 0.5)
    with pytest.raises(ConfigError, match="kernel"):
        CompressionConfig(kernel="gauss")
    with pytest.raises(ConfigError, match="unknown option"):
        CompressionConfig.from_dict({"iterations": 3})


class TwoInputs(nn.Module):
    """Dict inputs and a dict output, like a transformer head."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 96)
        self.b = nn.Linear(32, 96)
        self.head = nn.Linear(96, 8)

    def forward(self, x, y):
        h = torch.relu(self.a(x) + self.b(y))
        return {"logits": self.head(h), "hidden": h, "mask": x > 0}


@pytest.mark.parametrize("kind", ["linear", "prune_quant", "log", "exp"])
def test_dict_inputs_and_outputs_work_for_every_transform(kind, tmp_path):
    torch.manual_seed(0)
    model = TwoInputs().eval()
    inputs = {"x": torch.randn(96, 64), "y": torch.randn(96, 32)}
    result = compress(
        model,
        inputs,
        6.0,
        config=CompressionConfig(
            transform=kind, rounds=1, transform_iters=15, weight_iters=15, per_channel=kind == "log"
        ),
    )
    path = tmp_path / "two.l2"
    summary = result.write(path)
    assert abs(summary.true_ratio / 6.0 - 1.0) <= 0.03
    assert summary.file_bytes == summary.estimated_file_bytes
    assert result.contents.records[0].kind == kind
    assert result.evaluation["holdout_samples"] > 0


def test_learned_weights_are_written_only_when_they_beat_the_start_on_unseen_samples(digits):
    """A wrecking schedule (huge weight learning rate) must fall back to the start, bit for bit; GPTQ
    rounding, which does help, is kept. Both distances are reported."""
    model, split = digits
    calibration = split.train_x[:300]
    start_only = compress(model, calibration, 12.0, config=CompressionConfig(rounds=0, rounding="nearest"))
    wrecked = compress(
        model, calibration, 12.0,
        config=CompressionConfig(rounds=1, transform_iters=0, weight_iters=10, weight_lr=5.0, rounding="nearest"),
    )
    chosen = wrecked.evaluation["selection"]
    assert chosen["kept"] == "start" and chosen["optimized_distance"] >= chosen["start_distance"]
    assert chosen["samples"] >= 8
    assert all(torch.equal(wrecked.state_dict[k], v) for k, v in start_only.state_dict.items())
    assert wrecked.summary.extra["selection"] == chosen
    rounded = compress(
        model, calibration, 12.0, config=CompressionConfig(rounds=0, rounding="gptq", gptq_asymmetric=False)
    )
    chosen = rounded.evaluation["selection"]
    assert chosen["kept"] == "optimized" and chosen["optimized_distance"] < chosen["start_distance"]


def test_a_diverging_schedule_stops_at_its_last_finite_state_and_says_so(digits):
    """A transform learning rate far too large drives the steps to infinity within a few iterations: the run
    must not crash on NaN codes; the schedule stops, the event says why, and a finite file is written."""
    model, split = digits
    events = []
    result = compress(
        model,
        split.train_x[:300],
        12.0,
        config=CompressionConfig(rounds=1, transform_iters=15, weight_iters=0, transform_lr=30.0, rounding="nearest"),
        progress=events.append,
    )
    assert any("transform phase diverged" in e.message for e in events)
    assert all(torch.isfinite(v).all() for v in result.state_dict.values() if v.is_floating_point())


def test_a_longer_schedule_keeps_the_shorter_presets_result_as_a_candidate(digits):
    """With gradient phases and GPTQ, the GPTQ-rounded start (what `fast` writes) is judged beside the learned
    weights: a wrecking schedule writes exactly what the schedule without phases writes."""
    model, split = digits
    calibration = split.train_x[:400]
    fast = compress(model, calibration, 12.0, config=CompressionConfig(rounds=0, rounding="gptq"))
    wrecked = compress(
        model, calibration, 12.0,
        config=CompressionConfig(rounds=1, transform_iters=0, weight_iters=10, weight_lr=5.0, rounding="gptq"),
    )
    chosen = wrecked.evaluation["selection"]
    assert set(chosen) >= {"start_distance", "gptq_distance", "optimized_distance"}
    # The default (`balanced`) also rounds asymmetrically: either GPTQ candidate may win, the schedule may not.
    assert chosen["kept"] in ("gptq", "asymmetric")
    assert chosen["optimized_distance"] > chosen[f"{chosen['kept']}_distance"]
    assert all(torch.equal(wrecked.state_dict[k], v) for k, v in fast.state_dict.items())


def test_a_longer_candidate_is_kept_only_when_the_samples_can_tell_it_is_closer():
    """Paired test on per-sample distances: a consistent gain wins, a gain within the samples' noise keeps the
    shorter candidate, and a later candidate is compared with what was kept so far."""
    from compression_core.compressor import paired_choice

    gen = torch.Generator().manual_seed(0)
    start = 1.0 + 0.1 * torch.rand(23, generator=gen)
    noise = 0.3 * torch.randn(23, generator=gen)
    consistent = {"start": start, "gptq": start - 0.5}
    kept, z = paired_choice(consistent, 2.0)
    assert kept == "gptq" and (z["gptq"] is None or z["gptq"] > 2.0)
    noisy = {"start": start, "gptq": start - 0.5, "optimized": start - 0.5 - 0.02 + noise}
    kept, z = paired_choice(noisy, 2.0)
    assert kept == "gptq" and abs(z["optimized"]) < 2.0
    clear = {**noisy, "optimized": start - 0.7 + 0.01 * noise}
    kept, z = paired_choice(clear, 2.0)
    assert kept == "optimized" and z["optimized"] > 2.0
    worse = {"start": start, "gptq": start + 0.2}
    assert paired_choice(worse, 2.0)[0] == "start"


def test_per_sample_distances_average_to_the_distance_with_and_without_a_token_mask():
    from compression_core.recon.losses import distillation_distance, per_sample_distances

    gen = torch.Generator().manual_seed(1)
    teacher = [torch.randn(6, 10, generator=gen), torch.randn(6, 4, 3, generator=gen)]
    student = [t + 0.1 * torch.randn(t.shape, generator=gen) for t in teacher]
    mask = torch.tensor([[1, 1, 1, 0]] * 3 + [[1, 0, 0, 0]] * 3)
    for m in (None, mask):
        shares = per_sample_distances(student, teacher, m)
        assert shares.shape == (6,)
        assert float(shares.mean()) == pytest.approx(float(distillation_distance(student, teacher, m)), rel=1e-5)


class _PeriodicallySlowForward(nn.Module):
    """A forward that takes ``fast`` seconds, except one call in ``period`` that takes ``slow``."""

    def __init__(self, fast: float, slow: float, period: int) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)
        self.fast, self.slow, self.period, self.calls = fast, slow, period, 0

    def forward(self, x):
        self.calls += 1
        time.sleep(self.slow if self.calls % self.period == 0 else self.fast)
        return self.linear(x)


def test_the_forward_timing_that_prices_later_stages_ignores_slow_passes():
    from compression_core.compressor import _seconds_per_sample

    # Call 1 warms up; of the five timed calls, 3 and 6 are slow.
    model = _PeriodicallySlowForward(fast=0.02, slow=0.5, period=3)
    config = CompressionConfig(batch_size=4)
    per_sample = _seconds_per_sample(model, torch.zeros(8, 4), config, torch.device("cpu"))
    # A mean of the timed passes would be ≈ (2·0.5 + 3·0.02)/5 per batch; the median stays at a fast pass.
    assert 0.02 / 4 <= per_sample < 0.06 / 4


def test_gptq_gain_allocation_reports_each_layers_gain_and_changes_the_steps(digits):
    model, split = digits
    runs = {
        on: compress(
            model,
            split.train_x[:128],
            10.0,
            config=CompressionConfig.from_dict({"preset": "fast", "gptq_gain_allocation": on}),
        )
        for on in (True, False)
    }
    gains = runs[True].evaluation["gptq_gains"]
    convolutions = [n for n, p in model.named_parameters() if p.dim() >= 2]
    assert sorted(gains) == sorted(convolutions)
    assert all(0.0 < g <= 4.0 for g in gains.values())
    assert min(gains.values()) < 0.9  # digits' correlated pixels: compensation pays somewhere
    assert "gains" in runs[True].evaluation["stages"]
    assert "gptq_gains" not in runs[False].evaluation and "gains" not in runs[False].evaluation["stages"]
    # the layers whose folds chose another damping than gptq_damping, each from the preset's choices
    assert set(runs[True].evaluation["gptq_layer_dampings"]) <= set(convolutions)
    assert set(runs[True].evaluation["gptq_layer_dampings"].values()) <= {1.0}
    steps = {on: {r.name: r.params for r in run.contents.records if isinstance(r, CodedTensor)} for on, run in
             runs.items()}
    assert any(not np.array_equal(steps[True][n]["s"], steps[False][n]["s"]) for n in convolutions if "s" in
               steps[True][n])
    for run in runs.values():
        assert run.summary.estimated_file_bytes <= run.summary.original_bytes / 10.0
