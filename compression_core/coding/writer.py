"""Records -> `.l2` bytes: `encode_l2`, `write_l2` (atomic), `encoded_size` (exact, for the ratio controller).

Layout: header · zlib(manifest) · checks · payloads · SHA-256 trailer (see docs/format.md). The checks
section (one CRC32 per payload, one CRC32 of the decoded values of each non-empty coded tensor, and a CRC32
of the section itself) sits
outside the compressed manifest so that the file size does not depend on checksum values: `encoded_size`
can skip computing the value checks and still be exact.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compression_core.coding import rangecoder
from compression_core.coding.dtypes import dtype_code, itemsize
from compression_core.coding.layout import CHECK_BYTES, HEADER_BYTES, TRAILER_BYTES, Header, required_version
from compression_core.coding.manifest import MAX_LEVELS, TensorEntry, encode_manifest
from compression_core.coding.tables import choose_bin_bits, model_counts, symbol_counts
from compression_core.coding.values import gather_values, tensor_crc
from compression_core.records import ArtifactContents, CodedTensor, StoredTensor, TensorRecord
from compression_core.transforms.levels import PARAM_NAMES

ZLIB_LEVEL = 9


@dataclass
class _Encoded:
    entry: TensorEntry
    code: int
    payload: bytes


def _check_params(record: CodedTensor) -> None:
    if record.kind not in PARAM_NAMES:
        raise ValueError(f"tensor {record.name!r}: unknown transform kind {record.kind!r}")
    expected = set(PARAM_NAMES[record.kind])
    if set(record.params) != expected:
        raise ValueError(
            f"tensor {record.name!r}: transform {record.kind!r} needs parameters "
            f"{sorted(expected)}, got {sorted(record.params)}"
        )
    shapes = {np.asarray(v).shape for v in record.params.values()}
    channels = record.shape[0] if record.shape else None
    if len(shapes) != 1 or next(iter(shapes)) not in ((), (channels,)):
        raise ValueError(
            f"tensor {record.name!r}: parameters must all have shape () or ({channels},) "
            f"(per output channel), got {sorted(shapes)}"
        )


def _encode_coded(record: CodedTensor, value_check: bool) -> _Encoded:
    _check_params(record)
    code = dtype_code(record.dtype, record.name, coded=True)
    entry = TensorEntry(
        record.name,
        tuple(record.shape),
        record.dtype,
        "coded",
        record.kind,
        {k: np.asarray(v, dtype=np.float32) for k, v in record.params.items()},
        trellis=bool(record.trellis),
    )
    symbols = np.asarray(record.symbols).reshape(-1)
    if symbols.size != entry.numel:
        raise ValueError(f"tensor {record.name!r}: {symbols.size} symbols for shape {entry.shape}")
    if symbols.size == 0:
        return _Encoded(entry, code, b"")
    if not np.issubdtype(symbols.dtype, np.integer):
        raise ValueError(f"tensor {record.name!r}: symbols must be integers, not {symbols.dtype}")
    lo, hi = int(symbols.min()), int(symbols.max())
    if lo < -(1 << 31) or hi >= 1 << 31 or hi - lo >= MAX_LEVELS:
        raise ValueError(
            f"tensor {record.name!r}: symbols span {lo}..{hi}; at most {MAX_LEVELS} levels "
            "within int32 are supported"
        )
    shifted = (symbols.astype(np.int32, copy=False) - np.int32(lo)).astype(np.int32, copy=False)
    entry.lo, entry.levels = lo, hi - lo + 1
    payload = b""
    if entry.levels >= 2:
        counts = symbol_counts(shifted, entry.levels)
        entry.bin_bits = choose_bin_bits(counts)
        entry.counts = model_counts(counts, entry.bin_bits)
        payload = rangecoder.encode(shifted, entry.counts)
    entry.payload_bytes = len(payload)
    entry.payload_crc = zlib.crc32(payload)
    if value_check:
        entry.value_crc = tensor_crc(gather_values(entry, shifted))
    return _Encoded(entry, code, payload)


def _encode_stored(record: StoredTensor) -> _Encoded:
    code = dtype_code(record.dtype, record.name, coded=False)
    entry = TensorEntry(record.name, tuple(record.shape), record.dtype, "stored")
    data = bytes(record.data)
    if len(data) != entry.numel * itemsize(record.dtype):
        raise ValueError(
            f"tensor {record.name!r}: {len(data)} bytes for shape {entry.shape} of {record.dtype}"
        )
    entry.payload_bytes, entry.payload_crc = len(data), zlib.crc32(data)
    return _Encoded(entry, code, data)


def _encode_record(record: TensorRecord, value_check: bool) -> _Encoded:
    if isinstance(record, CodedTensor):
        return _encode_coded(record, value_check)
    if isinstance(record, StoredTensor):
        return _encode_stored(record)
    raise TypeError(f"expected CodedTensor or StoredTensor, got {type(record).__name__}")


def _metadata(contents: ArtifactContents) -> dict:
    from compression_core import __version__

    meta = {k: v for k, v in contents.metadata.items() if k != "created"}  # creation time lives in the header
    meta["library_version"] = __version__
    return meta


def _encode_all(contents: ArtifactContents, value_check: bool) -> tuple[list[_Encoded], bytes, int]:
    names = [r.name for r in contents.records]
    if len(set(names)) != len(names):
        raise ValueError("tensor names must be unique")
    encoded = [_encode_record(r, value_check) for r in contents.records]
    raw = encode_manifest([e.entry for e in encoded], [e.code for e in encoded], _metadata(contents))
    return encoded, zlib.compress(raw, ZLIB_LEVEL), len(raw)


def _checks(encoded: list[_Encoded]) -> bytes:
    out = bytearray()
    for e in encoded:
        out += struct.pack("<I", e.entry.payload_crc)
        if e.entry.has_value_check:
            out += struct.pack("<I", e.entry.value_crc)
    return bytes(out) + struct.pack("<I", zlib.crc32(out))


def _parts(contents: ArtifactContents, created: int | None) -> list[bytes]:
    """Every byte of the file in order, trailer included."""
    encoded, manifest, raw_len = _encode_all(contents, value_check=True)
    checks = _checks(encoded)
    fields = Header(
        required_version(any(e.entry.trellis for e in encoded), any(e.entry.bin_bits for e in encoded)),
        rangecoder.CODER_ID,
        0,
        int(time.time()) if created is None else created,
        len(manifest),
        raw_len,
        0,
    ).pack_fields()
    crc = zlib.crc32(manifest, zlib.crc32(fields))
    parts = [fields + struct.pack("<I", crc), manifest, checks] + [e.payload for e in encoded]
    sha = hashlib.sha256()
    for p in parts:
        sha.update(p)
    return parts + [sha.digest()]


def encode_l2(contents: ArtifactContents, created: int | None = None) -> bytes:
    """The `.l2` file's bytes. ``created`` (Unix seconds) defaults to now; pass it for reproducible bytes."""
    return b"".join(_parts(contents, created))


def write_l2(contents: ArtifactContents, path: str | Path, created: int | None = None) -> int:
    """Write the file atomically (temporary file in the same folder, fsync, rename); returns its bytes."""
    path = Path(path)
    parts = _parts(contents, created)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for p in parts:
                f.write(p)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable; not every platform lets us open a directory
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return sum(len(p) for p in parts)


def encoded_size(contents: ArtifactContents) -> int:
    """Exact byte size of ``encode_l2(contents)`` (range-codes every tensor; skips the value checksums and
    the SHA-256, whose values do not change the size)."""
    encoded, manifest, _ = _encode_all(contents, value_check=False)
    checks = CHECK_BYTES * (1 + sum(2 if e.entry.has_value_check else 1 for e in encoded))
    return HEADER_BYTES + len(manifest) + checks + sum(len(e.payload) for e in encoded) + TRAILER_BYTES


def payload_sizes(contents: ArtifactContents) -> dict[str, int]:
    """Bytes of each tensor's payload in the file (range-coded symbols or stored bytes), by tensor name:
    what the per-layer report shows (shared header, manifest and checksums excluded)."""
    encoded, _, _ = _encode_all(contents, value_check=False)
    return {e.entry.name: len(e.payload) for e in encoded}
