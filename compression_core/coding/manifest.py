"""The manifest: one entry per tensor (name, shape, dtype, mode, transform, parameters, symbol range,
frequency table, payload length) followed by the JSON metadata. Serialised as a compact binary blob that the
container stores zlib-compressed; the layout is documented in docs/format.md.

Offsets are not stored: payloads follow one another in manifest order, so offsets are running sums of the
lengths. The symbol count of a coded tensor is the numel of its shape.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from compression_core.coding.dtypes import CODED_DTYPES, DTYPE_CODES, itemsize
from compression_core.coding.errors import L2FormatError
from compression_core.coding.tables import decode_table, encode_table
from compression_core.coding.varint import Cursor, uvarint, uvarint_array, zigzag
from compression_core.transforms.levels import PARAM_NAMES

KIND_CODES: dict[int, str] = {1: "linear", 2: "prune_quant", 3: "log", 4: "exp"}  # 0: stored
CODE_OF_KIND = {kind: code for code, kind in KIND_CODES.items()}
PER_TENSOR, PER_CHANNEL = 0, 1
TRELLIS_FLAG = 2  # or-ed into the parameter-layout byte: the symbols are trellis-coded (format version 2)
MAX_LEVELS = 1 << 20  # symbol range of one tensor; constriction's 24-bit model precision needs far fewer
MAX_NDIM = 64
MAX_NUMEL = 1 << 40
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


@dataclass
class TensorEntry:
    """What the manifest says about one tensor. ``levels`` is the size of the symbol range ``lo..hi``
    (0 for an empty tensor); ``counts`` the per-symbol counts its range coder uses (None when ``levels`` < 2:
    a single-level tensor needs no payload): the symbols' own counts, or with ``bin_bits`` > 0 the count of
    each symbol's bin of ``2^bin_bits`` (`tables.model_counts`). ``table_bytes`` and ``entry_bytes`` are
    measured in the uncompressed manifest."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    mode: str  # "coded" or "stored"
    kind: str | None = None
    params: dict[str, np.ndarray] = field(default_factory=dict)
    lo: int = 0
    levels: int = 0
    counts: np.ndarray | None = None
    payload_bytes: int = 0
    payload_offset: int = 0
    payload_crc: int = 0
    value_crc: int = 0
    table_bytes: int = 0
    entry_bytes: int = 0
    trellis: bool = False
    bin_bits: int = 0

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def hi(self) -> int:
        return self.lo + self.levels - 1

    @property
    def used_levels(self) -> int:
        """Distinct symbols that occur (the paper's bit-width is log2 of this); with a binned table, the
        symbols of the bins that hold any (an upper bound)."""
        if self.counts is not None:
            return int(np.count_nonzero(self.counts))
        return self.levels

    @property
    def has_value_check(self) -> bool:
        return self.mode == "coded" and self.numel > 0

    def summary(self) -> dict:
        """JSON-ready description (for `l2 inspect --json`)."""
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "mode": self.mode,
            "transform": self.kind,
            "trellis": self.trellis,
            "table_bin_bits": self.bin_bits,
            "params": {
                k: np.asarray(v, dtype=np.float32).reshape(-1).tolist() for k, v in self.params.items()
            },
            "lo": self.lo if self.levels else None,
            "hi": self.hi if self.levels else None,
            "levels": self.used_levels,
            "payload_offset": self.payload_offset,
            "payload_bytes": self.payload_bytes,
            "table_bytes": self.table_bytes,
            "entry_bytes": self.entry_bytes,
            "bits_per_weight": 8.0 * self.payload_bytes / self.numel if self.numel else 0.0,
        }


@dataclass
class Manifest:
    """A file's layout without its payloads (`read_manifest`). Byte figures add up to ``file_bytes``:
    header + manifest (zlib) + checks + payloads + trailer."""

    version: int
    coder: int
    created: datetime
    entries: list[TensorEntry]
    metadata: dict
    header_bytes: int
    manifest_bytes: int
    manifest_raw_bytes: int
    checks_bytes: int
    trailer_bytes: int
    file_bytes: int

    @property
    def payload_bytes(self) -> int:
        return sum(e.payload_bytes for e in self.entries)

    @property
    def table_bytes(self) -> int:
        """Frequency-table bytes before zlib (the manifest is compressed as a whole)."""
        return sum(e.table_bytes for e in self.entries)

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "coder": self.coder,
            "created": self.created.isoformat(),
            "metadata": self.metadata,
            "totals": {
                "file_bytes": self.file_bytes,
                "payload_bytes": self.payload_bytes,
                "table_bytes": self.table_bytes,
                "header_bytes": self.header_bytes,
                "manifest_bytes": self.manifest_bytes,
                "manifest_raw_bytes": self.manifest_raw_bytes,
                "checks_bytes": self.checks_bytes,
                "trailer_bytes": self.trailer_bytes,
            },
            "tensors": [e.summary() for e in self.entries],
        }


def _shuffle(values: np.ndarray) -> bytes:
    """float32 little-endian, byte planes grouped (all first bytes, then all second, ...): sign/exponent
    bytes of similar values repeat, which zlib then compresses."""
    return np.ascontiguousarray(values, dtype="<f4").view(np.uint8).reshape(-1, 4).T.tobytes()


def _unshuffle(data: bytes) -> np.ndarray:
    return (
        np.frombuffer(data, dtype=np.uint8).reshape(4, -1).T.copy().view("<f4").reshape(-1).astype(np.float32)
    )


def encode_entry(e: TensorEntry, dtype_code: int) -> bytes:
    """Binary manifest entry; sets ``e.table_bytes`` and ``e.entry_bytes``."""
    name = e.name.encode("utf-8")
    out = bytearray(uvarint(len(name)) + name)
    out += bytes([dtype_code, 0 if e.mode == "stored" else CODE_OF_KIND[e.kind]])
    out += uvarint(len(e.shape)) + uvarint_array(np.asarray(e.shape, dtype=np.int64))
    out += uvarint(e.payload_bytes)
    if e.mode == "coded":
        names = PARAM_NAMES[e.kind]
        per_channel = np.asarray(e.params[names[0]]).ndim == 1
        out.append((PER_CHANNEL if per_channel else PER_TENSOR) | (TRELLIS_FLAG if e.trellis else 0))
        out += _shuffle(
            np.concatenate([np.asarray(e.params[n], dtype=np.float32).reshape(-1) for n in names])
        )
        out += uvarint(e.levels)
        if e.levels:
            out += uvarint(zigzag(e.lo))
        if e.levels >= 2:
            table = encode_table(e.counts, e.bin_bits)
            e.table_bytes = len(table)
            out += table
    e.entry_bytes = len(out)
    return bytes(out)


def _json_default(value: object) -> object:
    """NumPy scalars and arrays (common in optimizer summaries) become plain JSON numbers and lists."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"metadata value of type {type(value).__name__} is not JSON-serialisable")


def encode_manifest(entries: list[TensorEntry], dtype_codes: list[int], metadata: dict) -> bytes:
    """Uncompressed manifest blob: count, entries, then the metadata as compact UTF-8 JSON."""
    try:
        meta = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata cannot be stored as JSON: {exc}") from exc
    meta = meta.encode("utf-8")
    body = b"".join(encode_entry(e, c) for e, c in zip(entries, dtype_codes, strict=True))
    return uvarint(len(entries)) + body + uvarint(len(meta)) + meta


def _parse_entry(cur: Cursor, index: int) -> TensorEntry:
    start = cur.pos
    where = f"tensor #{index}"
    raw = cur.take(cur.uvarint(f"{where} name length"), f"{where} name")
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise L2FormatError(f"{where}: name is not UTF-8") from exc
    where = f"tensor {name!r}"
    dcode, kcode = cur.u8(f"{where} dtype"), cur.u8(f"{where} kind")
    if dcode not in DTYPE_CODES:
        raise L2FormatError(f"{where}: unknown dtype code {dcode}")
    if kcode != 0 and kcode not in KIND_CODES:
        raise L2FormatError(f"{where}: unknown transform code {kcode}")
    ndim = cur.uvarint(f"{where} ndim")
    if ndim > MAX_NDIM:
        raise L2FormatError(f"{where}: {ndim} dimensions")
    shape = tuple(int(d) for d in cur.uvarint_array(ndim, f"{where} shape"))
    if any(d > MAX_NUMEL for d in shape) or math.prod(shape) > MAX_NUMEL:
        raise L2FormatError(f"{where}: shape {shape} is implausibly large")
    e = TensorEntry(
        name=name,
        shape=shape,
        dtype=DTYPE_CODES[dcode],
        mode="stored" if kcode == 0 else "coded",
        kind=KIND_CODES.get(kcode),
        payload_bytes=cur.uvarint(f"{where} payload length"),
    )
    if e.mode == "stored":
        if e.payload_bytes != e.numel * itemsize(e.dtype):
            raise L2FormatError(
                f"{where}: payload length {e.payload_bytes} does not match shape {shape} of {e.dtype}"
            )
    else:
        _parse_coded(cur, e, where)
    e.entry_bytes = cur.pos - start
    return e


def _parse_coded(cur: Cursor, e: TensorEntry, where: str) -> None:
    if e.dtype not in CODED_DTYPES:
        raise L2FormatError(f"{where}: coded tensors must be floating, not {e.dtype}")
    layout = cur.u8(f"{where} parameter layout")
    e.trellis = bool(layout & TRELLIS_FLAG)
    layout &= ~TRELLIS_FLAG
    if layout == PER_CHANNEL and not e.shape:
        raise L2FormatError(f"{where}: per-channel parameters on a scalar")
    if layout not in (PER_TENSOR, PER_CHANNEL):
        raise L2FormatError(f"{where}: unknown parameter layout {layout}")
    channels = e.shape[0] if layout == PER_CHANNEL else 1
    names = PARAM_NAMES[e.kind]
    values = _unshuffle(cur.take(4 * channels * len(names), f"{where} parameters"))
    e.params = {
        n: (
            values[i * channels : (i + 1) * channels]
            if layout == PER_CHANNEL
            else np.asarray(values[i], dtype=np.float32)
        )
        for i, n in enumerate(names)
    }
    e.levels = cur.uvarint(f"{where} levels")
    if (e.levels == 0) != (e.numel == 0) or e.levels > MAX_LEVELS:
        raise L2FormatError(f"{where}: {e.levels} levels for {e.numel} symbols")
    if e.levels:
        e.lo = cur.svarint(f"{where} lowest symbol")
        if e.lo < INT32_MIN or e.hi > INT32_MAX:
            raise L2FormatError(f"{where}: symbol range {e.lo}..{e.hi} exceeds int32")
    if e.levels >= 2:
        start = cur.pos
        e.counts, e.bin_bits = decode_table(cur, e.levels, e.numel, f"{where} frequency table")
        e.table_bytes = cur.pos - start
        if e.payload_bytes == 0 or e.payload_bytes % 4:
            raise L2FormatError(
                f"{where}: payload length {e.payload_bytes} is not a positive number of words"
            )
    elif e.payload_bytes:
        raise L2FormatError(f"{where}: a tensor with {e.levels} level(s) has no payload")


def parse_manifest(raw: bytes) -> tuple[list[TensorEntry], dict]:
    """Entries (with running payload offsets relative to the first payload) and metadata."""
    cur = Cursor(raw)
    count = cur.uvarint("tensor count")
    if count > len(raw):
        raise L2FormatError(f"tensor count {count} exceeds the manifest")
    entries, names, offset = [], set(), 0
    for i in range(count):
        e = _parse_entry(cur, i)
        if e.name in names:
            raise L2FormatError(f"tensor {e.name!r} appears twice")
        names.add(e.name)
        e.payload_offset = offset
        offset += e.payload_bytes
        entries.append(e)
    meta_raw = cur.take(cur.uvarint("metadata length"), "metadata")
    if cur.remaining():
        raise L2FormatError(f"{cur.remaining()} unexpected bytes after the metadata")
    try:
        metadata = json.loads(meta_raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise L2FormatError(f"metadata is not valid JSON: {exc}") from exc
    if not isinstance(metadata, dict):
        raise L2FormatError("metadata is not a JSON object")
    return entries, metadata
