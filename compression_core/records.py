"""What the optimizer hands to the `.l2` writer: one record per state_dict entry, in state_dict order.

A tensor is either *coded* (integer symbols + transform kind + float32 parameters; decoded through
`compression_core.transforms.levels.level_values`) or *stored* (its exact bytes). Both sizes of every entry
count in the true compression ratio.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class CodedTensor:
    """A tensor represented as integer symbols decoded by a transform.

    ``symbols`` is int32 in row-major order of ``shape``. ``params`` maps parameter names (see
    ``PARAM_NAMES``) to float32 arrays of shape ``()`` or ``(C,)`` with C = shape[0] (per output channel).
    ``dtype`` is the torch dtype name of the original tensor (e.g. ``"float32"``, ``"float16"``,
    ``"bfloat16"``); decoded float32 values are cast to it. With ``trellis`` the symbols stand for levels
    through the dependent-quantization state machine (`transforms.trellis`), not one to one.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    kind: str
    params: dict[str, np.ndarray]
    symbols: np.ndarray
    trellis: bool = False


@dataclass
class StoredTensor:
    """A tensor kept exactly: raw little-endian bytes of ``dtype`` (torch dtype name) in row-major order."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    data: bytes


TensorRecord = CodedTensor | StoredTensor


@dataclass
class ArtifactContents:
    """Everything a `.l2` file holds: the records in state_dict order and free-form JSON metadata."""

    records: list[TensorRecord]
    metadata: dict = field(default_factory=dict)
