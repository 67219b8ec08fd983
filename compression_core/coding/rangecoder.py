"""The constriction adapter: one queue range coder stream per tensor over symbols ``0..L-1``.

Coder id 1 (recorded in the file header): ``constriction.stream.queue.RangeEncoder`` with 32-bit words
stored little-endian, one ``Categorical(counts / sum, perfect=False)`` model for the whole tensor. Both
directions build that model through `categorical`, from the integer counts stored in the file, so the decoder
never derives probabilities any other way than the encoder did.
"""

from __future__ import annotations

import constriction
import numpy as np

from compression_core.coding.errors import L2FormatError

CODER_ID = 1
WORD_BYTES = 4


def categorical(counts: np.ndarray) -> constriction.stream.model.Categorical:
    """The entropy model of a tensor, from its integer counts (length ≥ 2; constriction refuses one entry).
    ``perfect=False`` is constriction's fast, deterministic quantization; leaky, so every symbol in range is
    encodable even with a zero count."""
    probabilities = np.asarray(counts, dtype=np.float64)
    return constriction.stream.model.Categorical(probabilities / probabilities.sum(), perfect=False)


def encode(shifted: np.ndarray, counts: np.ndarray) -> bytes:
    """Range-code int32 symbols in ``0..len(counts)-1``; returns the compressed words as bytes."""
    encoder = constriction.stream.queue.RangeEncoder()
    encoder.encode(np.ascontiguousarray(shifted, dtype=np.int32), categorical(counts))
    return encoder.get_compressed().astype("<u4", copy=False).tobytes()


def decode(payload: bytes | bytearray, counts: np.ndarray, numel: int, name: str) -> np.ndarray:
    """Decode ``numel`` symbols (int32 in ``0..len(counts)-1``) from one tensor's payload."""
    if len(payload) % WORD_BYTES:
        raise L2FormatError(f"tensor {name!r}: payload of {len(payload)} bytes is not whole 32-bit words")
    words = np.frombuffer(payload, dtype="<u4").astype(np.uint32, copy=False)
    try:
        return constriction.stream.queue.RangeDecoder(words).decode(categorical(counts), numel)
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except (
        BaseException
    ) as exc:  # constriction raises AssertionError, ValueError, or a Rust panic (BaseException)
        raise L2FormatError(f"tensor {name!r}: range-coded payload does not decode ({exc})") from exc
