"""Calling models on calibration inputs of any shape: one tensor, several positional tensors, or keyword
tensors (e.g. ``input_ids`` and ``attention_mask``), and flattening whatever the model returns (tensor, tuple,
dict, dataclass/ModelOutput) into its floating-point tensors, so distillation applies to every output."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence

import torch

Inputs = torch.Tensor | tuple[torch.Tensor, ...] | dict[str, torch.Tensor]


class InputsError(ValueError):
    """Calibration inputs are malformed (no samples, mismatched leading dimensions, wrong types)."""


class OutputsError(ValueError):
    """Named outputs were asked for that the model does not return."""


def _tensors(inputs: Inputs) -> list[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        return [inputs]
    if isinstance(inputs, Mapping):
        return list(inputs.values())
    if isinstance(inputs, Sequence):
        return list(inputs)
    raise InputsError(
        f"calibration inputs must be a tensor, a tuple of tensors or a dict of tensors, got {type(inputs)}"
    )


def num_samples(inputs: Inputs) -> int:
    """Number of samples (shared leading dimension); raises `InputsError` when tensors disagree."""
    tensors = _tensors(inputs)
    if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
        raise InputsError("calibration inputs hold no tensors")
    sizes = {int(t.shape[0]) if t.dim() > 0 else -1 for t in tensors}
    if len(sizes) != 1 or -1 in sizes:
        raise InputsError(
            f"all calibration input tensors need the same leading (sample) dimension, got {sorted(sizes)}"
        )
    return sizes.pop()


def select(inputs: Inputs, index: torch.Tensor | slice) -> Inputs:
    """Rows ``index`` of every input tensor."""
    if isinstance(inputs, torch.Tensor):
        return inputs[index]
    if isinstance(inputs, Mapping):
        return {k: v[index] for k, v in inputs.items()}
    return tuple(t[index] for t in inputs)


def to_device(inputs: Inputs, device: torch.device | str) -> Inputs:
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    if isinstance(inputs, Mapping):
        return {k: v.to(device) for k, v in inputs.items()}
    return tuple(t.to(device) for t in inputs)


def batches(inputs: Inputs, batch_size: int) -> Iterator[Inputs]:
    """Consecutive batches in order (for evaluation and BN recalibration)."""
    n = num_samples(inputs)
    for start in range(0, n, batch_size):
        yield select(inputs, slice(start, min(n, start + batch_size)))


def call_model(model: torch.nn.Module, batch: Inputs):
    """Run ``model`` on one batch: a tensor as the single argument, a tuple as positional arguments, a dict
    as keyword arguments."""
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, Mapping):
        return model(**batch)
    return model(*batch)


def float_outputs(output, keys: tuple[str, ...] = ()) -> list[torch.Tensor]:
    """Every floating-point tensor in a model output, in a deterministic order; with ``keys`` only those
    top-level entries of a dict / ModelOutput / dataclass output, in that order."""
    if keys:
        output = [_entry(output, key) for key in keys]
    found: list[torch.Tensor] = []

    def walk(obj) -> None:
        if isinstance(obj, torch.Tensor):
            if obj.is_floating_point():
                found.append(obj)
        elif isinstance(obj, Mapping):
            for key in obj:
                walk(obj[key])
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            for f in dataclasses.fields(obj):
                walk(getattr(obj, f.name))
        elif isinstance(obj, (list, tuple)):
            for item in obj:
                walk(item)

    walk(output)
    return found


def _entry(output, key: str):
    if isinstance(output, Mapping):
        available = list(output)
        if key in output:
            return output[key]
    elif dataclasses.is_dataclass(output) and not isinstance(output, type):
        available = [f.name for f in dataclasses.fields(output) if getattr(output, f.name) is not None]
        if key in available:
            return getattr(output, key)
    else:
        raise OutputsError(
            f"output_keys={key!r} needs a model returning named outputs (a dict or ModelOutput); this one "
            f"returns {type(output).__name__}: leave output_keys empty"
        )
    raise OutputsError(f"the model returns no output named {key!r}; it returns {available}")
