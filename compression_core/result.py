"""The outcome of `compress`: the artifact's contents, the decoded weights, the per-layer report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from compression_core.records import ArtifactContents
from compression_core.report import LayerReport, RunSummary


@dataclass
class CompressionResult:
    """``state_dict`` holds exactly the weights `load_l2` returns for the written file (same keys, shapes,
    dtypes, bits); ``layers`` one report per state_dict entry; ``history`` the logged loss terms per
    iteration; ``evaluation`` the accuracy of the decoded model on held-out calibration samples."""

    contents: ArtifactContents
    state_dict: dict[str, torch.Tensor]
    layers: list[LayerReport]
    summary: RunSummary
    history: list[dict] = field(default_factory=list)
    evaluation: dict = field(default_factory=dict)

    def write(self, path: str | Path) -> RunSummary:
        """Write the `.l2` file and record its true size and ratio in ``summary``. The metadata it carries
        was fixed by `compress` (pass extra metadata there, so that the ratio controller counts it)."""
        from compression_core.coding import write_l2

        file_bytes = write_l2(self.contents, path)
        self.summary.file_bytes = file_bytes
        self.summary.true_ratio = self.summary.original_bytes / file_bytes
        return self.summary
