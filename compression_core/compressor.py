"""`compress`: the L² pipeline from a model and unlabelled calibration inputs to a finished artifact.

Stages: plan every state_dict entry (coded or stored) → derive the bit budget from the target true-file ratio →
initialise transforms near that budget → alternate transform / weight optimization → land the exact file size
→ decode through the canonical T⁻¹ → BatchNorm recalibration (kept only if it helps) → evaluate the decoded
model on held-out samples.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import statistics
import time

import numpy as np
import torch

from compression_core.coding import payload_sizes
from compression_core.config import CompressionConfig, ConfigError
from compression_core.model_io import (
    Inputs,
    batches,
    call_model,
    float_outputs,
    num_samples,
    select,
    to_device,
)
from compression_core.progress import CancelCheck, ProgressCallback
from compression_core.recon.allocation import initial_bits, sensitivity_steps
from compression_core.recon.asymmetric import plan_stage, retarget
from compression_core.recon.augment import is_image_batch
from compression_core.recon.batchnorm import correct_batchnorm, has_batchnorm, recalibrate_batchnorm
from compression_core.recon.blockwise import BlockSettings, find_blocks, reconstruct
from compression_core.recon.bn_statistics import (
    ESTIMATED_BYTES_PER_VALUE,
    code_statistics,
    plan_statistics,
    snap_statistics,
)
from compression_core.recon.budget import (
    MAX_BITS_PER_WEIGHT,
    Budget,
    UnreachableTargetError,
    measure_file_bytes,
)
from compression_core.recon.finalize import build_contents, dtype_name, fit_target, replace_stored
from compression_core.recon.gptq import GptqRounder, estimate_rounding_seconds, gptq_layers, layer_hessians
from compression_core.recon.gptq_gain import damping_choices, measure_gains, rebalance_steps
from compression_core.recon.losses import distillation_distance, per_sample_distances
from compression_core.recon.schedule import Reporter, run_schedule, seconds_per_iteration
from compression_core.recon.sensitivity import weight_sensitivity
from compression_core.recon.state import QuantizedState
from compression_core.records import ArtifactContents, CodedTensor
from compression_core.report import RunSummary, file_metadata, layer_report, original_bytes
from compression_core.result import CompressionResult
from compression_core.timeline import Timeline, plan_compression, retime_roundings, revise
from compression_core.token_mask import token_mask
from compression_core.transforms import Transform, plan_tensor
from compression_core.transforms.levels import decode_symbols

log = logging.getLogger(__name__)
_SIDE_REFRESH_EVERY = 25
# How sure the selection must be that a longer schedule's candidate is closer than the shorter one's: its mean
# per-sample gain over that many standard errors. With 23 selection samples, `balanced` at 7× kept its learned
# transforms for a distance 8 % lower than the GPTQ start's and lost 3.7 points of agreement on 300 held-out
# crops (0.863 against 0.900; bench/results/ablation.md).
_SELECTION_Z = 2.0
# With equal_bits, bits per weight never start below this: the hinge brings layers down where they can.
_MIN_INIT_BITS = 1.5
# Forward passes timed to price every later stage (`_seconds_per_sample`).
_TIMED_PASSES = 5


def split_indices(n: int, holdout_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic split of sample indices into (optimization, held-out). Held-out samples are only used to
    report the decoded model's fidelity, never to optimize."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
    holdout = int(round(n * holdout_fraction)) if n >= 10 else 0
    return perm[holdout:].sort().values, perm[:holdout].sort().values


def decode_state_dict(contents: ArtifactContents, original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights a user decodes from the file: coded entries through the canonical T⁻¹, stored ones
    as written. Equal bit for bit to what `load_l2` returns."""
    out = {}
    for record in contents.records:
        ref = original[record.name]
        if isinstance(record, CodedTensor):
            values = decode_symbols(record.kind, record.params, record.symbols, record.shape, record.trellis)
            out[record.name] = torch.from_numpy(np.ascontiguousarray(values)).to(ref.dtype)
        else:
            raw = np.frombuffer(record.data, dtype=np.uint8).copy()
            out[record.name] = torch.from_numpy(raw).view(ref.dtype).reshape(record.shape).clone()
    return out


def _distance_on(model, reference_outputs, inputs: Inputs, config: CompressionConfig, device) -> float:
    outputs = _outputs_on(model, inputs, config.batch_size, device, config.output_keys)
    return float(distillation_distance(outputs, reference_outputs, token_mask(inputs)))


def _outputs_on(model, inputs: Inputs, batch_size: int, device, output_keys=()) -> list[torch.Tensor]:
    """The model's float outputs on every sample of ``inputs``, batch by batch, concatenated."""
    with torch.no_grad():
        parts = [
            float_outputs(call_model(model, to_device(b, device)), output_keys) for b in batches(inputs, batch_size)
        ]
        return [torch.cat(p) for p in zip(*parts, strict=True)]


def compress(
    model: torch.nn.Module,
    calibration: Inputs,
    target_ratio: float,
    *,
    config: CompressionConfig | None = None,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
    device: str | torch.device = "cpu",
    metadata: dict | None = None,
) -> CompressionResult:
    """Compress ``model`` so that its `.l2` file is ``target_ratio`` times smaller than its fp32 tensors.

    ``calibration`` holds unlabelled model inputs (tensor, tuple or dict with a shared sample dimension).
    ``metadata`` (JSON-serialisable: source digest, architecture, job id …) is stored in the file and counted
    in its size. Raises `ConfigError` for invalid options, `UnreachableTargetError` when the target cannot be met,
    `CompressionCanceled` when ``should_cancel`` returns True. The model itself is not modified.
    """
    started = time.monotonic()
    config = config or CompressionConfig()
    if not (target_ratio > 1.0 and np.isfinite(target_ratio)):
        raise ConfigError(f"target_ratio={target_ratio!r} is invalid: must be a finite number > 1")
    if config.augment and not is_image_batch(calibration):
        raise ConfigError(
            "augment=true re-crops image batches: it needs the calibration inputs as one float tensor of shape "
            "(N, C, H, W); leave augment off for these inputs"
        )
    device = torch.device(device)
    torch.manual_seed(config.seed)
    n = num_samples(calibration)
    train_idx, holdout_idx = split_indices(n, config.holdout_fraction, config.seed)
    train_inputs = select(calibration, train_idx)

    original_sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    work = copy.deepcopy(model).float().eval().to(device)
    for p in work.parameters():
        p.requires_grad_(False)
    param_names = {name for name, _ in work.named_parameters()}
    work_sd = work.state_dict()
    plans = [plan_tensor(name, work_sd[name], name in param_names, config) for name in original_sd]

    coded = [p for p in plans if p.kind is not None]
    vectors = {p.name: work_sd[p.name] for p in coded if p.kind == "linear" and work_sd[p.name].dim() < 2}
    weights = {p.name: work_sd[p.name] for p in coded if p.name not in vectors}
    total_original = sum(original_bytes((k, dtype_name(v), v.numel())) for k, v in original_sd.items())
    statistics = (
        plan_statistics(work, set(vectors), config.bn_statistics_precision) if config.bn_statistics_precision else {}
    )
    if statistics and config.bn_statistics_grid:
        # Before anything reads the weights: γ and β take the statistics' rounding, the function stays the same.
        statistics = snap_statistics(work, statistics, config.bn_statistics_grid)
    statistic_values = {name: work_sd[name] for name in statistics}
    stored_bytes = sum(
        original_sd[p.name].numel() * original_sd[p.name].element_size()
        for p in plans
        if p.kind is None and p.name not in statistics
    ) + int(ESTIMATED_BYTES_PER_VALUE * sum(original_sd[name].numel() for name in statistics))
    coded_numel = sum(original_sd[p.name].numel() for p in plans if p.kind is not None)
    budget = Budget(total_original, target_ratio, stored_bytes, coded_numel)
    name_bytes = sum(len(p.name.encode()) for p in plans) + 32 * len(plans)
    init_side = budget.side_bytes(name_bytes, 0, 0)
    init_bits = budget.payload_bits(init_side) / max(1, coded_numel)
    if coded_numel and init_bits <= 0:
        raise UnreachableTargetError(
            f"target ratio {target_ratio} leaves {budget.target_file_bytes:.0f} bytes, but stored tensors and "
            f"headers alone take about {init_side:.0f} bytes (ratio {total_original / init_side:.3g}); lower the "
            "target ratio well below that"
        )
    if coded_numel and init_bits > MAX_BITS_PER_WEIGHT:
        lowest = math.ceil(budget.lowest_reachable_ratio(init_side) * 1000) / 1000
        raise UnreachableTargetError(
            f"target ratio {target_ratio} is too low to reach: it needs about {init_bits:.1f} bits per coded "
            f"weight and the coder spends at most {MAX_BITS_PER_WEIGHT:g}; the lowest reachable ratio for this "
            f"model is {lowest:g}; ask for at least that"
        )
    iterations = config.rounds * (config.transform_iters + config.weight_iters)
    optimize_idx, select_idx = split_selection(num_samples(train_inputs), config.seed)
    batchnorm_pieces = _batchnorm_pieces(num_samples(train_inputs))
    # Only where GPTQ has layers to round (a model with none, e.g. every weight below min_coded_numel, has
    # nothing to retarget).
    asymmetric_layers = len(gptq_layers(work, weights)) if config.rounding == "gptq" and config.gptq_asymmetric else 0
    gptq_asymmetric = asymmetric_layers > 0
    # Planned when it will most likely run: with GPTQ rounding, the automatic setting (None) runs the stage
    # only if the rounded-to-nearest start is what gets kept.
    batchnorm_planned = has_batchnorm(work) and _batchnorm_stage_wanted(config, gptq_rounded=config.rounding == "gptq")
    planned_pieces = list(batchnorm_pieces.values()) if batchnorm_planned else []
    timeline = plan_compression(
        iterations=iterations,
        gptq=config.rounding == "gptq",
        gptq_gains=config.rounding == "gptq" and config.gptq_gain_allocation,
        gptq_dampings=len(damping_choices(config.gptq_damping, config.gptq_layer_dampings)),
        batch_size=config.batch_size,
        gptq_samples=min(config.gptq_samples, optimize_idx.numel()),
        selection_samples=select_idx.numel(),
        candidates=1 + int(config.rounding == "gptq") + int(gptq_asymmetric) + int(iterations > 0),
        batchnorm_samples=sum(samples for samples, _ in planned_pieces),
        batchnorm_builds=sum(builds for _, builds in planned_pieces),
        holdout_samples=holdout_idx.numel(),
        asymmetric_layers=asymmetric_layers,
        block_iters=config.block_iters,
        blocks=len(find_blocks(work, [p.name for p in coded], config.block_modules)) if config.block_iters else 0,
        optimize_samples=optimize_idx.numel(),
    )
    reporter = Reporter(iterations, progress, should_cancel)
    timeline.begin("probe")
    start_steps = None
    if config.allocation == "sensitivity" and weights:
        # Biases and norm scales join the allocation (one step per tensor even with per-channel steps): at a
        # fixed 8 bits, EfficientNet-Lite0's BatchNorm scales and shifts alone cost it 4.7 points of agreement
        # at 8× (KL 0.0083; 0.0015 when their steps follow their sensitivity), for 0.9 % of the weights.
        allocated = {**weights, **vectors}
        sensitivity = weight_sensitivity(
            work,
            list(allocated),
            train_inputs,
            config.batch_size,
            device,
            config.seed,
            batches=config.sensitivity_batches,
            per_channel=config.per_channel,
            output_keys=config.output_keys,
        )
        if config.per_channel:
            sensitivity.update({k: float(sensitivity[k].mean()) for k in vectors})
        init_side += 4 * _transform_floats(plans, work_sd, config.per_channel)
        start_steps, start_bits = sensitivity_steps(
            allocated, budget.payload_bits(init_side), sensitivity, exponent=config.sensitivity_exponent
        )
    else:
        start_bits = initial_bits(weights, vectors, budget.payload_bits(init_side), config.allocation, _MIN_INIT_BITS)
    # Measured, not derived from the probe: a backward pass costs this model some unknown multiple of a
    # forward (on EfficientNet-Lite0 the probe's time / 3 overestimated a forward 2.4×).
    timeline.measure("sample", _seconds_per_sample(work, train_inputs, config, device))
    if config.rounding == "gptq" and weights:
        # Accumulating x·xᵀ of every layer's unfolded inputs costs ~10× a forward (EfficientNet-Lite0): timed
        # rather than derived.
        timeline.measure("hessian_sample", _seconds_per_hessian_sample(work, weights, train_inputs, config, device))
    asymmetric_plan = None
    if gptq_asymmetric:
        # A batch of the stage's own size: from 8 samples the first layers' share of the work came out too
        # large (their passes from the inputs cost more per sample in small batches), and the ETA erred 31 %.
        probe = select(train_inputs, slice(0, min(num_samples(train_inputs), config.batch_size)))
        asymmetric_plan = plan_stage(work, weights, probe, device, config.block_cache_mb << 20)
        timeline.measure("asymmetric_sample", asymmetric_plan.seconds_per_sample)
    # Until the first landing measures them, a build (symbols + range coding) is guessed from the weight count
    # (~45 ns a weight on EfficientNet-Lite0) and the start lands in a few builds.
    timeline.measure("build", 5e-8 * coded_numel)
    timeline.measure("builds", 3.0)
    revise(timeline)
    state = QuantizedState({k: work_sd[k] for k in original_sd}, plans, config, start_bits, start_steps)
    state = state.to(device)
    # What GPTQ rounds (the state's own tensors and transforms): timed now, rounded after the start's landing.
    gptq_targets = {n: (w, t) for n, w, t in state.items()} if config.rounding == "gptq" else {}
    if gptq_targets:
        _time_roundings(timeline, work, gptq_targets, config)
        revise(timeline)
    if iterations:
        timeline.measure("iteration", seconds_per_iteration(work, state, train_inputs, config, device))
        revise(timeline)

    cache = {"step": 0, "value": init_side}

    def side_bytes() -> float:
        if cache["step"] % _SIDE_REFRESH_EVERY == 0:
            with torch.no_grad():
                levels = 0
                for _, w, t in state.items():
                    m = t.codes(w)
                    if m.numel():
                        levels += int(torch.round(m.max()) - torch.round(m.min())) + 1
                params = sum(p.numel() for p in state.transform_parameters())
            cache["value"] = budget.side_bytes(name_bytes, params, levels)
        cache["step"] += 1
        return cache["value"]

    reporter.emit(
        "start",
        0,
        timeline.fraction(),
        message=f"{len(state.names)} coded tensors, {coded_numel} weights, {init_bits:.3f} bits/weight budget",
    )

    def finished(trellis: frozenset[str] = frozenset()) -> ArtifactContents:
        contents = code_statistics(build_contents(state, original_sd, trellis), statistics, statistic_values)
        layers = [layer_report(r) for r in contents.records]
        contents.metadata = {**(metadata or {}), **file_metadata(layers, target_ratio, total_original)}
        return contents

    decodes_timed: set[bool] = set()  # which kinds of file (trellis-coded or not) had a decode timed

    def land(stage: str, phase: str, rounder: GptqRounder | None = None) -> tuple[ArtifactContents, int, float]:
        """Land the exact file size (GPTQ rounding afresh at every grid the controller tries, when given),
        timing each build for the progress estimate."""
        timeline.begin(stage)
        revise(timeline)
        builds = []
        trellis = frozenset(rounder.hessians) if rounder is not None and rounder.trellis else frozenset()

        def build() -> ArtifactContents:
            reporter.check_cancel()
            t0 = time.monotonic()
            if rounder is not None:
                rounder.round_into()
                timeline.measure("round", time.monotonic() - t0)
            t1 = time.monotonic()
            contents = finished(trellis)
            builds.append(time.monotonic() - t1)
            expected = timeline.unit("builds", 3.0)
            reporter.emit(phase, iterations, timeline.fraction(min(0.95, len(builds) / expected)))
            return contents

        landed = fit_target(state, build, measure_file_bytes, budget.target_file_bytes, config.ratio_tolerance)
        timeline.measure("build", sum(builds) / len(builds))
        timeline.measure("builds", len(builds))
        if bool(trellis) not in decodes_timed:  # trellis-coded files decode slower (symbols → levels)
            decodes_timed.add(bool(trellis))
            t0 = time.monotonic()
            decode_state_dict(landed[0], original_sd)
            timeline.measure("decode", time.monotonic() - t0)
        revise(timeline)
        return landed

    optimize_inputs = select(train_inputs, optimize_idx)
    # The start: the initial allocation, rounded to nearest, at exactly the target size. Everything after it
    # must beat it on samples it never optimized on, or the start is what gets written.
    candidates = {"start": land("land_start", "finalize")}
    rounder = None
    gptq_gains: dict[str, float] = {}
    if gptq_targets:
        timeline.begin("hessians")
        reporter.emit("gptq", 0, timeline.fraction(), message="measuring every linear/conv layer's input Hessian")
        rounder = GptqRounder(
            work,
            gptq_targets,
            optimize_inputs,
            config.batch_size,
            device,
            config.gptq_samples,
            damping=config.gptq_damping,
            rate_weight=config.gptq_rate_weight,
            trellis=config.gptq_trellis,
            on_batch=lambda done: reporter.emit("gptq", 0, timeline.fraction(done)),
            folds=config.gptq_gain_allocation,
        )
        if config.gptq_gain_allocation:
            timeline.begin("gains")
            reporter.emit("gptq", 0, timeline.fraction(), message="measuring GPTQ's held-out gain per layer")
            gptq_gains = measure_gains(
                rounder, config.gptq_layer_dampings, lambda: _gains_heartbeat(reporter, timeline)
            )
            if gptq_gains:  # with no layer in both folds nothing was rounded, and nothing timed
                retime_roundings(timeline)
            rounder.drop_folds()
            rebalance_steps(
                {n: t for n, _, t in state.items()},
                {n: w.numel() for n, w, _ in state.items()},
                gptq_gains,
                config.sensitivity_exponent,
            )
    with_phases = bool(state.names and iterations)
    with_blocks = bool(state.names and config.block_iters)
    unrounded = copy.deepcopy(state.state_dict()) if with_phases else None  # where the phases begin
    if rounder is not None:
        # fraction(1.0): the stage before is over (its estimate no longer counts), the landing not begun.
        reporter.emit("gptq", 0, timeline.fraction(1.0), message="second-order rounding of the initial allocation")
        # What the shorter preset writes stays a candidate under its own name when a later stage follows.
        later = with_phases or with_blocks or gptq_asymmetric
        candidates["gptq" if later else "optimized"] = land("land_gptq", "gptq", rounder)
    asymmetric_note = None
    if rounder is not None and gptq_asymmetric:
        timeline.begin("asymmetric")
        reporter.emit("gptq", 0, timeline.fraction(), message="rounding each layer against the original output")

        def layer_done(share: float) -> None:
            reporter.check_cancel()  # minutes on a large model: a cancel must not wait for the whole stage
            reporter.emit("gptq", 0, timeline.fraction(share))

        asymmetric_note = retarget(
            work,
            state,
            rounder,
            optimize_inputs,
            config.batch_size,
            device,
            config.gptq_samples,
            on_layer=layer_done,
            cache_bytes=config.block_cache_mb << 20,
            plan=asymmetric_plan,
            strength=config.gptq_asymmetric_strength,
        )
        later = with_phases or with_blocks
        candidates["asymmetric" if later else "optimized"] = land("land_asymmetric", "gptq", rounder)
    if with_blocks:  # from the rounded start's codes and grids
        timeline.begin("blocks")
        reporter.emit("blocks", 0, timeline.fraction(), message="block-wise reconstruction of the codes")
        blockwise_note = reconstruct(
            work,
            state,
            optimize_inputs,
            _block_settings(config),
            device,
            on_block=lambda done, total, _note: reporter.emit("blocks", 0, timeline.fraction(done / total)),
        )
        candidates["blocks" if with_phases else "optimized"] = land("land_blocks", "finalize")
    if with_phases:
        state.load_state_dict(unrounded)
        timeline.begin("schedule")
        run_schedule(
            work, state, optimize_inputs, config, budget, side_bytes, reporter, device, fraction_of=timeline.fraction
        )
        reporter.check_cancel()
        reporter.emit("finalize", iterations, timeline.fraction(1.0), message="landing the exact file size")
        if rounder is not None:
            rounder.take_current_weights()
        candidates["optimized"] = land("land_final", "finalize", rounder)
    selection = {"kept": "start"}
    timeline.begin("select")
    if len(candidates) > 1:
        reporter.emit("select", iterations, timeline.fraction(), message="choosing between start and learned weights")
        selection = _select_best(
            model, original_sd, {k: c[0] for k, c in candidates.items()}, train_inputs, select_idx, config, device
        )
    contents, file_bytes, log_alpha = candidates[selection["kept"]]
    decoded = decode_state_dict(contents, original_sd)
    reporter.check_cancel()
    timeline.begin("batchnorm")

    def recode(values: dict[str, torch.Tensor]):
        """The landed contents with recalibrated statistics (coded ones at their steps, coarser if the file
        would outgrow the target), their size and decoded weights; None when they cannot fit."""
        stored = {k: v for k, v in values.items() if k in decoded and not _is_coded(contents, k)}
        fitted = _fit_statistics(replace_stored(contents, stored), statistics, values, budget.target_file_bytes)
        return None if fitted is None else (*fitted, decode_state_dict(fitted[0], original_sd))

    sample, build = timeline.unit("sample", 0.0), timeline.unit("build", 0.0)
    recode_seconds = build + timeline.unit("decode", build)
    piece_seconds = [samples * sample + builds * recode_seconds for samples, builds in batchnorm_pieces.values()]
    done_by_piece = dict(zip(batchnorm_pieces, itertools.accumulate(piece_seconds), strict=True))
    stage_seconds = max(sum(piece_seconds), 1e-9)

    def advance(piece: str) -> None:
        """Tell the progress estimate how far the stage is, by the priced share of its pieces done, so that the
        stage's own pace takes over from its up-front price."""
        # A first report just above 0 at the start makes the pace count from the stage's first piece.
        within = 1e-6 if piece == "start" else done_by_piece[piece] / stage_seconds
        reporter.emit("bn_recalibration", 0, timeline.fraction(within), message="recalibrating BatchNorm statistics")

    gptq_rounded = rounder is not None and selection["kept"] != "start"
    decoded_model, bn_note, recoded = _maybe_recalibrate(
        model, decoded, train_inputs, config, device, advance, recode, _batchnorm_stage_wanted(config, gptq_rounded)
    )
    if recoded is not None:
        contents, file_bytes, decoded = recoded

    timeline.begin("evaluate")
    reporter.emit(
        "evaluate", iterations, timeline.fraction(), message="evaluating the decoded model on held-out samples"
    )
    evaluation = _evaluate(model, decoded_model, calibration, holdout_idx, config, device)
    evaluation["batchnorm_recalibration"] = bn_note
    evaluation["ratio_controller_log_alpha"] = log_alpha
    evaluation["selection"] = selection
    if with_blocks:
        evaluation["blockwise"] = blockwise_note
    if asymmetric_note is not None:
        evaluation["asymmetric"] = asymmetric_note
    if gptq_gains:
        evaluation["gptq_gains"] = {name: round(gain, 4) for name, gain in gptq_gains.items()}
        # Only the layers whose held-out error chose another damping than gptq_damping.
        evaluation["gptq_layer_dampings"] = dict(rounder.layer_dampings)
    timeline.finish()
    evaluation["stages"] = timeline.report()

    sizes = payload_sizes(contents)
    layers = [layer_report(r, sizes[r.name]) for r in contents.records]
    summary = RunSummary(
        target_ratio=target_ratio,
        original_bytes=total_original,
        estimated_file_bytes=file_bytes,
        seconds=time.monotonic() - started,
        extra={"selection": selection},
    )
    reporter.emit("done", iterations, 1.0, estimated_ratio=total_original / file_bytes)
    return CompressionResult(contents, decoded, layers, summary, reporter.history, evaluation)


def split_selection(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(optimization, selection) indices of the optimization samples: the selection samples (10 %, at least
    8) judge the learned weights against the start and are never optimized on. With fewer than 40 samples
    there is no room for them, and the judgement uses every sample (recorded as such)."""
    if n < 40:
        every = torch.arange(n)
        return every, every
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 15485863))
    k = max(8, n // 10)
    return perm[k:].sort().values, perm[:k].sort().values


def _select_best(model, original_sd, candidates, train_inputs, select_idx, config, device) -> dict:
    """Distillation distance of every candidate (the start, and the learned weights; for a longer schedule
    also the shorter one's GPTQ-rounded start), each decoded from its exact-size contents, on the selection
    samples. Candidates come shortest schedule first; a later one replaces the one kept so far only when it is
    closer by more than `_SELECTION_Z` standard errors of the two's per-sample difference (a paired test), so
    a few dozen samples that cannot tell two candidates apart keep the shorter one. The z of each comparison
    is in the note."""
    probe = select(train_inputs, select_idx)
    reference = copy.deepcopy(model).float().eval().to(device)
    ref_out = _outputs_on(reference, probe, config.batch_size, device, config.output_keys)
    shares = {}
    for label, contents in candidates.items():
        candidate = copy.deepcopy(model).float().eval().to(device)
        decoded = decode_state_dict(contents, original_sd)
        candidate.load_state_dict(_as_float(decoded))
        outputs = _outputs_on(candidate, probe, config.batch_size, device, config.output_keys)
        shares[label] = per_sample_distances(outputs, ref_out, token_mask(probe)).double()
    kept, z_scores = paired_choice(shares, _SELECTION_Z)
    return {
        "kept": kept,
        **{f"{label}_distance": float(value.mean()) for label, value in shares.items()},
        "z_scores": z_scores,
        "samples": int(select_idx.numel()),
    }


def paired_choice(shares: dict[str, torch.Tensor], z_needed: float) -> tuple[str, dict[str, float | None]]:
    """The candidate to keep from per-sample distances on the same samples, shortest schedule first: a later
    candidate replaces the one kept so far when its mean gain exceeds ``z_needed`` standard errors of the
    per-sample gains. Also each comparison's z (None where every sample gained the same)."""
    labels = list(shares)
    kept, z_scores = labels[0], {}
    for label in labels[1:]:
        gain = shares[kept] - shares[label]
        spread = float(gain.std()) / math.sqrt(gain.numel()) if gain.numel() > 1 else 0.0
        z = float(gain.mean()) / spread if spread > 0 else None
        z_scores[label] = z
        if float(gain.mean()) > 0 and (z is None or z > z_needed):
            kept = label
    return kept, z_scores


def _block_settings(config: CompressionConfig) -> BlockSettings:
    return BlockSettings(
        iterations=config.block_iters,
        lr=config.block_lr,
        input_mix=config.block_input_mix,
        batch_size=config.batch_size,
        cache_bytes=config.block_cache_mb * 2**20,
        patterns=config.block_modules,
        seed=config.seed,
        rate_weight=config.rate_weight,
    )


def _seconds_per_sample(model, inputs: Inputs, config: CompressionConfig, device) -> float:
    """Seconds per sample of a forward pass: the median of five timed passes of a batch, after a warm-up.
    Every later stage's estimate is a multiple of it. On EfficientNet-Lite0 (2 cores) the mean of two passes
    priced the same 23 s batchnorm stage at 15.5, 17.9, 23.7 and 31.0 s in four runs; one slow or fast pass
    moves a median of five less, for ~0.5 s more."""
    batch = to_device(select(inputs, slice(0, min(num_samples(inputs), config.batch_size))), device)
    timings = []
    with torch.no_grad():
        call_model(model, batch)
        for _ in range(_TIMED_PASSES):
            t0 = time.monotonic()
            call_model(model, batch)
            timings.append(time.monotonic() - t0)
    return statistics.median(timings) / max(1, num_samples(batch))


def _gains_heartbeat(reporter: Reporter, timeline: Timeline) -> None:
    """Between two layers' gain measurements: cancellation honoured, progress told from the stage's estimate.
    Not from a pace: the layers' costs differ too much for one in columns (the fifty of EfficientNet-Lite0,
    timed: a pace by columns put the remaining time at 0.4–0.7 of the real one, and the ETA 39 % short)."""
    reporter.check_cancel()
    reporter.emit("gptq", 0, timeline.fraction())


def _time_roundings(
    timeline: Timeline, model, targets: dict[str, tuple[torch.Tensor, Transform]], config: CompressionConfig
) -> None:
    """Time one GPTQ rounding of the network as the landing does it (``round``) and, with the gain allocation,
    one plain rounding (``plain_round``: each layer's gain costs two), before the first progress event. Priced
    from guesses until the Hessian pass, the landing was 10× low, the gains stage 1.6× high, and the first
    events' ETA 17–33 % short of the real remaining time (EfficientNet-Lite0, `bench/results/eta.md`)."""
    timeline.measure(
        "round",
        estimate_rounding_seconds(
            model, targets, config.gptq_damping, config.gptq_rate_weight, trellis=config.gptq_trellis
        ),
    )
    if config.gptq_gain_allocation:
        timeline.measure("plain_round", estimate_rounding_seconds(model, targets, config.gptq_damping))


def _seconds_per_hessian_sample(model, weights, inputs: Inputs, config: CompressionConfig, device) -> float:
    """One timed Hessian accumulation over a batch of up to 8 samples (what GPTQ's input statistics cost a
    sample; two samples underestimated it 1.5× on EfficientNet-Lite0)."""
    probe = select(inputs, slice(0, min(num_samples(inputs), config.batch_size, 8)))
    t0 = time.monotonic()
    layer_hessians(model, gptq_layers(model, weights), probe, config.batch_size, device, num_samples(probe))
    return (time.monotonic() - t0) / max(1, num_samples(probe))


def _transform_floats(plans, tensors: dict[str, torch.Tensor], per_channel: bool) -> int:
    """How many float32 transform parameters the file will carry (two per tensor or per output channel)."""
    total = 0
    for p in plans:
        if p.kind is not None:
            t = tensors[p.name]
            total += 2 * (t.shape[0] if per_channel and t.dim() >= 1 else 1)
    return total


def _is_coded(contents: ArtifactContents, name: str) -> bool:
    return any(isinstance(r, CodedTensor) and r.name == name for r in contents.records)


def _fit_statistics(contents, statistics, values, target_bytes: float, attempts: int = 40):
    """Code ``values``' statistics into ``contents``, coarsening their steps until the file fits the target
    again (recalibrated statistics can cost a few bytes more than the ones the size was landed with)."""
    coarsen, previous = 1.0, None
    for _ in range(attempts):
        candidate = code_statistics(contents, statistics, values, coarsen)
        size = measure_file_bytes(candidate)
        if size <= target_bytes:
            return candidate, size
        if size == previous:  # nothing left to coarsen (statistics on their fixed grid)
            return None
        previous = size
        coarsen *= 1.15
    return None


def _as_float(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in values.items()}


def _batchnorm_pieces(n_train: int) -> dict[str, tuple[float, float]]:
    """The BatchNorm stage's pieces in the order `_maybe_recalibrate` runs them, each as (sample forwards,
    ratio-controller builds) it costs: the stage's estimate and its own progress both come from them.

    Timed on EfficientNet-Lite0 (2 cores, 2026-12-05; 230 optimization samples): per sample, re-estimation in
    training mode took 1.4× an output pass, the correction's teacher pass and one-batch student pass 2.2× for
    each of its 2 × 64 samples (the 64-sample batch is slow), a recode (statistics coded, file measured,
    decoded) about a build. Priced with an output pass at 1.15 timed forwards (that run's ratio) the stage took
    0.74–1.0 of its price in six runs; the weights here are scaled by their mean, 0.85. The former flat 1.3
    forwards per training-mode pass was 20–30 % low in most runs; the stage's own pace corrects either way once
    it starts."""
    probe, corrected = min(n_train, 512), min(n_train, 64)
    return {
        "start": (0.0, 0.0),
        "reference": (probe, 0.0),
        "before": (probe, 0.0),
        "recalibrated": (1.35 * n_train, 0.0),
        "recalibrated_recode": (0.0, 1.0),
        "recalibrated_distance": (probe, 0.0),
        "corrected": (2.1 * 2 * corrected, 0.0),
        "corrected_recode": (0.0, 1.0),
        "corrected_distance": (probe, 0.0),
    }


def _batchnorm_stage_wanted(config: CompressionConfig, gptq_rounded: bool) -> bool:
    """``bn_recalibration`` True / False, or automatic (None, the ``fast`` preset): only for weights rounded to
    nearest. GPTQ minimises each layer's output error on the calibration inputs, mean shift included, which is
    what the bias correction would fix; on EfficientNet-Lite0 the stage after GPTQ moved held-out scores by
    less than their noise for a third of ``fast``'s time, while on the rounded-to-nearest start it cut the
    distance 0.228 → 0.139 at 10×."""
    if config.bn_recalibration is None:
        return not gptq_rounded
    return config.bn_recalibration


def _maybe_recalibrate(model, decoded, train_inputs, config, device, advance, recode, wanted):
    """Load the decoded weights into a copy of the model; replace its BN statistics when that lowers the
    distillation distance on the optimization samples (never on held-out samples). Two candidates: the
    statistics re-estimated on the optimization samples (`recalibrate_batchnorm`, right when they stand for
    the training data) and the original statistics shifted by how far quantization moved each BN input
    (`correct_batchnorm`, right whatever the samples are). ``recode`` turns a state into (contents, file bytes,
    decoded weights), or None when it does not fit the target; the judgement is made on those decoded weights,
    coded statistics included. ``advance`` is told each piece of `_batchnorm_pieces` as it ends; ``wanted``
    is `_batchnorm_stage_wanted`. Returns the model to evaluate, a note for the result, and what ``recode``
    returned for the statistics kept (None: the decoded ones)."""
    candidate = copy.deepcopy(model).float().eval().to(device)
    candidate.load_state_dict(_as_float(decoded))
    if not has_batchnorm(candidate):
        return candidate, {"applied": False, "kept": False}, None
    if not wanted:
        why = "turned off" if config.bn_recalibration is False else "GPTQ rounding compensated the output shifts"
        return candidate, {"applied": False, "kept": False, "skipped": why}, None
    advance("start")
    reference = copy.deepcopy(model).float().eval().to(device)
    probe = select(train_inputs, slice(0, min(num_samples(train_inputs), 512)))
    ref_out = _outputs_on(reference, probe, config.batch_size, device, config.output_keys)
    advance("reference")
    before = _distance_on(candidate, ref_out, probe, config, device)
    advance("before")
    note = {"applied": True, "kept": False, "distance_before": before}
    best = (before, candidate, None)
    for kind in ("recalibrated", "corrected"):
        adjusted = copy.deepcopy(candidate)
        if kind == "recalibrated":
            recalibrate_batchnorm(adjusted, train_inputs, config.batch_size, device)
        else:
            correct_batchnorm(
                adjusted, reference, train_inputs, config.batch_size, device, chunk=config.bn_correction_chunk
            )
        advance(kind)
        recoded = recode(adjusted.state_dict())
        advance(f"{kind}_recode")
        if recoded is None:
            note[f"{kind}_fits"] = False
            advance(f"{kind}_distance")
            continue
        adjusted.load_state_dict(_as_float(recoded[2]))
        note[f"distance_{kind}"] = distance = _distance_on(adjusted, ref_out, probe, config, device)
        advance(f"{kind}_distance")
        if distance < best[0]:
            best = (distance, adjusted, recoded)
            note["kept"] = kind
    note["distance_after"] = best[0]
    return best[1], note, best[2]


def _evaluate(model, decoded_model, calibration, holdout_idx, config, device) -> dict:
    if holdout_idx.numel() == 0:
        return {"holdout_samples": 0}
    from compression_core.evaluation import compare_models

    reference = copy.deepcopy(model).float().eval().to(device)
    holdout = select(calibration, holdout_idx)
    metrics = compare_models(reference, decoded_model, holdout, batch_size=config.batch_size, device=device)
    return {"holdout_samples": int(holdout_idx.numel()), **metrics}
