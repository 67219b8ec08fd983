"""What a level costs under a tensor's histogram: the rate term of rate-aware rounding.

GPTQ's scalar rounding (`gptq.column_quantizer`) and the trellis search (`trellis_search`) weigh each
candidate's error against −log₂ p(symbol), p from the tensor as the range coder will roughly see it.
"""

from __future__ import annotations

import torch


def level_bits(symbols: torch.Tensor) -> tuple[torch.Tensor, int]:
    """−log₂ p(level) for every level from the lowest to the highest symbol (add-½ smoothed), and the lowest;
    one entry more at the end: levels outside that span cost one bit more than the rarest."""
    lowest = int(symbols.min())
    counts = torch.bincount(symbols - lowest).double() + 0.5
    bits = -torch.log2(counts / counts.sum())
    return torch.cat([bits, bits.max().reshape(1) + 1.0]).float(), lowest


def bits_of(bits: torch.Tensor, lowest: int, levels: torch.Tensor) -> torch.Tensor:
    """`level_bits`'s cost of each of ``levels`` (float tensor of integers)."""
    index = (levels - lowest).long()
    outside = (index < 0) | (index >= bits.numel() - 1)
    return bits[torch.where(outside, torch.full_like(index, bits.numel() - 1), index)]
