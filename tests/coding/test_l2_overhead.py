"""The whole file, headers and tables included, stays within 2 % of the ideal empirical-entropy payload for a
model with more than a million coded weights."""

from __future__ import annotations

import math

from conftest import make_coded

from compression_core.coding import encode_l2, read_manifest
from compression_core.records import ArtifactContents
from compression_core.report import empirical_entropy_bits


def test_file_is_within_two_percent_of_the_entropy(tmp_path):
    shapes = [(64, 3, 7, 7), (128, 64, 3, 3), (256, 128, 3, 3), (512, 256, 3, 3), (10, 512)]
    records = [
        make_coded(f"layer{i}.weight", s, "float32", "prune_quant", per_channel=True, scale=2.0 + i, seed=i)
        for i, s in enumerate(shapes)
    ]
    numel = sum(math.prod(s) for s in shapes)
    assert numel >= 1_000_000
    ideal = sum(empirical_entropy_bits(r.symbols) * r.symbols.size for r in records) / 8
    data = encode_l2(ArtifactContents(records, metadata={"target_ratio": 8.0}))
    assert len(data) <= 1.02 * ideal, f"{len(data)} bytes vs ideal {ideal:.0f}"
    (tmp_path / "m.l2").write_bytes(data)
    assert read_manifest(tmp_path / "m.l2").payload_bytes <= 1.001 * ideal + 4 * len(records)
