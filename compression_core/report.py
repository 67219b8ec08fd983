"""Per-layer results: what each tensor became and what it costs (paper Fig. 6 bit-widths, plus entropy,
sparsity and bytes), and the run's summary."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from compression_core.records import CodedTensor, StoredTensor, TensorRecord

_BYTES_PER_ELEMENT = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2,
    "int8": 1, "uint8": 1, "bool": 1,
}
FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")


def original_bytes(name_dtype_numel: tuple[str, str, int]) -> int:
    """Bytes a tensor counts for in the ratio's numerator: 4 per element for floating tensors (the fp32
    reference the ratio is defined against), the tensor's own width for integer tensors."""
    _, dtype, numel = name_dtype_numel
    if dtype in FLOAT_DTYPES:
        return 4 * numel
    return _BYTES_PER_ELEMENT.get(dtype, 8) * numel


def symbol_counts(symbols: np.ndarray) -> np.ndarray:
    """Counts of the symbol values that occur (any order). A bincount over the symbol range, O(n): the size
    controller reports every layer on each of its steps, and sorting (np.unique) took longer than coding."""
    if symbols.size == 0:
        return np.zeros(0, dtype=np.int64)
    symbols = np.asarray(symbols, dtype=np.int64).reshape(-1)
    counts = np.bincount(symbols - symbols.min())
    return counts[counts > 0]


def _entropy_of(counts: np.ndarray) -> float:
    if counts.size == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def empirical_entropy_bits(symbols: np.ndarray) -> float:
    """Order-0 entropy of the symbols in bits per symbol (what an ideal range coder spends)."""
    return _entropy_of(symbol_counts(symbols))


@dataclass
class LayerReport:
    """One state_dict entry. ``bit_width`` = log2(levels used); ``entropy_bits`` = bits/weight spent by the
    coder; ``sparsity`` = fraction of exact zeros after decoding; ``bytes`` = payload bytes in the file
    (coded payload or stored bytes, excluding shared headers)."""

    name: str
    shape: list[int]
    dtype: str
    numel: int
    mode: str  # "coded" or "stored"
    transform: str | None
    params: dict[str, list[float]]
    levels: int
    bit_width: float
    entropy_bits: float
    sparsity: float
    bytes: int
    original_bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


def layer_report(record: TensorRecord, payload_bytes: int | None = None) -> LayerReport:
    """Summarise one record; ``payload_bytes`` defaults to the ideal entropy-coded size. Symbol 0 decodes
    to exactly 0.0 under every transform kind, so sparsity is the fraction of zero symbols."""
    numel = int(np.prod(record.shape)) if record.shape else 1
    orig = original_bytes((record.name, record.dtype, numel))
    if isinstance(record, StoredTensor):
        return LayerReport(
            name=record.name, shape=list(record.shape), dtype=record.dtype, numel=numel, mode="stored",
            transform=None, params={}, levels=0, bit_width=0.0, entropy_bits=0.0, sparsity=0.0,
            bytes=len(record.data) if payload_bytes is None else payload_bytes, original_bytes=orig,
        )
    assert isinstance(record, CodedTensor)
    symbols = record.symbols
    counts = symbol_counts(symbols)
    levels = int(counts.size)
    entropy = _entropy_of(counts)
    if payload_bytes is None:
        payload_bytes = math.ceil(entropy * symbols.size / 8)
    return LayerReport(
        name=record.name, shape=list(record.shape), dtype=record.dtype, numel=numel, mode="coded",
        transform=record.kind,
        params={k: np.asarray(v, dtype=np.float32).reshape(-1).tolist() for k, v in record.params.items()},
        levels=levels, bit_width=math.log2(levels) if levels > 0 else 0.0, entropy_bits=entropy,
        sparsity=float((symbols == 0).mean()) if symbols.size else 0.0,
        bytes=payload_bytes, original_bytes=orig,
    )


def file_metadata(layers: list[LayerReport], target_ratio: float, original: int) -> dict:
    """The small per-layer summary and targets stored inside the file for `l2 inspect`. It is part of the
    file, so the ratio controller measures it too."""
    return {
        "target_ratio": target_ratio,
        "original_bytes": original,
        "layers": [
            {"name": r.name, "mode": r.mode, "transform": r.transform, "levels": r.levels,
             "entropy_bits": round(r.entropy_bits, 4), "sparsity": round(r.sparsity, 4)}
            for r in layers
        ],
    }


@dataclass
class RunSummary:
    """Totals of a run. ``true_ratio`` is only set once the file has been written and measured."""

    target_ratio: float
    original_bytes: int
    estimated_file_bytes: int
    file_bytes: int | None = None
    true_ratio: float | None = None
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)
