"""Frequency tables: the integer symbol counts a coded tensor's range coder uses, stored compactly.

The counts are the *only* input of the entropy model on both sides (`rangecoder.categorical`), so the
decoder reproduces the encoder's probabilities exactly. Counts cover the symbol range ``lo..hi`` (``lo`` and
``hi`` are the smallest and largest symbol, so the first and last counts are never zero). The last count is
not stored: it is the symbol count (the tensor's numel) minus the others.

Three layouts:

- dense  (format 0): ``L - 1`` varint counts.
- sparse (format 1): varint ``k`` (non-zero entries, ≥ 2), ``k - 2`` varint gaps ``index[i] - index[i-1] - 1``
  of the interior non-zero entries (the first index is 0, the last ``L - 1``), then ``k - 1`` varint counts.
- binned (format 2, file version 3): a byte ``b`` (1..20), then — when the range spans more than one bin —
  the counts of the ``ceil(L / 2^b)`` bins of ``2^b`` adjacent symbols as a dense or sparse table. Every
  symbol weighs its bin's count, so the model is uniform within a bin.

Dense and sparse store one count per symbol. For a tensor of a few hundred values spread over thousands of
levels (a norm scale, a bias) such a table costs more than the payload it saves: a fine histogram of a
small sample is mostly ones. `choose_bin_bits` picks the bin width with the fewest table + payload bytes;
for the large weight tensors that is nearly always the exact table.
"""

from __future__ import annotations

import numpy as np

from compression_core.coding.errors import L2FormatError
from compression_core.coding.varint import Cursor, uvarint, uvarint_array, uvarint_array_bytes

DENSE, SPARSE, BINNED = 0, 1, 2
MAX_BIN_BITS = 20  # 2^20 levels: the most a tensor may have (`manifest.MAX_LEVELS`)


def symbol_counts(shifted: np.ndarray, levels: int) -> np.ndarray:
    """Counts (int64, length ``levels``) of symbols already shifted to ``0..levels-1``."""
    return np.bincount(shifted, minlength=levels).astype(np.int64)


def bin_counts(counts: np.ndarray, bin_bits: int) -> np.ndarray:
    """Counts of the ``ceil(L / 2^bin_bits)`` bins of adjacent symbols (the last bin may be partial)."""
    width = 1 << bin_bits
    bins = -(-counts.size // width)
    padded = np.zeros(bins * width, dtype=np.int64)
    padded[: counts.size] = counts
    return padded.reshape(bins, width).sum(axis=1)


def model_counts(counts: np.ndarray, bin_bits: int) -> np.ndarray:
    """The per-symbol counts the range coder uses for symbol counts ``counts`` binned by ``bin_bits``."""
    if bin_bits == 0:
        return np.asarray(counts, dtype=np.int64)
    return np.repeat(bin_counts(np.asarray(counts, dtype=np.int64), bin_bits), 1 << bin_bits)[: len(counts)]


def _exact_layout(counts: np.ndarray) -> tuple[int, int, np.ndarray]:
    """The dense or sparse layout, whichever is smaller (dense on ties): its format, its bytes, and the
    indices of the non-zero counts."""
    nz = np.flatnonzero(counts)
    dense = 1 + uvarint_array_bytes(counts[:-1])
    if nz.size == counts.size:
        return DENSE, dense, nz
    gaps, values = np.diff(nz)[:-1] - 1, counts[nz][:-1]
    sparse = 1 + len(uvarint(nz.size)) + uvarint_array_bytes(gaps) + uvarint_array_bytes(values)
    return (DENSE, dense, nz) if dense <= sparse else (SPARSE, sparse, nz)


def _exact_table(counts: np.ndarray) -> bytes:
    """Format byte + body of the layout `_exact_layout` picks."""
    fmt, _, nz = _exact_layout(counts)
    if fmt == DENSE:
        return bytes([DENSE]) + uvarint_array(counts[:-1])
    return bytes([SPARSE]) + uvarint(nz.size) + uvarint_array(np.diff(nz)[:-1] - 1) + uvarint_array(counts[nz][:-1])


def _table_bytes_of_bins(bins: np.ndarray, bin_bits: int) -> int:
    """Table bytes for ``bins`` (the symbol counts themselves when ``bin_bits`` is 0; a binned table adds its
    format and width bytes, and needs no counts when one bin spans the range)."""
    return (2 if bin_bits else 0) + (_exact_layout(bins)[1] if bins.size >= 2 else 0)


def _payload_bits_of_bins(bins: np.ndarray, bin_bits: int, levels: int) -> float:
    """Cross-entropy of the symbols when each of the ``levels`` symbols weighs its bin's count."""
    widths = np.full(bins.size, 1 << bin_bits, dtype=np.int64)
    widths[-1] = levels - (bins.size - 1) * (1 << bin_bits)
    occupied = bins > 0
    total = float((bins * widths).sum())
    return float((bins[occupied] * np.log2(total / bins[occupied])).sum())


def _bins(counts: np.ndarray, bin_bits: int) -> np.ndarray:
    return bin_counts(counts, bin_bits) if bin_bits else counts


def table_bytes(counts: np.ndarray, bin_bits: int) -> int:
    """``len(encode_table(model_counts(counts, bin_bits), bin_bits))`` for symbol counts ``counts``,
    without building the bytes."""
    counts = np.asarray(counts, dtype=np.int64)
    return _table_bytes_of_bins(_bins(counts, bin_bits), bin_bits)


def encode_table(counts: np.ndarray, bin_bits: int = 0) -> bytes:
    """Format byte + body for the model counts of ``L ≥ 2`` symbols (first and last non-zero): exact when
    ``bin_bits`` is 0, else the counts of `model_counts`' bins (one every ``2^bin_bits`` symbols)."""
    counts = np.asarray(counts, dtype=np.int64)
    if bin_bits == 0:
        return _exact_table(counts)
    bins = counts[:: 1 << bin_bits]
    return bytes([BINNED, bin_bits]) + (_exact_table(bins) if bins.size >= 2 else b"")


def payload_bits(counts: np.ndarray, bin_bits: int) -> float:
    """Bits the range coder spends on symbols with these counts under the ``bin_bits`` model (its
    cross-entropy; the coder's own overhead is a few bytes either way)."""
    counts = np.asarray(counts, dtype=np.int64)
    return _payload_bits_of_bins(_bins(counts, bin_bits), bin_bits, counts.size)


def choose_bin_bits(counts: np.ndarray) -> int:
    """The bin width (0: exact) whose table and payload take the fewest bytes; the exact table on ties."""
    counts = np.asarray(counts, dtype=np.int64)
    widest = min(MAX_BIN_BITS, int(counts.size - 1).bit_length())  # one bin covers the whole range
    best, best_bytes = 0, np.inf
    for bin_bits in range(widest + 1):
        bins = _bins(counts, bin_bits)  # once per width: the writer runs this on every build of a landing
        cost = _payload_bits_of_bins(bins, bin_bits, counts.size) / 8.0 + _table_bytes_of_bins(bins, bin_bits)
        if cost < best_bytes:
            best, best_bytes = bin_bits, cost
    return best


def _decode_exact(cur: Cursor, fmt: int, levels: int, numel: int, what: str) -> np.ndarray:
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


def decode_table(cur: Cursor, levels: int, numel: int, what: str) -> tuple[np.ndarray, int]:
    """Read a table written by `encode_table`, validated against ``levels`` and ``numel``: the model counts
    (one per symbol) and the bin bits (0: exact)."""
    fmt = cur.u8(f"{what} format")
    if fmt != BINNED:
        return _decode_exact(cur, fmt, levels, numel, what), 0
    bin_bits = cur.u8(f"{what} bin bits")
    if not 1 <= bin_bits <= MAX_BIN_BITS:
        raise L2FormatError(f"{what}: bins of 2^{bin_bits} symbols (1 to {MAX_BIN_BITS} bits allowed)")
    bins = -(-levels // (1 << bin_bits))
    if bins < 2:
        return np.full(levels, numel, dtype=np.int64), bin_bits
    counts = _decode_exact(cur, cur.u8(f"{what} bins format"), bins, numel, f"{what} bins")
    return np.repeat(counts, 1 << bin_bits)[:levels], bin_bits
