"""Round trips: every dtype, transform kind, parameter layout and degenerate shape decodes bit-exact to what
the optimizer reports; sizes are exact; invalid records are refused with the tensor's name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    CODED_DTYPES,
    KINDS,
    STORED_DTYPES,
    assert_bit_exact,
    make_coded,
    make_stored,
)

from compression_core.coding import decode_contents, encode_l2, encoded_size, load_l2, read_manifest, write_l2, writer
from compression_core.records import ArtifactContents, CodedTensor


def roundtrip(tmp_path: Path, contents: ArtifactContents) -> dict[str, torch.Tensor]:
    path = tmp_path / "m.l2"
    size = write_l2(contents, path)
    assert size == path.stat().st_size == encoded_size(contents)
    decoded = load_l2(path)
    assert_bit_exact(decoded, contents)
    return decoded


@pytest.mark.parametrize("dtype", CODED_DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("per_channel", [False, True])
def test_coded_roundtrip_is_bit_exact(tmp_path, dtype, kind, per_channel):
    record = make_coded("w", (6, 5, 3), dtype, kind, per_channel=per_channel, scale=4.0)
    roundtrip(tmp_path, ArtifactContents([record]))


@pytest.mark.parametrize("dtype", CODED_DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("per_channel", [False, True])
def test_trellis_coded_roundtrip_is_bit_exact(tmp_path, dtype, kind, per_channel):
    """Any symbols are a path of the state machine; the decoder maps them to levels before the gather."""
    record = make_coded("w", (6, 5, 3), dtype, kind, per_channel=per_channel, scale=4.0)
    record.trellis = True
    plain = make_coded("b", (6,), dtype, kind)
    decoded = roundtrip(tmp_path, ArtifactContents([record, plain]))
    manifest = read_manifest(tmp_path / "m.l2")
    assert manifest.version >= 2 and [e.trellis for e in manifest.entries] == [True, False]
    back = decode_contents(tmp_path / "m.l2").records[0]
    assert back.trellis and np.array_equal(back.symbols.reshape(-1), record.symbols)
    assert not torch.equal(decoded["w"], roundtrip(tmp_path, ArtifactContents([make_coded(
        "w", (6, 5, 3), dtype, kind, per_channel=per_channel, scale=4.0)]))["w"]), "the flag changes the values"


def _record(name: str, symbols: np.ndarray, trellis: bool = False) -> CodedTensor:
    return CodedTensor(name, symbols.shape, "float32", "linear", {"s": np.float32(0.01)}, symbols, trellis)


def test_each_file_takes_the_lowest_version_that_holds_it(tmp_path):
    """Readers that predate a version keep reading every file that does not need it: 1 for exact tables and
    plain symbols, 2 with trellis-coded symbols, 3 with a binned table."""
    # a peaked histogram of many values: the exact table is the cheapest
    narrow = np.round(np.random.default_rng(0).normal(0, 2, size=(64, 64))).astype(np.int32)
    wide = np.random.default_rng(1).integers(-5000, 5000, size=(96,)).astype(np.int32)  # 96 values, 10k levels
    for records, version in [
        ([_record("w", narrow)], 1),
        ([_record("w", narrow, trellis=True)], 2),
        ([_record("w", narrow), _record("gamma", wide)], 3),
    ]:
        roundtrip(tmp_path, ArtifactContents(records))
        manifest = read_manifest(tmp_path / "m.l2")
        assert manifest.version == version
        assert [e.bin_bits > 0 for e in manifest.entries] == [r.name == "gamma" for r in records]


def test_a_wide_sparse_tensor_costs_less_with_a_binned_table(monkeypatch):
    """96 values over ~10,000 levels: one count per level would cost more than the payload it saves."""
    wide = np.random.default_rng(1).integers(-5000, 5000, size=(96,)).astype(np.int32)
    contents = ArtifactContents([_record("gamma", wide)])
    binned = encoded_size(contents)
    monkeypatch.setattr(writer, "choose_bin_bits", lambda counts: 0)
    assert binned < 0.9 * encoded_size(contents)


@pytest.mark.parametrize("dtype", STORED_DTYPES)
def test_stored_roundtrip_is_exact_bytes(tmp_path, dtype):
    roundtrip(tmp_path, ArtifactContents([make_stored("t", (3, 4), dtype), make_stored("s", (), dtype)]))


@pytest.mark.parametrize("shape", [(0,), (0, 3), (3, 0, 2), ()])
def test_empty_and_scalar_coded_tensors(tmp_path, shape):
    roundtrip(tmp_path, ArtifactContents([make_coded("t", shape, "float16", "linear")]))


@pytest.mark.parametrize("per_channel", [False, True])
def test_single_level_tensors_need_no_payload(tmp_path, per_channel):
    record = make_coded("c", (4, 7), "float32", "prune_quant", per_channel=per_channel)
    record.symbols = np.full(28, -3, dtype=np.int32)
    roundtrip(tmp_path, ArtifactContents([record]))
    [entry] = read_manifest(tmp_path / "m.l2").entries
    assert entry.payload_bytes == 0 and entry.levels == 1 and entry.counts is None


def test_two_levels_and_wide_sparse_range(tmp_path):
    two = make_coded("two", (50,), "float32", "linear")
    two.symbols = np.where(np.arange(50) % 3 == 0, 5, 6).astype(np.int32)
    wide = make_coded("wide", (40,), "float32", "linear")
    wide.symbols = np.array([-5000, 5000] + [0] * 38, dtype=np.int32)
    roundtrip(tmp_path, ArtifactContents([two, wide]))
    entries = read_manifest(tmp_path / "m.l2").entries
    assert entries[1].levels == 10001 and entries[1].used_levels == 3
    assert entries[1].table_bytes < 20, "a sparse table must be stored sparsely"


def test_symbols_may_be_int64_and_shaped(tmp_path):
    record = make_coded("w", (3, 4), "float32", "linear")
    record.symbols = record.symbols.astype(np.int64).reshape(3, 4)
    roundtrip(tmp_path, ArtifactContents([record]))


def test_mixed_model_keeps_order_metadata_and_symbols(tmp_path, sample_contents):
    roundtrip(tmp_path, sample_contents)
    back = decode_contents(tmp_path / "m.l2")
    assert [r.name for r in back.records] == [r.name for r in sample_contents.records]
    for got, want in zip(back.records, sample_contents.records, strict=True):
        assert type(got) is type(want) and got.shape == want.shape and got.dtype == want.dtype
        if isinstance(want, CodedTensor):
            assert got.kind == want.kind
            assert np.array_equal(got.symbols.reshape(-1), np.asarray(want.symbols).reshape(-1))
            for k, v in want.params.items():
                assert got.params[k].shape == v.shape and np.array_equal(got.params[k], v)
        else:
            assert got.data == want.data
    assert back.metadata["source_digest"] == "sha256:abc" and back.metadata["target_ratio"] == 10.0
    assert back.metadata["library_version"] and back.metadata["created"]


def test_encoding_is_deterministic_given_creation_time(sample_contents):
    a, b = (
        encode_l2(sample_contents, created=1_700_000_000),
        encode_l2(sample_contents, created=1_700_000_000),
    )
    assert a == b and len(a) == encoded_size(sample_contents)


def test_manifest_byte_figures_add_up(tmp_path, sample_contents):
    size = write_l2(sample_contents, tmp_path / "m.l2")
    m = read_manifest(tmp_path / "m.l2")
    assert m.header_bytes + m.manifest_bytes + m.checks_bytes + m.payload_bytes + m.trailer_bytes == size
    offsets = [e.payload_offset for e in m.entries]
    assert offsets == sorted(offsets) and offsets[0] == m.header_bytes + m.manifest_bytes + m.checks_bytes


def test_write_is_atomic_and_leaves_no_temporary_files(tmp_path, sample_contents):
    write_l2(sample_contents, tmp_path / "m.l2")
    write_l2(sample_contents, tmp_path / "m.l2")  # overwrite in place
    assert [p.name for p in tmp_path.iterdir()] == ["m.l2"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_load_onto_cuda(tmp_path, sample_contents):
    write_l2(sample_contents, tmp_path / "m.l2")
    decoded = load_l2(tmp_path / "m.l2", device="cuda")
    assert all(t.device.type == "cuda" for t in decoded.values())


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: setattr(r, "params", {"s": np.float32(0.1)}), "needs parameters"),
        (lambda r: setattr(r, "params", {"e": np.ones(3, np.float32), "s": np.ones(3, np.float32)}), "shape"),
        (lambda r: setattr(r, "symbols", r.symbols[:-1]), "symbols for shape"),
        (lambda r: setattr(r, "dtype", "int32"), "cannot be coded"),
        (lambda r: setattr(r, "kind", "cubic"), "unknown transform"),
        (lambda r: setattr(r, "symbols", r.symbols.astype(np.float32)), "integers"),
        (
            lambda r: setattr(r, "symbols", np.where(r.symbols > 0, 1 << 30, -(1 << 30)).astype(np.int32)),
            "levels",
        ),
    ],
)
def test_invalid_coded_records_name_the_tensor(mutate, message):
    record = make_coded("layer.weight", (4, 5), "float32", "prune_quant")
    mutate(record)
    with pytest.raises(ValueError, match=message) as info:
        encode_l2(ArtifactContents([record]))
    assert "layer.weight" in str(info.value)


def test_invalid_stored_records_and_duplicates():
    bad = make_stored("buf", (4,), "float32")
    bad.data = bad.data[:-1]
    with pytest.raises(ValueError, match="buf"):
        encode_l2(ArtifactContents([bad]))
    dup = make_stored("x", (1,), "int8")
    with pytest.raises(ValueError, match="unique"):
        encode_l2(ArtifactContents([dup, dup]))


def test_metadata_accepts_numpy_numbers_and_refuses_objects(tmp_path, sample_contents):
    sample_contents.metadata = {"ratio": np.float32(9.5), "sizes": np.arange(3)}
    write_l2(sample_contents, tmp_path / "m.l2")
    meta = read_manifest(tmp_path / "m.l2").metadata
    assert meta["ratio"] == 9.5 and meta["sizes"] == [0, 1, 2]
    sample_contents.metadata = {"oops": object()}
    with pytest.raises(ValueError, match="metadata"):
        encode_l2(sample_contents)
