"""The exact differentiable entropy counter (paper Sec. 4.3)."""

from compression_core.entropy.counter import entropy_bits, entropy_bits_many, relaxation_width, soft_counts
from compression_core.entropy.kernels import KERNELS

__all__ = ["KERNELS", "entropy_bits", "entropy_bits_many", "relaxation_width", "soft_counts"]
