"""Fixed-size parts of the container: the header and the trailer.

Header (32 bytes, little-endian)::

    0  magic            8 bytes  89 4C 32 5A 0D 0A 1A 0A  ("\\x89L2Z\\r\\n\\x1a\\n")
    8  format version   u16      the lowest that holds what the file uses: 1, 2 (trellis-coded symbols), 3 (binned
                                 frequency tables); docs/format.md
    10 coder id         u8       1 = constriction queue range coder, Categorical(perfect=False)
    11 flags            u8       0 (reserved)
    12 created          i64      Unix seconds, UTC
    20 manifest length  u32      bytes of the zlib-compressed manifest
    24 manifest raw     u32      bytes of the manifest once decompressed
    28 header CRC32     u32      over bytes 0..27 and the compressed manifest

Trailer (32 bytes): SHA-256 of every byte before it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from compression_core.coding.errors import L2FormatError

MAGIC = b"\x89L2Z\r\n\x1a\n"
FORMAT_VERSION = 3  # the newest this library reads and writes
# Version 2 added trellis-coded symbols, version 3 binned frequency tables; a file is written with the lowest
# version that holds what it uses, so older readers take every file that needs nothing newer.
TRELLIS_VERSION = 2
BINNED_TABLE_VERSION = 3
HEADER = struct.Struct("<8sHBBqII")
HEADER_BYTES = HEADER.size + 4
TRAILER_BYTES = 32
CHECK_BYTES = 4
MAX_MANIFEST_RAW = 1 << 30


@dataclass(frozen=True)
class Header:
    version: int
    coder: int
    flags: int
    created: int
    manifest_bytes: int
    manifest_raw_bytes: int
    crc: int

    def pack_fields(self) -> bytes:
        return HEADER.pack(
            MAGIC,
            self.version,
            self.coder,
            self.flags,
            self.created,
            self.manifest_bytes,
            self.manifest_raw_bytes,
        )


def parse_header(data: bytes, supported_coder: int) -> Header:
    """Validate magic, version and coder; raises `L2FormatError` saying what the file is not."""
    if len(data) < HEADER_BYTES:
        if MAGIC.startswith(data[: len(MAGIC)]) and data:
            raise L2FormatError(
                f"file is truncated: {len(data)} bytes, the header alone needs {HEADER_BYTES}"
            )
        raise L2FormatError("not an .l2 file (too short for the header)")
    magic, version, coder, flags, created, mbytes, mraw = HEADER.unpack(data[: HEADER.size])
    if magic != MAGIC:
        raise L2FormatError("not an .l2 file (wrong magic bytes)")
    if not 1 <= version <= FORMAT_VERSION:
        raise L2FormatError(
            f"format version {version} is not supported (this library reads versions 1 to "
            f"{FORMAT_VERSION}); upgrade l2-compression"
            if version > FORMAT_VERSION
            else f"format version {version} is invalid"
        )
    if coder != supported_coder:
        raise L2FormatError(f"header field coder: unknown entropy coder id {coder}")
    if flags != 0:
        raise L2FormatError(f"header field flags: unknown flags {flags:#x}")
    if mraw > MAX_MANIFEST_RAW:
        raise L2FormatError(f"header field manifest raw length: {mraw} bytes is implausibly large")
    crc = struct.unpack("<I", data[HEADER.size : HEADER_BYTES])[0]
    return Header(version, coder, flags, created, mbytes, mraw, crc)


def required_version(trellis: bool, binned_tables: bool) -> int:
    """The lowest format version that holds a file with these features."""
    if binned_tables:
        return BINNED_TABLE_VERSION
    return TRELLIS_VERSION if trellis else 1
