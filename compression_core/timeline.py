"""Progress fractions that track time, so that a linear extrapolation from them is a usable ETA.

A caller (the worker) estimates the remaining time as elapsed·(1 − f)/f. That is right only when f is the
share of the run's time already spent, and the stages of a compression cost very different amounts (a GPTQ
landing can take longer than everything else in the ``fast`` preset). So the compressor reports
f = elapsed / (elapsed + expected remaining), with each stage's duration estimated from what this run has
measured so far, in a few unit costs: seconds per sample forward pass (from the sensitivity probe), seconds
per ratio-controller build (from the start's landing), seconds per GPTQ rounding of the network and per
schedule iteration (from their first calls). The first stages run on guesses; everything after them on
measurements of this model on this machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# Upper bound on a reported fraction before the run is done: "done" is said only by the final event.
_LAST_FRACTION = 0.995
# The share of a stage after its first report over which its own pace takes over from its estimate.
_PACE_EVIDENCE = 0.1


class Timeline:
    """Ordered stages with estimated seconds. `begin` starts a stage (ending the previous one), `estimate`
    revises the expected seconds of stages, `fraction` answers f for the current moment given how far
    (0..1) the current stage is."""

    def __init__(
        self, stages: dict[str, float], clock: Callable[[], float] = time.monotonic, plan: dict | None = None
    ) -> None:
        self.clock = clock
        self.plan = plan or {}
        self.started = clock()
        self.expected = dict(stages)
        self.order = list(stages)
        self.current: str | None = None
        self.stage_started = self.started
        self._first_report: tuple[float, float] | None = None
        self.units: dict[str, float] = {}
        self.seconds: dict[str, float] = {}  # what each finished stage took
        self.estimated: dict[str, float] = {}  # what it was expected to take when it began

    def begin(self, stage: str) -> None:
        if stage not in self.expected:
            raise KeyError(f"unknown stage {stage!r}; planned: {self.order}")
        self.finish()
        self.current = stage
        self.stage_started = self.clock()
        self.estimated[stage] = self.expected[stage]
        self._first_report: tuple[float, float] | None = None

    def finish(self) -> None:
        """End the current stage (if any): its time is recorded and nothing of it remains."""
        if self.current is not None:
            self.seconds[self.current] = self.clock() - self.stage_started
            self.expected[self.current] = 0.0
            self.current = None

    def report(self) -> dict[str, dict[str, float]]:
        """Seconds each finished stage took and was expected to take when it began: where a run's time went,
        and how far off the ETA's estimates were."""
        return {
            stage: {"seconds": round(self.seconds[stage], 3), "estimated": round(self.estimated.get(stage, 0.0), 3)}
            for stage in self.order
            if stage in self.seconds
        }

    def skip(self, stage: str) -> None:
        """A planned stage that will not run (e.g. BatchNorm recalibration of a model without BatchNorm)."""
        self.expected[stage] = 0.0

    def estimate(self, **seconds: float) -> None:
        """Revise the expected seconds of the current or later stages (finished ones stay at 0)."""
        first = self.order.index(self.current) if self.current else 0
        for stage, value in seconds.items():
            if stage in self.expected and stage not in self.seconds and self.order.index(stage) >= first:
                self.expected[stage] = max(0.0, float(value))

    def measure(self, unit: str, seconds: float) -> None:
        """Record a unit cost (e.g. ``sample`` seconds per sample forward) for later estimates."""
        self.units[unit] = seconds

    def unit(self, name: str, default: float) -> float:
        return self.units.get(name, default)

    def fraction(self, within: float = 0.0) -> float:
        """f for now; ``within`` is the current stage's own progress (0..1), when it knows it."""
        now = self.clock()
        elapsed = now - self.started
        in_stage = now - self.stage_started
        if within > 0.0 and self._first_report is None:
            self._first_report = (now, within)
        if self.current is None or within >= 1.0:
            current_left = 0.0
        else:
            current_left = max(self.expected[self.current] - in_stage, 0.1 * self.expected[self.current])
            if self._first_report is not None and within > self._first_report[1]:
                # The stage's own pace since its first report (set-up before it, e.g. caching the teacher's
                # outputs, is not part of the pace), trusted as it accumulates: one slow batch early in the
                # Hessian pass had put the ETA 38 % over the real remaining time.
                start_time, start_within = self._first_report
                paced = (now - start_time) * (1.0 - within) / (within - start_within)
                trust = min(1.0, (within - start_within) / _PACE_EVIDENCE)
                current_left = trust * paced + (1.0 - trust) * current_left
        later = self.order[self.order.index(self.current) + 1 :] if self.current else self.order
        remaining = current_left + sum(self.expected[s] for s in later)
        if elapsed <= 0.0:
            return 0.0
        return min(_LAST_FRACTION, elapsed / (elapsed + remaining))


def plan_compression(
    *,
    iterations: int,
    gptq: bool,
    batch_size: int,
    gptq_gains: bool = False,
    gptq_dampings: int = 1,
    gptq_samples: int,
    selection_samples: int,
    candidates: int,
    batchnorm_samples: float,
    holdout_samples: int,
    batchnorm_builds: float = 0.0,
    asymmetric_layers: int = 0,
    block_iters: int = 0,
    blocks: int = 0,
    optimize_samples: int = 0,
    clock: Callable[[], float] = time.monotonic,
) -> Timeline:
    """The stages `compress` runs, with zero estimates until the first unit costs are measured (`revise`)."""
    stages = ["probe", "land_start"]
    if gptq:
        stages += ["hessians"] + (["gains"] if gptq_gains else []) + ["land_gptq"]
    if gptq and asymmetric_layers:
        stages += ["asymmetric", "land_asymmetric"]
    if block_iters and blocks:
        stages += ["blocks", "land_blocks"]
    if iterations:
        stages += ["schedule", "land_final"]
    stages += ["select", "batchnorm", "evaluate"]
    plan = {
        "iterations": iterations,
        "batch_size": batch_size,
        "gptq_samples": gptq_samples,
        "selection_samples": selection_samples,
        "candidates": candidates,
        "batchnorm_samples": batchnorm_samples,
        "batchnorm_builds": batchnorm_builds,
        "holdout_samples": holdout_samples,
        "gptq": gptq,
        "gptq_gains": gptq_gains,
        "gptq_dampings": gptq_dampings,
        "asymmetric_layers": asymmetric_layers,
        "block_iters": block_iters,
        "blocks": blocks,
        "optimize_samples": optimize_samples,
    }
    return Timeline(dict.fromkeys(stages, 0.0), clock, plan)


def revise(timeline: Timeline) -> None:
    """Re-estimate every pending stage from the unit costs measured so far: ``sample`` (seconds per sample
    forward), ``hessian_sample`` (seconds per sample of GPTQ's input statistics), ``asymmetric_sample`` (seconds
    per sample of the asymmetric stage's passes and products), ``build`` (seconds per ratio-controller build),
    ``builds`` (builds per landing), ``decode`` (seconds to decode a file's weights), ``round`` (seconds per GPTQ
    rounding of the network), ``plain_round`` (one without rate term or trellis, as the gains stage rounds),
    ``iteration`` (one timed schedule step, `schedule.seconds_per_iteration`; guessed
    from ``sample`` until then); once the schedule runs, its own pace takes over (`Timeline.fraction`)."""
    plan = timeline.plan
    sample = timeline.unit("sample", 0.0)
    build = timeline.unit("build", 0.0)
    builds = timeline.unit("builds", 3.0)
    rounding = timeline.unit("round", 2.0 * build)
    hessian_sample = timeline.unit("hessian_sample", 1.5 * sample)
    iteration = timeline.unit("iteration", 3.0 * plan["batch_size"] * sample + 0.5 * build)
    # Decoding a file's weights (selection, every BatchNorm re-fit): timed after the first landing, guessed at a
    # build until then; mapping trellis symbols back to levels makes it 2–3× a build on EfficientNet-Lite0.
    decode = timeline.unit("decode", build)
    per_build = build + rounding if plan["gptq"] else build
    # GPTQ's rate-aware rounding lands 15–25 % under the start's size, so its landing takes about three
    # builds wherever the start's took one (EfficientNet-Lite0 at 5–10×, `finalize.fit_target`), and one more
    # than the start's once the controller refines towards the top of the window (3 → 4 at 6× and 8×; priced
    # at the start's count the landing ran 1.9× its price and `fast`'s ETA erred 27–32 %).
    gptq_landing = max(builds + 1.0, 3.0) * per_build if plan["gptq"] else builds * build
    # The schedule moves the rate off the landed size: its landing took two builds where the start's took
    # one (EfficientNet-Lite0, `bench/results/eta.md`).
    final_landing = max(builds, 2.0) * per_build
    timeline.estimate(
        land_start=builds * build,
        hessians=plan["gptq_samples"] * hessian_sample,
        gains=gains_roundings(plan["gptq_dampings"]) * timeline.unit("plain_round", 3.0 * rounding)
        if plan["gptq_gains"] else 0.0,
        land_gptq=gptq_landing,
        # Timed on a probe batch (`asymmetric.plan_stage`); until then every layer's two passes are
        # guessed at half the network each, and H̃ and X·X̃ᵀ at two Hessian passes' products. The layers are
        # rounded once more in all.
        asymmetric=timeline.unit(
            "asymmetric_sample", plan["asymmetric_layers"] * sample + 2.0 * hessian_sample
        ) * plan["gptq_samples"] + rounding,
        # It starts at the scale GPTQ's landing found, and the retargeted rounding's size is close to it: one
        # build (priced like GPTQ's landing it was 3.9 s against 1.5 s spent; EfficientNet-Lite0 at 8×).
        land_asymmetric=per_build,
        # Every block's step costs its share of one network forward and backward; each block's inputs are
        # captured twice (teacher, student) by passes that stop there, half the network on average.
        blocks=plan["block_iters"] * 3.0 * plan["batch_size"] * sample
        + plan["blocks"] * plan["optimize_samples"] * sample,
        land_blocks=builds * build,
        schedule=plan["iterations"] * iteration,
        land_final=final_landing,
        select=plan["candidates"] * (plan["selection_samples"] * sample + decode),
        batchnorm=plan["batchnorm_samples"] * sample + plan["batchnorm_builds"] * (build + decode),
        evaluate=2.0 * plan["holdout_samples"] * sample,
    )


def gains_roundings(dampings: int) -> float:
    """Plain GPTQ roundings of the network the gains stage costs, in units of the timed estimate of one
    (`gptq_gain.py`): per damping tried, two, one a fold, with rounding to nearest and four output errors in
    float64 beside them. With two dampings the stage took 4.5–5.4 estimated plain roundings in four runs of
    EfficientNet-Lite0 at 8× (the estimate, from every 8th layer, reads 5–7 % under a rounding of all of them)."""
    return 2.25 * dampings + 0.5


def retime_roundings(timeline: Timeline) -> None:
    """At the end of the gains stage (the current one), rescale both rounding costs (``plain_round``, and
    ``round`` until a landing times one) by what that stage, whole-network roundings timed for real, says a
    plain rounding costs. The one-off estimate (every 8th layer under H = I) came out 1.4× apart in two runs on
    one machine, and the ETA from the gains stage on was 24–42 % short of the real remaining time
    (EfficientNet-Lite0 ``fast`` at 8×, `bench/results/eta.md`)."""
    if timeline.current != "gains":
        raise RuntimeError(f"the roundings are re-timed as the gains stage ends, not in {timeline.current!r}")
    gains_seconds = timeline.clock() - timeline.stage_started
    timed = gains_seconds / gains_roundings(timeline.plan["gptq_dampings"])
    estimated = timeline.unit("plain_round", 0.0)
    if estimated > 0.0 and "round" in timeline.units:
        timeline.measure("round", timeline.units["round"] * timed / estimated)
    timeline.measure("plain_round", timed)
