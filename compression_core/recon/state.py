"""The trainable state of a compression run: per coded tensor a latent weight and a transform.

`QuantizedState` maps state_dict names to (latent weight, transform) and produces, for one forward pass, the
quantized tensors ŵ = T⁻¹(⌊T(w)⌉) (training-time, with STE) and the differentiable rate S (bits).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from compression_core.config import CompressionConfig
from compression_core.entropy import entropy_bits, entropy_bits_many
from compression_core.transforms import TensorPlan, Transform, make_transform


class QuantizedState(nn.Module):
    """Latent weights (``latents``) and transforms (``transforms``) of every coded tensor, in state_dict order.
    ModuleDict keys cannot contain dots, so entries are indexed by position and `names` maps back. ``bits``
    gives each coded tensor its initial bits per weight (`allocation.py`); ``steps``, where given, its exact
    initial grid step (scalar or per output channel)."""

    def __init__(
        self,
        originals: dict[str, torch.Tensor],
        plans: list[TensorPlan],
        config: CompressionConfig,
        bits: dict[str, float],
        steps: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        steps = steps or {}
        self.config = config
        self._subsets: dict[int, torch.Tensor] = {}
        self.names: list[str] = []
        self.latents = nn.ParameterList()
        self.transforms = nn.ModuleList()
        for plan in plans:
            if plan.kind is None:
                continue
            w = originals[plan.name].detach().float().clone()
            self.names.append(plan.name)
            self.latents.append(nn.Parameter(w, requires_grad=plan.learnable))
            self.transforms.append(
                make_transform(
                    plan.kind,
                    w,
                    per_channel=self.config.per_channel,
                    bits=bits[plan.name],
                    step=steps.get(plan.name),
                )
            )

    def items(self) -> list[tuple[str, torch.Tensor, Transform]]:
        return list(zip(self.names, self.latents, self.transforms, strict=True))

    def quantized_and_rate(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """ŵ = T⁻¹(⌊T(w)⌉) for every coded tensor and the differentiable total entropy S in bits, sharing
        one evaluation of T(w) per tensor."""
        quantized, codes = self.quantized_and_codes()
        return quantized, self.rate(codes)

    def quantized_and_codes(self) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """ŵ = T⁻¹(⌊T(w)⌉) (straight-through) by name, and in state order the continuous codes T(w) the
        counter judges: all of a tensor's, or with ``config.counter_samples`` > 0 that many of a larger one's
        (a fixed random subset)."""
        quantized: dict[str, torch.Tensor] = {}
        codes = []
        for i, (name, w, t) in enumerate(self.items()):
            judged, quantized[name] = t.codes_and_quantized(w, self._counter_subset(i, w.numel()))
            codes.append(judged)
        return quantized, codes

    def rate(self, codes: list[torch.Tensor]) -> torch.Tensor:
        """Differentiable total bits of every coded tensor from its judged codes (`quantized_and_codes`), in
        one soft histogram per kernel width: a tensor's bits are its entropy per judged code times its size."""
        if not codes:
            return torch.zeros(())
        flat = [c.reshape(-1) for c in codes]
        weights = [w.numel() / max(1, c.numel()) for w, c in zip(self.latents, flat, strict=True)]
        return entropy_bits_many(flat, weights, self.config.kernel, self.config.resolution)

    def rate_of(self, index: int, codes: torch.Tensor) -> torch.Tensor:
        """Differentiable bits of coded tensor ``index`` given its continuous codes T(w)."""
        subset = self._counter_subset(index, codes.numel())
        if subset is None:
            return entropy_bits(codes, self.config.kernel, self.config.resolution)
        judged = entropy_bits(codes.reshape(-1)[subset], self.config.kernel, self.config.resolution)
        return judged * (codes.numel() / subset.numel())

    def _counter_subset(self, index: int, numel: int) -> torch.Tensor | None:
        """The codes of tensor ``index`` the counter judges (None: all of them); fixed per run and seed, so
        the rate's noise does not change between iterations."""
        limit = self.config.counter_samples
        if limit <= 0 or numel <= limit:
            return None
        if index not in self._subsets:
            generator = torch.Generator().manual_seed(self.config.seed * 7919 + index)
            chosen = torch.randperm(numel, generator=generator)[:limit].sort().values
            self._subsets[index] = chosen.to(self.latents[index].device)
        return self._subsets[index]

    @contextmanager
    def learning(self, phase: str) -> Iterator[None]:
        """Within the block only ``phase``'s parameters ("transform" or "weights") require gradients, so the
        backward pass skips the other group's: in the transform phase that is a gradient for every latent
        weight, several passes over all of them an iteration (measured in `bench/results/profile.md`)."""
        idle = self.latents if phase == "transform" else self.transforms
        flags = [p.requires_grad for p in idle.parameters()]
        idle.requires_grad_(False)
        try:
            yield
        finally:
            for p, flag in zip(idle.parameters(), flags, strict=True):
                p.requires_grad_(flag)

    def transform_parameters(self) -> list[nn.Parameter]:
        return list(self.transforms.parameters())

    def weight_param_groups(self, relative_lr: float) -> list[dict]:
        """One Adam group per latent tensor with a learning rate relative to its RMS, so that tensors of any
        scale move a similar fraction of a quantization step per iteration."""
        groups = []
        for w in self.latents:
            if not w.requires_grad:
                continue
            rms = float(w.detach().pow(2).mean().sqrt()) if w.numel() else 0.0
            groups.append({"params": [w], "lr": relative_lr * max(rms, 1e-8)})
        return groups

    def rescale(self, log_factor: float) -> None:
        for t in self.transforms:
            t.rescale(log_factor)
