"""Property-based round trips over random tensors, parameters and symbol ranges, and of the compact tables."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import CODED_DTYPES, KINDS, assert_bit_exact
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compression_core.coding import decode_contents, encode_l2, encoded_size, load_l2
from compression_core.coding.tables import decode_table, encode_table, model_counts, table_bytes
from compression_core.coding.varint import Cursor, uvarint, uvarint_array
from compression_core.records import ArtifactContents, CodedTensor
from compression_core.transforms.levels import PARAM_NAMES

SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@st.composite
def coded_records(draw, index: int = 0) -> CodedTensor:
    shape = tuple(draw(st.lists(st.integers(0, 6), min_size=0, max_size=3)))
    kind = draw(st.sampled_from(KINDS))
    per_channel = bool(shape) and draw(st.booleans())
    numel = math.prod(shape)
    lo = draw(st.integers(-3000, 3000))
    span = draw(st.sampled_from([0, 1, 2, 15, 300]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    symbols = (lo + rng.integers(0, span + 1, numel)).astype(np.int32)
    pshape = (shape[0],) if per_channel else ()
    positive = st.floats(2.0**-12, 8.0, allow_nan=False, width=32)
    params = {
        p: np.asarray(
            draw(st.lists(positive, min_size=math.prod(pshape), max_size=math.prod(pshape))),
            dtype=np.float32,
        ).reshape(pshape)
        for p in PARAM_NAMES[kind]
    }
    return CodedTensor(f"t{index}", shape, draw(st.sampled_from(CODED_DTYPES)), kind, params, symbols)


@pytest.mark.filterwarnings(
    "ignore::RuntimeWarning"
)  # wide log-kind ranges overflow to ±inf: must round-trip too
@SETTINGS
@given(st.lists(coded_records(), min_size=1, max_size=4))
def test_random_coded_tensors_roundtrip(tmp_path, records):
    for i, r in enumerate(records):
        r.name = f"t{i}"
    contents = ArtifactContents(records)
    data = encode_l2(contents)
    assert len(data) == encoded_size(contents)
    path = tmp_path / "p.l2"
    path.write_bytes(data)
    assert_bit_exact(load_l2(path), contents)
    for got, want in zip(decode_contents(path).records, records, strict=True):
        assert np.array_equal(got.symbols.reshape(-1), want.symbols)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**40), min_size=0, max_size=50))
def test_varint_arrays_match_scalar_varints(values):
    data = uvarint_array(np.asarray(values, dtype=np.int64))
    assert data == b"".join(uvarint(v) for v in values)
    assert Cursor(data).uvarint_array(len(values), "x").tolist() == values


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 5000), min_size=2, max_size=300), st.integers(1, 10**6), st.integers(1, 10**6))
def test_tables_roundtrip(middle, first, last):
    counts = np.asarray([first, *middle, last], dtype=np.int64)
    for bin_bits in range(0, 11):  # exact, binned, and (from 2^9 on) one bin over the whole range
        model = model_counts(counts, bin_bits)
        data = encode_table(model, bin_bits)
        assert len(data) == table_bytes(counts, bin_bits)
        cur = Cursor(data)
        decoded, decoded_bits = decode_table(cur, counts.size, int(counts.sum()), "t")
        assert np.array_equal(decoded, model) and decoded_bits == bin_bits
        assert cur.remaining() == 0
