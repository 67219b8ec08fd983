"""The bit budget B implied by a target *true-file* ratio, and the exact size of the file being built.

The target is file-level: original fp32 bytes / bytes of the whole `.l2` file. So B (the bits the coded
symbols may spend) is what is left of ``original / target`` after everything else the file carries: stored
tensors, per-tensor manifest entries, frequency tables, transform parameters, header, metadata and trailer.
During optimization that side information is estimated from the current level counts; the final ratio
controller measures the real encoded size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from compression_core.records import ArtifactContents

# Generous per-file constants: magic/version/offsets, JSON metadata (zlib-compressed), SHA-256 trailer.
FILE_OVERHEAD_BYTES = 512
# Per coded tensor: name, shape, dtype, kind, offsets, CRC, symbol range.
CODED_ENTRY_BYTES = 48
STORED_ENTRY_BYTES = 32
TABLE_BYTES_PER_LEVEL = 2.0
# The most bits per coded weight a run may be asked to spend. The file holds at most 2^20 levels per tensor
# (`coding.manifest.MAX_LEVELS`); 16 bits leaves that range a 16x margin for the tails of the weight
# distribution, so the ratio controller can always land a budget up to here. It makes 32 / 16 = 2 the lowest
# ratio every model reaches (`MIN_REACHABLE_RATIO`); models with stored tensors reach somewhat lower ones.
MAX_BITS_PER_WEIGHT = 16.0
MIN_REACHABLE_RATIO = 32.0 / MAX_BITS_PER_WEIGHT


class UnreachableTargetError(ValueError):
    """The target ratio cannot be met even with every coded tensor at its coarsest."""


@dataclass
class Budget:
    original_bytes: int
    target_ratio: float
    stored_bytes: int
    coded_numel: int

    @property
    def target_file_bytes(self) -> float:
        return self.original_bytes / self.target_ratio

    def side_bytes(self, name_bytes: int, param_floats: int, total_levels: int) -> float:
        """Estimated bytes of everything but the coded payloads."""
        return (FILE_OVERHEAD_BYTES + self.stored_bytes + name_bytes + 4 * param_floats
                + TABLE_BYTES_PER_LEVEL * total_levels)

    def payload_bits(self, side_bytes: float) -> float:
        """B: bits left for the range-coded symbols."""
        return 8.0 * (self.target_file_bytes - side_bytes)

    def lowest_reachable_ratio(self, side_bytes: float) -> float:
        """The ratio of a file whose coded weights spend `MAX_BITS_PER_WEIGHT` each: lower targets are refused
        up front instead of failing after the optimization."""
        return self.original_bytes / (side_bytes + self.coded_numel * MAX_BITS_PER_WEIGHT / 8.0)

    def estimated_ratio(self, side_bytes: float, payload_bits: float) -> float:
        return self.original_bytes / max(1.0, side_bytes + math.ceil(payload_bits / 8.0))


def measure_file_bytes(contents: ArtifactContents) -> int:
    """Exact size of the `.l2` file these contents encode to (the codec encodes them)."""
    from compression_core.coding import encoded_size

    return encoded_size(contents)
