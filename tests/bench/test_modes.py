"""The modes bench's measurements: peak memory of a block, and the gains per minute over the start."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")


def test_peak_memory_counts_what_the_block_allocates_and_not_what_was_held_before():
    from bench.bench_modes import peak_memory

    held_before = np.ones(40 * 2**20 // 8)  # 40 MiB, resident before the block
    with peak_memory() as memory:
        inside = np.ones(64 * 2**20 // 8)  # 64 MiB, touched inside the block
        del inside
    assert held_before.sum() > 0
    assert 56 <= memory["peak_extra_mib"] < 100


def _row(mode: str, agreement: float, kl: float | None, seconds: float, target: float = 8.0) -> dict:
    scores = {"agreement": agreement} if kl is None else {"agreement": agreement, "kl": kl}
    return {"model": "m", "mode": mode, "target": target, "scores": scores, "compress_s": seconds}


def test_gains_per_minute_are_over_the_start_at_the_same_target():
    from bench.bench_modes import with_gains

    rows = with_gains([
        _row("start", 0.80, 0.100, 30),
        _row("fast", 0.86, 0.040, 120),  # 2 minutes: +6 points, 60 % of the KL removed
        _row("fast", 0.90, 0.020, 60, target=5.0),  # no start at 5×
    ])
    start, fast, other = rows
    assert start["agreement_points_per_min"] is None
    assert fast["agreement_points_per_min"] == pytest.approx(3.0)
    assert fast["kl_cut_percent_per_min"] == pytest.approx(30.0)
    assert other["agreement_points_per_min"] is None and other["kl_cut_percent_per_min"] is None


def test_subjects_without_a_kl_get_no_kl_gain_and_render_a_dash():
    from bench.bench_modes import render, with_gains

    rows = [_row("start", 0.99, None, 10), _row("blockwise", 0.995, None, 60)]
    gained = with_gains(rows)[1]
    assert gained["kl_cut_percent_per_min"] is None
    assert gained["agreement_points_per_min"] == pytest.approx(0.5)
    for r in rows:
        r.update(ratio=8.0, peak_extra_mib=12.0, activation_cache_peak_mib=None, kept="gptq")
    run = {"model": "m", "date": "d", "commit": "c", "machine": "x", "command": "cmd", "rows": rows}
    text = render({"runs": [run]})
    blockwise_line = next(line for line in text.splitlines() if line.startswith("| blockwise"))
    assert "| 0.995 | – |" in blockwise_line and "+0.50" in blockwise_line
