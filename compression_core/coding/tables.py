"""Frequency tables: the integer symbol counts a coded tensor's range coder uses, stored compactly.

The counts are the *only* input of the entropy model on both sides (`rangecoder.categorical`), so the
decoder reproduces the encoder's probabilities exactly. Counts cover the symbol range ``lo..hi`` (``lo`` and
``hi`` are the smallest and largest symbol, so the first and last counts are never zero). The last count is
not stored: it is the symbol count (the tensor's numel) minus the others.

Two layouts, whichever is smaller:

- dense  (format 0): ``L - 1`` varint counts.
- sparse (format 1): varint ``k`` (non-zero entries, ≥ 2), ``k - 2`` varint gaps ``index[i] - index[i-1] - 1``
  of the interior non-zero entries (the first index is 0, the last ``L - 1``), then ``k - 1`` varint counts.
"""

from __future__ import annotations

import numpy as np

from compression_core.coding.errors import L2FormatError
from compression_core.coding.varint import Cursor, uvarint, uvarint_array

DENSE, SPARSE = 0, 1


def symbol_counts(shifted: np.ndarray, levels: int) -> np.ndarray:
    """Counts (int64, length ``levels``) of symbols already shifted to ``0..levels-1``."""
    return np.bincount(shifted, minlength=levels).astype(np.int64)


def encode_table(counts: np.ndarray) -> bytes:
    """Format byte + body for a table of ``L ≥ 2`` counts whose first and last entries are non-zero."""
    counts = np.asarray(counts, dtype=np.int64)
    dense = bytes([DENSE]) + uvarint_array(counts[:-1])
    nz = np.flatnonzero(counts)
    if nz.size == counts.size:
        return dense
    sparse = (
        bytes([SPARSE])
        + uvarint(nz.size)
        + uvarint_array(np.diff(nz)[:-1] - 1)
        + uvarint_array(counts[nz][:-1])
    )
    return sparse if len(sparse) < len(dense) else dense


def decode_table(cur: Cursor, levels: int, numel: int, what: str) -> np.ndarray:
    """Read a table written by `encode_table`; validates it against ``levels`` and ``numel``."""
    fmt = cur.u8(f"{what} format")
    if fmt == DENSE:
        counts = np.empty(levels, dtype=np.int64)
        counts[:-1] = cur.uvarint_array(levels - 1, what)
    elif fmt == SPARSE:
        k = cur.uvarint(f"{what} entry count")
        if not 2 <= k <= levels:
            raise L2FormatError(f"{what}: {k} non-zero entries for {levels} levels")
        gaps = cur.uvarint_array(k - 2, f"{what} gaps")
        index = np.zeros(k, dtype=np.int64)
        index[1:-1] = np.cumsum(gaps + 1)
        index[-1] = levels - 1
        if k > 2 and index[-2] >= levels - 1:
            raise L2FormatError(f"{what}: entry index beyond the symbol range")
        counts = np.zeros(levels, dtype=np.int64)
        values = np.empty(k, dtype=np.int64)
        values[:-1] = cur.uvarint_array(k - 1, f"{what} counts")
        values[-1] = 0
        counts[index] = values
    else:
        raise L2FormatError(f"{what}: unknown table format {fmt}")
    if (counts[:-1] > numel).any():
        raise L2FormatError(f"{what}: a count exceeds the tensor's {numel} symbols")
    counts[-1] = numel - int(counts[:-1].sum())
    if counts[0] < 1 or counts[-1] < 1:
        raise L2FormatError(f"{what}: counts do not add up to the tensor's {numel} symbols")
    return counts
