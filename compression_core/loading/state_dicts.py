"""Turning what users save as "a checkpoint" into a plain state_dict, loading it into an architecture with an
error that names the mismatching keys, and laying decoded weights back out the way the file had them.

Training scripts wrap weights (``{"state_dict": ...}``, ``{"model": ...}``, ``{"model_state_dict": ...}``)
and `DataParallel` / `torch.compile` prefix every key (``module.``, ``_orig_mod.``); the compressor works on
``model.state_dict()`` keys, and `StateDictLayout` remembers how to undo both on export.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from compression_core.loading.errors import CheckpointError

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
PREFIXES = ("module.", "_orig_mod.")
_SHOWN = 5


@dataclass
class StateDictLayout:
    """How a checkpoint stored its tensors: the wrapper keys walked to reach them, the key prefix removed,
    each tensor's stored dtype (written back in it), and safetensors header metadata."""

    wrapper: tuple[str, ...] = ()
    prefix: str = ""
    dtypes: dict[str, torch.dtype] = field(default_factory=dict)
    metadata: dict[str, str] | None = None

    def restore(self, state_dict: Mapping[str, torch.Tensor]) -> dict:
        """``state_dict`` (model keys) in the checkpoint's own keys, dtypes and wrapper."""
        out: dict = {}
        for key, tensor in state_dict.items():
            dtype = self.dtypes.get(key, tensor.dtype)
            out[self.prefix + key] = tensor.detach().to("cpu", dtype).contiguous()
        for key in reversed(self.wrapper):
            out = {key: out}
        return out


def unwrap(obj, source: str) -> tuple[dict[str, torch.Tensor], StateDictLayout]:
    """The tensors of a loaded checkpoint object, with their model-facing keys."""
    wrapper: list[str] = []
    while isinstance(obj, Mapping) and not _all_tensors(obj):
        key = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            break
        wrapper.append(key)
        obj = obj[key]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            f"{source} holds {type(obj).__name__}, not a state_dict (a dict of tensors); "
            "save one with torch.save(model.state_dict(), path)"
        )
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{source} is a dict but not a state_dict: entries {bad[:_SHOWN]} are not tensors "
            "(top-level keys: "
            f"{list(obj)[:10]}). Keep only the model weights, e.g. torch.save(model.state_dict(), path), or "
            f"put them under one of the keys {list(WRAPPER_KEYS)}"
        )
    tensors = {str(k): v for k, v in obj.items()}
    prefix = ""
    for candidate in PREFIXES:
        while all(k.startswith(prefix + candidate) for k in tensors):
            prefix += candidate
    if prefix:
        tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
    layout = StateDictLayout(tuple(wrapper), prefix, {k: v.dtype for k, v in tensors.items()})
    return tensors, layout


def _all_tensors(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def load_into(model: nn.Module, tensors: Mapping[str, torch.Tensor], architecture: str) -> None:
    """Strictly load ``tensors`` into ``model``; on mismatch raise `CheckpointError` listing the first few
    missing, unexpected and wrongly shaped keys (the usual cause: wrong architecture or ``num_classes``)."""
    own = model.state_dict()
    shapes = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in tensors.items()
        if k in own and own[k].shape != v.shape
    ]
    usable = {k: v for k, v in tensors.items() if k not in own or own[k].shape == v.shape}
    result = model.load_state_dict(usable, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if shapes:
        missing = [k for k in missing if not any(s.startswith(k + ":") for s in shapes)]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (
            ("missing from the checkpoint", missing),
            ("unexpected in the checkpoint", unexpected),
            ("with a different shape", shapes),
        ):
            if items:
                more = f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
                parts.append(f"{len(items)} {label}: {', '.join(items[:_SHOWN])}{more}")
        raise CheckpointError(
            f"the checkpoint does not fit architecture {architecture!r}: "
            + "; ".join(parts)
            + ". Check the architecture name and arch_kwargs (e.g. num_classes) against the model "
            "that was saved"
        )


def check_keys(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> None:
    """Refuse decoded weights that do not cover exactly the model's state_dict with the same shapes."""
    missing = [k for k in expected if k not in given]
    extra = [k for k in given if k not in expected]
    shapes = [k for k in expected if k in given and tuple(given[k].shape) != tuple(expected[k].shape)]
    if missing or extra or shapes:
        raise CheckpointError(
            f"decoded weights do not match the loaded model: missing {missing[:_SHOWN]}, unexpected "
            f"{extra[:_SHOWN]}, different shape {shapes[:_SHOWN]}; "
            "pass the state_dict produced for this model"
        )
