"""Progress fractions that track time: elapsed·(1 − f)/f, the worker's ETA, is the estimated remaining time."""

import pytest

from compression_core.timeline import Timeline, plan_compression, retime_roundings, revise


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def eta(elapsed, fraction):
    return elapsed * (1.0 - fraction) / fraction


def test_linear_extrapolation_of_the_fraction_is_the_estimated_remaining_time():
    clock = Clock()
    timeline = Timeline({"a": 10.0, "b": 30.0}, clock)
    timeline.begin("a")
    clock.now = 4.0
    assert eta(4.0, timeline.fraction()) == pytest.approx(6.0 + 30.0)
    clock.now = 5.0
    timeline.begin("b")  # a took 5 s less than expected: nothing of it remains
    clock.now = 6.0  # b's first report (after 1 s of set-up): its pace is not known yet, its estimate counts
    assert eta(6.0, timeline.fraction(0.05)) == pytest.approx(30.0 - 1.0)
    clock.now = 10.0  # 0.2 of b in 4 s since then: 0.75 of it takes 15 s more
    assert eta(10.0, timeline.fraction(0.25)) == pytest.approx(15.0)


def test_a_stage_pace_takes_over_from_its_estimate_as_it_accumulates():
    clock = Clock()
    timeline = Timeline({"a": 20.0}, clock)
    timeline.begin("a")
    timeline.fraction(0.1)  # first report at t = 0
    clock.now = 3.0  # 0.05 more in 3 s: the pace says 51 s more, the estimate 17 s; half of each
    assert eta(3.0, timeline.fraction(0.15)) == pytest.approx(0.5 * 51.0 + 0.5 * 17.0)


def test_estimates_change_only_the_current_and_later_stages():
    clock = Clock()
    timeline = Timeline({"a": 10.0, "b": 10.0, "c": 10.0}, clock)
    timeline.begin("a")
    timeline.begin("b")
    timeline.estimate(a=100.0, c=50.0)
    assert timeline.expected == {"a": 0.0, "b": 10.0, "c": 50.0}
    with pytest.raises(KeyError, match="unknown stage"):
        timeline.begin("d")


def test_finished_stages_report_their_seconds_and_their_estimate():
    clock = Clock()
    timeline = Timeline({"a": 4.0, "b": 10.0}, clock)
    timeline.begin("a")
    clock.now += 3.0
    timeline.begin("b")
    timeline.estimate(a=99.0)  # a finished stage keeps what it took
    clock.now += 12.0
    timeline.finish()
    assert timeline.report() == {"a": {"seconds": 3.0, "estimated": 4.0}, "b": {"seconds": 12.0, "estimated": 10.0}}
    assert timeline.fraction() == pytest.approx(0.995)


def _plan(**changes):
    """The stages of a run of 100 schedule iterations with GPTQ, with ``changes`` to that."""
    settings = dict(
        iterations=100,
        gptq=True,
        batch_size=8,
        gptq_samples=128,
        selection_samples=20,
        candidates=3,
        batchnorm_samples=600,
        batchnorm_builds=2,
        holdout_samples=30,
    )
    return plan_compression(**{**settings, **changes}, clock=Clock())


def test_measured_unit_costs_size_every_pending_stage():
    timeline = _plan()
    timeline.begin("probe")
    units = {"sample": 0.01, "hessian_sample": 0.1, "build": 2.0, "builds": 6, "round": 5.0, "decode": 3.0}
    for unit, seconds in units.items():
        timeline.measure(unit, seconds)
    revise(timeline)
    assert timeline.expected["land_start"] == pytest.approx(12.0)
    assert timeline.expected["land_final"] == pytest.approx(6 * 7.0)
    assert timeline.expected["land_gptq"] == pytest.approx((6 + 1) * 7.0)  # GPTQ's landing starts further off
    assert timeline.expected["schedule"] == pytest.approx(100 * (3 * 8 * 0.01 + 0.5 * 2.0))
    assert timeline.expected["hessians"] == pytest.approx(128 * 0.1)
    # Selection decodes each candidate; a BatchNorm re-fit builds the file and decodes it.
    assert timeline.expected["select"] == pytest.approx(3 * (20 * 0.01 + 3.0))
    assert timeline.expected["batchnorm"] == pytest.approx(600 * 0.01 + 2 * (2.0 + 3.0))


def test_block_wise_reconstruction_is_planned_between_the_rounding_and_the_schedule():
    timeline = _plan(iterations=0, block_iters=50, blocks=20, optimize_samples=200)
    assert timeline.order[:6] == ["probe", "land_start", "hessians", "land_gptq", "blocks", "land_blocks"]
    timeline.begin("probe")
    timeline.measure("sample", 0.01)
    revise(timeline)
    # 50 steps, each a forward and backward of the whole network over its blocks, plus the captures.
    assert timeline.expected["blocks"] == pytest.approx(50 * 3 * 8 * 0.01 + 20 * 200 * 0.01)


def test_the_gain_measurement_is_planned_between_the_hessians_and_the_landing_and_priced_in_plain_roundings():
    timeline = _plan(gptq_gains=True)
    assert timeline.order[:5] == ["probe", "land_start", "hessians", "gains", "land_gptq"]
    timeline.begin("probe")
    timeline.measure("round", 1.5)
    revise(timeline)
    assert timeline.expected["gains"] == pytest.approx(2.75 * 3 * 1.5)  # guessed from the landing's rounding
    timeline.measure("plain_round", 2.0)
    revise(timeline)
    assert timeline.expected["gains"] == pytest.approx(2.75 * 2.0)  # two plain roundings and the scoring
    assert "gains" not in _plan().order


def test_the_gains_stage_retimes_the_roundings_that_price_the_landing():
    """The gains stage is whole-network roundings timed for real: 1.5× the one-off estimate's time makes the
    landing's roundings 1.5× dearer too."""
    timeline = _plan(gptq_gains=True, gptq_dampings=2)
    timeline.begin("probe")
    timeline.measure("build", 0.5)
    timeline.measure("builds", 1.0)
    timeline.measure("round", 1.0)
    timeline.measure("plain_round", 2.0)
    revise(timeline)
    assert timeline.expected["land_gptq"] == pytest.approx(3 * (0.5 + 1.0))
    with pytest.raises(RuntimeError):
        retime_roundings(timeline)  # only the gains stage's own time says what a rounding costs
    timeline.begin("gains")
    timeline.clock.now += 5.0 * 3.0  # two dampings: 5 plain roundings, 3 s each
    retime_roundings(timeline)
    revise(timeline)
    assert timeline.unit("plain_round", 0.0) == pytest.approx(3.0)
    assert timeline.expected["land_gptq"] == pytest.approx(3 * (0.5 + 1.5))
