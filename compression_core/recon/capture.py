"""Capture of named intermediate module outputs (feature distillation), via forward hooks."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from compression_core.model_io import float_outputs


class FeatureCapture:
    """Records the float outputs of the named modules during one forward pass."""

    def __init__(self, model: torch.nn.Module, module_names: tuple[str, ...]) -> None:
        modules = dict(model.named_modules())
        missing = [n for n in module_names if n not in modules]
        if missing:
            raise ValueError(f"feature_modules not found in the model: {missing}; e.g. {list(modules)[1:6]}")
        self.modules = [modules[n] for n in module_names]
        self.features: list[torch.Tensor] = []

    @contextmanager
    def active(self):
        self.features = []
        handles = [m.register_forward_hook(lambda _m, _i, out: self.features.extend(float_outputs(out)))
                   for m in self.modules]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()
