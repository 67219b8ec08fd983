"""The ablation bench's command-line overrides: JSON values, lists included."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def test_overrides_split_on_top_level_commas_only():
    from bench.ablation import parse_overrides

    parsed = parse_overrides('preset=balanced,feature_modules=["blocks.2","blocks.4"],augment=true,gptq_damping=0.3')
    assert parsed == {
        "preset": "balanced",
        "feature_modules": ["blocks.2", "blocks.4"],
        "augment": True,
        "gptq_damping": 0.3,
    }
    assert parse_overrides("") == {}
    assert parse_overrides("transform=linear") == {"transform": "linear"}
