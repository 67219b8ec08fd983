"""Element types a `.l2` file can hold, with their permanent one-byte codes (never renumber: the codes are
part of the file format)."""

from __future__ import annotations

import torch

from compression_core.coding.errors import L2FormatError

# code -> torch dtype name; coded tensors must be floating, stored tensors may be any of these.
DTYPE_CODES: dict[int, str] = {
    1: "float32",
    2: "float16",
    3: "bfloat16",
    4: "float64",
    10: "int64",
    11: "int32",
    12: "int16",
    13: "int8",
    14: "uint8",
    15: "bool",
    16: "uint16",
    17: "uint32",
    18: "uint64",
    20: "complex64",
    21: "complex128",
    30: "float8_e4m3fn",
    31: "float8_e5m2",
}
CODE_OF_DTYPE = {name: code for code, name in DTYPE_CODES.items()}
CODED_DTYPES = ("float32", "float16", "bfloat16", "float64")


def torch_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise L2FormatError(f"dtype {name!r} is not available in this PyTorch")
    return dtype


def itemsize(name: str) -> int:
    return torch_dtype(name).itemsize


def dtype_code(name: str, tensor: str, coded: bool) -> int:
    """The code of a record's dtype; ValueError (naming the tensor) when the file cannot hold it."""
    allowed = CODED_DTYPES if coded else tuple(CODE_OF_DTYPE)
    if name not in allowed:
        mode = "coded" if coded else "stored"
        raise ValueError(
            f"tensor {tensor!r}: dtype {name!r} cannot be {mode}; supported: {', '.join(allowed)}"
        )
    return CODE_OF_DTYPE[name]
