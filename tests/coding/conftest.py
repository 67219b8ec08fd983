"""Builders for `.l2` records and the reference decode (the canonical T⁻¹ then a torch cast, exactly what the
optimizer does) that every round trip is compared with, bit for bit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from compression_core.records import ArtifactContents, CodedTensor, StoredTensor
from compression_core.transforms.levels import PARAM_NAMES, decode_symbols

KINDS = tuple(PARAM_NAMES)
CODED_DTYPES = ("float32", "float16", "bfloat16", "float64")
STORED_DTYPES = (
    "float32",
    "float16",
    "bfloat16",
    "float64",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
)


def make_coded(
    name: str,
    shape: tuple[int, ...],
    dtype: str = "float32",
    kind: str = "prune_quant",
    per_channel: bool = False,
    scale: float = 3.0,
    seed: int = 0,
) -> CodedTensor:
    """Laplace-distributed symbols (about log2(2e·scale) bits) with positive parameters."""
    rng = np.random.default_rng(seed)
    numel = math.prod(shape)
    symbols = (
        np.round(rng.laplace(0.0, scale, numel)).astype(np.int32) if scale > 0 else np.zeros(numel, np.int32)
    )
    pshape = (shape[0],) if per_channel else ()
    params = {p: rng.uniform(0.01, 0.2, pshape).astype(np.float32) for p in PARAM_NAMES[kind]}
    return CodedTensor(name, shape, dtype, kind, params, symbols)


def make_stored(name: str, shape: tuple[int, ...], dtype: str, seed: int = 0) -> StoredTensor:
    g = torch.Generator().manual_seed(seed)
    t = (torch.randn(shape, generator=g) * 50).to(getattr(torch, dtype))
    return StoredTensor(name, shape, dtype, tensor_bytes(t))


def tensor_bytes(t: torch.Tensor) -> bytes:
    flat = t.contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def reference_tensor(record) -> torch.Tensor:
    """What the optimizer reports for a record (compressor.decode_state_dict's recipe)."""
    dtype = getattr(torch, record.dtype)
    if isinstance(record, StoredTensor):
        raw = np.frombuffer(record.data, dtype=np.uint8).copy()
        return torch.from_numpy(raw).view(dtype).reshape(record.shape)
    values = decode_symbols(record.kind, record.params, record.symbols, record.shape, record.trellis)
    return torch.from_numpy(np.ascontiguousarray(values)).to(dtype)


def assert_bit_exact(decoded: dict[str, torch.Tensor], contents: ArtifactContents) -> None:
    assert list(decoded) == [r.name for r in contents.records]
    for record in contents.records:
        got, want = decoded[record.name], reference_tensor(record)
        assert got.dtype == want.dtype and tuple(got.shape) == tuple(record.shape), record.name
        assert tensor_bytes(got) == tensor_bytes(want), f"{record.name} differs"


@pytest.fixture
def sample_contents() -> ArtifactContents:
    """A small model-like artifact touching every record variety (a few hundred bytes encoded)."""
    return ArtifactContents(
        records=[
            make_coded("conv.weight", (4, 2, 3, 3), "float32", "prune_quant", per_channel=True, seed=1),
            make_coded("conv.bias", (4,), "bfloat16", "linear", seed=2),
            make_coded("fc.weight", (3, 8), "float16", "log", seed=3),
            make_coded("const", (5,), "float32", "exp", scale=0.0),
            make_coded("scalar", (), "float64", "linear", seed=4),
            make_coded("empty", (0, 3), "float32", "linear"),
            make_stored("bn.running_mean", (4,), "float32"),
            make_stored("bn.num_batches_tracked", (), "int64"),
            make_stored("mask", (6,), "bool"),
        ],
        metadata={"source_digest": "sha256:abc", "target_ratio": 10.0},
    )
