"""`.l2` file -> weights, streaming: header and manifest first, then one payload at a time (checked against
its CRC32 before it is decoded, and the decoded values against theirs), hashing as it goes; the SHA-256
trailer is compared last. Nothing is returned from a file that fails a check: every failure is an
`L2FormatError` naming the tensor or field.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from compression_core.coding import rangecoder
from compression_core.coding.dtypes import torch_dtype
from compression_core.coding.errors import L2FormatError
from compression_core.coding.layout import (
    BINNED_TABLE_VERSION,
    CHECK_BYTES,
    HEADER_BYTES,
    TRAILER_BYTES,
    TRELLIS_VERSION,
    parse_header,
)
from compression_core.coding.manifest import Manifest, TensorEntry, parse_manifest
from compression_core.coding.values import gather_values, tensor_crc
from compression_core.records import ArtifactContents, CodedTensor, StoredTensor


class L2Reader:
    """An open `.l2` file whose header, manifest and checks are verified; payloads are read on demand,
    in order, by `payloads`, and the whole-file hash is checked by `finish`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: BinaryIO = open(self.path, "rb")  # noqa: SIM115 - closed by close()/__exit__
        try:
            self._sha = hashlib.sha256()
            self.manifest = self._read_head()
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> L2Reader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def _read(self, n: int, what: str) -> bytes:
        data = self._file.read(n)
        if len(data) != n:
            raise L2FormatError(f"file is truncated inside {what}")
        self._sha.update(data)
        return data

    def _read_head(self) -> Manifest:
        size = os.fstat(self._file.fileno()).st_size
        head = self._file.read(HEADER_BYTES)
        self._sha.update(head)
        header = parse_header(head, rangecoder.CODER_ID)
        if size < HEADER_BYTES + header.manifest_bytes + TRAILER_BYTES:
            raise L2FormatError(f"file is truncated: {size} bytes cannot hold the manifest and trailer")
        compressed = self._read(header.manifest_bytes, "the manifest")
        if zlib.crc32(compressed, zlib.crc32(head[: HEADER_BYTES - 4])) != header.crc:
            raise L2FormatError("header or manifest is corrupted (CRC32 mismatch)")
        entries, metadata = parse_manifest(_inflate(compressed, header.manifest_raw_bytes))
        trellised = next((e.name for e in entries if e.trellis), None)
        if trellised is not None and header.version < TRELLIS_VERSION:
            raise L2FormatError(f"tensor {trellised!r}: trellis-coded symbols in a version {header.version} file")
        binned = next((e.name for e in entries if e.bin_bits), None)
        if binned is not None and header.version < BINNED_TABLE_VERSION:
            raise L2FormatError(f"tensor {binned!r}: a binned frequency table in a version {header.version} file")
        n_checks = sum(2 if e.has_value_check else 1 for e in entries)
        checks = self._read(CHECK_BYTES * (n_checks + 1), "the checks section")
        values = struct.unpack(f"<{n_checks + 1}I", checks)
        if zlib.crc32(checks[:-CHECK_BYTES]) != values[-1]:
            raise L2FormatError("checks section is corrupted (CRC32 mismatch)")
        it = iter(values)
        for e in entries:
            e.payload_crc = next(it)
            if e.has_value_check:
                e.value_crc = next(it)
        payload_start = HEADER_BYTES + header.manifest_bytes + len(checks)
        for e in entries:
            e.payload_offset += payload_start
        expected = payload_start + sum(e.payload_bytes for e in entries) + TRAILER_BYTES
        if size != expected:
            raise L2FormatError(
                f"file is {'truncated' if size < expected else 'longer than its manifest says'}: "
                f"{size} bytes, expected {expected}"
            )
        created = (
            datetime.fromtimestamp(header.created, tz=UTC)
            if 0 <= header.created < 1 << 37
            else datetime.fromtimestamp(0, tz=UTC)
        )
        metadata = {**metadata, "created": created.isoformat()}
        return Manifest(
            header.version,
            header.coder,
            created,
            entries,
            metadata,
            HEADER_BYTES,
            header.manifest_bytes,
            header.manifest_raw_bytes,
            len(checks),
            TRAILER_BYTES,
            size,
        )

    def payloads(self) -> Iterator[tuple[TensorEntry, bytearray]]:
        """Each tensor's entry and its CRC-verified payload bytes, in file order."""
        for e in self.manifest.entries:
            buf = bytearray(e.payload_bytes)
            if e.payload_bytes and self._file.readinto(buf) != e.payload_bytes:
                raise L2FormatError(f"tensor {e.name!r}: file is truncated inside its payload")
            self._sha.update(buf)
            if zlib.crc32(buf) != e.payload_crc:
                raise L2FormatError(f"tensor {e.name!r}: payload is corrupted (CRC32 mismatch)")
            yield e, buf

    def finish(self) -> None:
        """Compare the SHA-256 trailer with the hash of everything read (call after all payloads)."""
        digest = self._sha.digest()
        trailer = self._file.read(TRAILER_BYTES + 1)
        if len(trailer) != TRAILER_BYTES:
            raise L2FormatError("trailer is missing or has the wrong length")
        if trailer != digest:
            raise L2FormatError("trailer SHA-256 does not match the file contents")


def _inflate(compressed: bytes, raw_bytes: int) -> bytes:
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(compressed, raw_bytes + 1)
    except zlib.error as exc:
        raise L2FormatError(f"manifest does not decompress: {exc}") from exc
    if len(raw) != raw_bytes or not inflater.eof or inflater.unused_data:
        raise L2FormatError("manifest length does not match the header")
    return raw


def decode_symbols(entry: TensorEntry, payload: bytes | bytearray) -> np.ndarray:
    """Symbols shifted to ``0..levels-1`` (int32, flat) of a coded tensor."""
    if entry.levels >= 2:
        return rangecoder.decode(payload, entry.counts, entry.numel, entry.name)
    return np.zeros(entry.numel, dtype=np.int32)


def decode_tensor(entry: TensorEntry, payload: bytearray) -> torch.Tensor:
    """One tensor, bit-exact, on the CPU; coded values are checked against the encoder's CRC32."""
    if entry.mode == "stored":
        dtype = torch_dtype(entry.dtype)
        if entry.numel == 0:
            return torch.zeros(entry.shape, dtype=dtype)
        return torch.frombuffer(payload, dtype=torch.uint8).view(dtype).reshape(entry.shape)
    values = gather_values(entry, decode_symbols(entry, payload))
    if entry.has_value_check and tensor_crc(values) != entry.value_crc:
        raise L2FormatError(
            f"tensor {entry.name!r}: decoded values differ from what the encoder produced "
            "(CRC32 mismatch; a different constriction or NumPy build?)"
        )
    return values


def load_l2(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The state_dict stored in a `.l2` file: original keys in order, shapes, dtypes, bit-exact values.
    Reads and decodes one tensor at a time; raises `L2FormatError` for any foreign, truncated or corrupted
    file (after the last tensor, the whole-file SHA-256 is checked before anything is returned)."""
    out: dict[str, torch.Tensor] = {}
    with L2Reader(path) as reader:
        for entry, payload in reader.payloads():
            out[entry.name] = decode_tensor(entry, payload).to(device)
        reader.finish()
    return out


def read_manifest(path: str | Path) -> Manifest:
    """Header, manifest and checks of a file, without reading or decoding any payload."""
    with L2Reader(path) as reader:
        return reader.manifest


def verify_file(path: str | Path) -> Manifest:
    """`read_manifest`, after checking every payload's CRC32 and the whole-file SHA-256 trailer: one pass over
    the bytes and no decoding, so what `l2 inspect` reports about a file is known to be intact."""
    with L2Reader(path) as reader:
        for _ in reader.payloads():
            pass
        reader.finish()
        return reader.manifest


def decode_contents(path: str | Path) -> ArtifactContents:
    """The records a file was written from (symbols rather than weights), with its metadata; the writer's
    additions (``library_version``, ``created``) appear in the metadata."""
    records = []
    with L2Reader(path) as reader:
        for e, payload in reader.payloads():
            if e.mode == "stored":
                records.append(StoredTensor(e.name, e.shape, e.dtype, bytes(payload)))
                continue
            shifted = decode_symbols(e, payload)
            symbols = (shifted.astype(np.int64) + e.lo).astype(np.int32).reshape(e.shape)
            decode_tensor(e, payload)  # verifies the value checksum
            records.append(CodedTensor(e.name, e.shape, e.dtype, e.kind, dict(e.params), symbols, e.trellis))
        reader.finish()
        metadata = dict(reader.manifest.metadata)
    return ArtifactContents(records=records, metadata=metadata)
