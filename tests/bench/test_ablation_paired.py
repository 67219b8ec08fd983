"""Ablation rows paired within one invocation: each variant against its first, target by target."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _row(command: str, variant: str, target: float, kl: list[float]) -> dict:
    return {
        "subject": "s",
        "variant": variant,
        "overrides": "",
        "target": target,
        "ratio": target,
        "compress_s": 1.0,
        "commit": "abc",
        "command": command,
        "scores": {
            "crops": {"agreement": 1.0, "kl": sum(kl) / len(kl), "per_photo": {"agreement": [1.0] * 3, "kl": kl}}
        },
    }


def test_variants_are_paired_with_the_first_of_their_own_invocation_at_the_same_target(tmp_path):
    from bench.ablation import paired_rows, render

    rows = [
        _row("first", "fast", 8.0, [0.01, 0.1, 0.05]),
        _row("first", "fast", 10.0, [0.1, 0.3, 0.2]),
        _row("first", "other", 8.0, [0.008, 0.09, 0.047]),
        _row("first", "other", 5.0, [0.001, 0.002, 0.003]),  # no reference at 5×: not paired
        _row("second", "other", 8.0, [0.0, 0.0, 0.0]),  # another invocation's first variant: the reference there
    ]
    paired = paired_rows(rows)
    assert [(p["variant"], p["reference"], p["target"]) for p in paired] == [("other", "fast", 8.0)]
    assert paired[0]["kl"]["mean"] == pytest.approx(-0.005)
    assert paired[0]["kl_relative"] == pytest.approx(-0.005 / (0.16 / 3))

    journal = tmp_path / "ablation.jsonl"
    journal.write_text("\n".join(json.dumps(r) for r in rows))
    render(journal, tmp_path / "ablation.md")
    text = (tmp_path / "ablation.md").read_text()
    assert "| other | fast | 8× | +0.000 ± 0.000 | -0.0050 ± 0.0025 | -9 % | -2.0 | abc |" in text
    assert "per_photo" not in text
