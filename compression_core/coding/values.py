"""Symbols -> weights through the canonical T⁻¹ (`transforms.levels.level_values`).

The level table is cast to the tensor's dtype *before* the gather: casting is element-wise, so gathering
from the cast table gives bit for bit what casting the gathered float32 values gives (what the optimizer
does), at a fraction of the cost. The gather is one vectorised `index_select`, never a Python loop.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from compression_core.coding.dtypes import torch_dtype
from compression_core.coding.manifest import TensorEntry
from compression_core.transforms.levels import level_values
from compression_core.transforms.trellis import trellis_levels


def value_table(entry: TensorEntry, lo: int, hi: int) -> torch.Tensor:
    """(C, L) decoded values of every level ``lo..hi`` per channel, already in the tensor's dtype."""
    table = level_values(entry.kind, entry.params, lo, hi)
    return torch.from_numpy(table).to(torch_dtype(entry.dtype))


def gather_values(entry: TensorEntry, shifted: np.ndarray) -> torch.Tensor:
    """The decoded tensor from symbols shifted to ``0..levels-1`` (int32, row-major; may be overwritten)."""
    dtype = torch_dtype(entry.dtype)
    if entry.numel == 0:
        return torch.zeros(entry.shape, dtype=dtype)
    lo, hi = entry.lo, entry.hi
    if entry.trellis:  # symbols -> the levels they stand for, shifted to 0.. like the symbols were
        levels = trellis_levels(np.asarray(shifted, dtype=np.int64) + entry.lo, entry.shape)
        lo, hi = int(levels.min()), int(levels.max())
        shifted = levels - lo
        if hi - lo < np.iinfo(np.int32).max:
            shifted = shifted.astype(np.int32)
    table = value_table(entry, lo, hi)
    channels, levels = table.shape
    index = np.ascontiguousarray(shifted).reshape(-1)
    if channels > 1:  # flat index into the (C, L) table; NumPy's in-place broadcast add is the fastest here
        if channels * levels > np.iinfo(np.int32).max:
            index = index.astype(np.int64)
        rows = index.reshape(channels, -1)
        np.add(rows, (np.arange(channels, dtype=index.dtype) * levels)[:, None], out=rows)
    return torch.index_select(table.reshape(-1), 0, torch.from_numpy(index)).reshape(entry.shape)


def tensor_crc(tensor: torch.Tensor) -> int:
    """CRC32 of a tensor's raw bytes (row-major, little-endian): the check that decoded weights are exactly
    what the encoder produced on its machine."""
    flat = tensor.detach().contiguous().reshape(-1)
    if flat.numel() == 0:
        return 0
    return zlib.crc32(flat.view(torch.uint8).numpy())
