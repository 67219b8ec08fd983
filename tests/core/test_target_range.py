"""Low targets (issue 12): a ratio the coder cannot reach is refused before any optimization, naming the lowest
reachable ratio, and every target from that ratio up produces a file (targets of 1.01–2 used to fail at the
very end with 'symbols span -1048576..1048576')."""

import re

import pytest
import torch
from torch import nn

from compression_core import CompressionConfig, compress
from compression_core.recon.budget import MIN_REACHABLE_RATIO, UnreachableTargetError

TINY = CompressionConfig(rounds=1, transform_iters=4, weight_iters=4, batch_size=32, bn_recalibration=False)


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 10)).eval()
    return model, torch.randn(96, 32)


def _lowest_in(message: str) -> float:
    found = re.search(r"lowest reachable ratio for this model is ([0-9.]+)", message)
    assert found, message
    return float(found.group(1))


@pytest.mark.parametrize("target", [1.0000001, 1.01, 1.5])
def test_a_target_below_the_reachable_range_is_refused_up_front_naming_the_lowest(mlp, target):
    model, x = mlp
    events = []
    with pytest.raises(UnreachableTargetError) as info:
        compress(model, x, target, config=TINY, progress=events.append)
    assert events == []  # refused before the optimization started
    assert 1.0 < _lowest_in(str(info.value)) <= MIN_REACHABLE_RATIO


def test_the_lowest_reachable_ratio_and_two_both_produce_files(mlp, tmp_path):
    model, x = mlp
    with pytest.raises(UnreachableTargetError) as info:
        compress(model, x, 1.2, config=TINY)
    lowest = _lowest_in(str(info.value))
    for target in (lowest, MIN_REACHABLE_RATIO):
        result = compress(model, x, target, config=TINY)
        summary = result.write(tmp_path / "m.l2")
        assert summary.true_ratio >= target
        assert summary.true_ratio <= target / (1.0 - TINY.ratio_tolerance) + 1e-9, (target, summary.true_ratio)
