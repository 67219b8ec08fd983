"""A truncated, corrupted or foreign file raises `L2FormatError`, never returns weights: every single-byte
corruption and every truncation of a small sample file is tried."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import numpy as np
import pytest
from conftest import make_coded

from compression_core.coding import L2FormatError, decode_contents, encode_l2, load_l2, read_manifest
from compression_core.coding import values as values_module
from compression_core.records import ArtifactContents, CodedTensor


@pytest.fixture
def sample_bytes(sample_contents) -> bytes:
    data = encode_l2(sample_contents, created=1_700_000_000)
    assert 200 < len(data) < 4000
    return data


def test_every_single_byte_corruption_is_detected(tmp_path, sample_bytes):
    path = tmp_path / "bad.l2"
    for pos in range(len(sample_bytes)):
        corrupted = bytearray(sample_bytes)
        corrupted[pos] ^= 0xFF
        path.write_bytes(corrupted)
        with pytest.raises(L2FormatError):
            load_l2(path)
            pytest.fail(f"corruption at byte {pos} went unnoticed")


def test_every_truncation_is_detected(tmp_path, sample_bytes):
    path = tmp_path / "short.l2"
    for length in range(len(sample_bytes)):
        path.write_bytes(sample_bytes[:length])
        with pytest.raises(L2FormatError):
            load_l2(path)
            pytest.fail(f"truncation to {length} bytes went unnoticed")
        if length >= 32:  # beyond the header, the manifest reader must notice too
            with pytest.raises(L2FormatError, match="truncated"):
                read_manifest(path)


def test_appended_bytes_are_detected(tmp_path, sample_bytes):
    path = tmp_path / "long.l2"
    path.write_bytes(sample_bytes + b"\0")
    with pytest.raises(L2FormatError, match="longer"):
        load_l2(path)


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("data.pkl", b"not a model")
    return buf.getvalue()


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x89",
        b"hello world, I am text\n" * 4,
        _zip_bytes(),
        np.random.default_rng(0).bytes(5000),
        b"\x89L2Z\r\n\x1a\n",
    ],
    ids=["empty", "one-byte", "text", "zip", "random", "magic-only"],
)
def test_foreign_files_are_refused(tmp_path, content):
    path = tmp_path / "foreign.l2"
    path.write_bytes(content)
    for reader in (load_l2, read_manifest, decode_contents):
        with pytest.raises(L2FormatError):
            reader(path)


def test_newer_format_version_says_to_upgrade(tmp_path, sample_bytes):
    data = bytearray(sample_bytes)
    struct.pack_into("<H", data, 8, 4)
    (tmp_path / "v4.l2").write_bytes(data)
    with pytest.raises(L2FormatError, match="upgrade"):
        read_manifest(tmp_path / "v4.l2")


def _claiming_version(path, contents: ArtifactContents, version: int) -> int:
    """Write ``contents`` with the header's version replaced and the header re-signed, so that only the
    version is wrong; returns the version the writer chose."""
    data = bytearray(encode_l2(contents, created=0))
    written = struct.unpack_from("<H", data, 8)[0]
    struct.pack_into("<H", data, 8, version)
    manifest_bytes = struct.unpack_from("<I", data, 20)[0]
    crc = zlib.crc32(bytes(data[32 : 32 + manifest_bytes]), zlib.crc32(bytes(data[:28])))
    struct.pack_into("<I", data, 28, crc)
    path.write_bytes(data)
    return written


def test_trellis_coded_symbols_in_a_version_1_file_are_refused(tmp_path):
    """Version 1 readers predate the trellis flag: a file claiming version 1 must not carry it."""
    record = make_coded("fc.weight", (6, 4), "float32", "prune_quant")
    record.trellis = True
    assert _claiming_version(tmp_path / "m.l2", ArtifactContents([record]), 1) >= 2
    with pytest.raises(L2FormatError, match="fc.weight.*trellis-coded symbols in a version 1 file"):
        read_manifest(tmp_path / "m.l2")


def test_a_binned_table_in_a_version_2_file_is_refused(tmp_path):
    """Readers of version 2 predate binned tables (format 2): a file claiming version 2 must not carry one."""
    wide = np.random.default_rng(1).integers(-5000, 5000, size=(96,)).astype(np.int32)
    record = CodedTensor("bn.weight", wide.shape, "float32", "linear", {"s": np.float32(0.01)}, wide)
    assert _claiming_version(tmp_path / "m.l2", ArtifactContents([record]), 2) == 3
    with pytest.raises(L2FormatError, match="bn.weight.*binned frequency table in a version 2 file"):
        read_manifest(tmp_path / "m.l2")


def test_decoder_drift_is_caught_by_the_value_checksum(tmp_path, sample_bytes, monkeypatch):
    """If T⁻¹ or the coder ever decoded differently from the encoder's machine, the value CRC says so."""
    (tmp_path / "m.l2").write_bytes(sample_bytes)
    original = values_module.level_values
    monkeypatch.setattr(
        values_module,
        "level_values",
        lambda kind, params, lo, hi: np.nextafter(original(kind, params, lo, hi), np.float32(np.inf)),
    )
    with pytest.raises(L2FormatError, match="conv.weight.*decoded values"):
        load_l2(tmp_path / "m.l2")


def test_errors_name_the_tensor_at_fault(tmp_path, sample_bytes):
    m = None
    (tmp_path / "m.l2").write_bytes(sample_bytes)
    m = read_manifest(tmp_path / "m.l2")
    target = next(e for e in m.entries if e.name == "fc.weight")
    data = bytearray(sample_bytes)
    data[target.payload_offset + 1] ^= 0x01
    (tmp_path / "m.l2").write_bytes(data)
    with pytest.raises(L2FormatError, match="fc.weight"):
        load_l2(tmp_path / "m.l2")
