"""The ratio controller (`finalize.fit_target`) lands inside the size window in few builds — each build may be
a whole GPTQ rounding of the network — on size curves that are steep, shallow, bumpy or out of reach."""

import math

import pytest

from compression_core.recon.budget import UnreachableTargetError
from compression_core.recon.finalize import fit_target


class _Steps:
    """Stands in for the state: remembers the log-factor the controller applied to every step."""

    def __init__(self) -> None:
        self.x = 0.0

    def rescale(self, log_factor: float) -> None:
        self.x += log_factor


def _land(size_at, target: float, tolerance: float = 0.01):
    steps, builds = _Steps(), []

    def build():
        builds.append(steps.x)
        return steps.x

    contents, size, x = fit_target(steps, build, size_at, target, tolerance)
    return contents, size, x, builds, steps


@pytest.mark.parametrize("start_miss", [-0.3, -0.04, 0.03, 0.25, 1.5])
@pytest.mark.parametrize("slope", [0.15, 0.4, 1.2])
def test_lands_in_the_window_within_a_few_builds(start_miss, slope):
    """ln(bytes) falls with x at ``slope`` (coarser steps, smaller file), with a ripple as rounding gives; the
    first build misses by ``start_miss`` (in ln bytes). Bisection took six to eight builds on most of these."""
    target = 1e6

    def size_at(x: float) -> int:
        return round(target * math.exp(start_miss - slope * x) * (1.0 + 0.002 * math.sin(40.0 * x)))

    contents, size, x, builds, steps = _land(size_at, target)
    assert 0.99 * target <= size <= target
    assert contents == steps.x == pytest.approx(x, abs=1e-12), "returns the state it leaves"
    sizes = [size_at(b) for b in builds]
    fitting = [s for s in sizes if 0.99 * target <= s <= target]
    assert sizes.index(fitting[0]) < 5, sizes  # in the window within five builds, as before the refinement
    assert size == max(fitting), "the largest size that fits wins"
    assert len(builds) <= sizes.index(fitting[0]) + 1 + 3, sizes  # two refinements, one rebuild at most


@pytest.mark.parametrize("start_miss", [-0.3, -0.04, 0.03, 0.25, 1.5])
@pytest.mark.parametrize("slope", [0.15, 0.4, 1.2])
def test_a_smooth_curve_lands_at_the_top_of_the_window(start_miss, slope):
    """Bytes under the target are budget the weights did not get: the refinement spends all but 0.125 %."""
    target = 1e6

    def size_at(x: float) -> int:
        return round(target * math.exp(start_miss - slope * x))

    _, size, _, _, _ = _land(size_at, target)
    assert (1.0 - 0.01 / 8) * target <= size <= target


def test_a_curve_that_never_gets_small_enough_is_refused():
    with pytest.raises(UnreachableTargetError, match="unreachable"):
        _land(lambda x: 5_000_000 + round(1000 / (1.0 + abs(x))), 1e6)


def test_a_curve_that_never_reaches_the_window_from_below_keeps_the_closest_fitting_size():
    """Finer steps stop adding bytes (every weight already exact): the largest size under the target wins."""
    target = 1e6

    def size_at(x: float) -> int:
        return round(target * min(0.9, math.exp(min(-0.4 * x, 5.0))))

    _, size, x, _, steps = _land(size_at, target)
    assert size == round(0.9 * target) and steps.x == pytest.approx(x, abs=1e-12)
