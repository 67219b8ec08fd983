"""Learnable weight transforms (paper Sec. 4.2) and the canonical inverse used by the decoder."""

from compression_core.transforms.base import Transform, round_ste
from compression_core.transforms.kinds import TRANSFORM_CLASSES, make_transform
from compression_core.transforms.levels import TRANSFORM_KINDS, level_values
from compression_core.transforms.select import TensorPlan, plan_tensor

__all__ = [
    "TRANSFORM_CLASSES", "TRANSFORM_KINDS", "TensorPlan", "Transform", "level_values", "make_transform",
    "plan_tensor", "round_ste",
]
