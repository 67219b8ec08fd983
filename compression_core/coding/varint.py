"""LEB128 unsigned varints (7 bits per byte, low groups first) and zigzag for signed values, plus a bounds-
checked cursor over a byte buffer. Varints keep the manifest and the frequency tables small: most counts,
dimensions and lengths fit in one to three bytes."""

from __future__ import annotations

import struct

import numpy as np

from compression_core.coding.errors import L2FormatError

_MAX_VARINT_BYTES = 10  # enough for any value below 2**64


def uvarint(value: int) -> bytes:
    """Encode one non-negative integer below 2**64."""
    if value < 0 or value >= 1 << 64:
        raise ValueError(f"varint out of range: {value}")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def zigzag(value: int) -> int:
    """Map signed to unsigned so that small magnitudes stay short: 0, -1, 1, -2, ... -> 0, 1, 2, 3, ..."""
    return 2 * value if value >= 0 else -2 * value - 1


def unzigzag(value: int) -> int:
    return value >> 1 if value % 2 == 0 else -((value + 1) >> 1)


def _lengths(v: np.ndarray) -> np.ndarray:
    lengths = np.ones(v.size, dtype=np.int64)
    for k in range(1, _MAX_VARINT_BYTES):
        longer = v >= np.uint64(1) << np.uint64(7 * k)
        if not longer.any():
            break
        lengths += longer
    return lengths


def uvarint_array_bytes(values: np.ndarray) -> int:
    """``len(uvarint_array(values))`` without building the bytes."""
    return int(_lengths(np.asarray(values, dtype=np.uint64).reshape(-1)).sum())


def uvarint_array(values: np.ndarray) -> bytes:
    """Encode many non-negative integers at once (vectorised; the same bytes as joining `uvarint`)."""
    v = np.asarray(values, dtype=np.uint64).reshape(-1)
    if v.size == 0:
        return b""
    lengths = _lengths(v)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    out = np.zeros(int(ends[-1]), dtype=np.uint8)
    for k in range(int(lengths.max())):
        sel = lengths > k
        group = (v[sel] >> np.uint64(7 * k)) & np.uint64(0x7F)
        more = (lengths[sel] > k + 1).astype(np.uint64) << np.uint64(7)
        out[starts[sel] + k] = (group | more).astype(np.uint8)
    return out.tobytes()


class Cursor:
    """Sequential reader over a manifest buffer. Every read checks bounds and raises `L2FormatError` naming
    ``what`` (the field being read) when the buffer ends early or a value is malformed."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise L2FormatError(f"manifest ends inside {what}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]

    def uvarint(self, what: str) -> int:
        value = shift = 0
        for _ in range(_MAX_VARINT_BYTES):
            byte = self.u8(what)
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
        raise L2FormatError(f"malformed varint in {what}")

    def svarint(self, what: str) -> int:
        return unzigzag(self.uvarint(what))

    def uvarint_array(self, n: int, what: str) -> np.ndarray:
        """Read ``n`` varints (vectorised) as int64; values must fit in 63 bits."""
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        window = np.frombuffer(
            self.data, dtype=np.uint8, count=min(self.remaining(), _MAX_VARINT_BYTES * n), offset=self.pos
        )
        ends = np.flatnonzero(window < 0x80)
        if ends.size < n:
            raise L2FormatError(f"manifest ends inside {what}")
        ends = ends[:n]
        starts = np.concatenate(([0], ends[:-1] + 1))
        if int((ends - starts).max()) >= 9:
            raise L2FormatError(f"value too large in {what}")
        used = int(ends[-1]) + 1
        body = window[:used].astype(np.int64) & 0x7F
        group_of = np.repeat(np.arange(n), ends - starts + 1)
        shift = 7 * (np.arange(used) - starts[group_of])
        values = np.add.reduceat(body << shift, starts)
        self.pos += used
        return values
