"""Ready-made model inputs stored as tensor files (.pt, .npy, .npz, .safetensors), read without unpickling
arbitrary objects. A dict with several entries becomes keyword inputs (``input_ids``, ``attention_mask``);
a single entry, a tensor or an array becomes the one positional input; a list/tuple, positional inputs."""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from compression_core.loading import formats
from compression_core.loading.errors import CalibrationError
from compression_core.loading.spec import CalibrationSpec
from compression_core.loading.torch_files import load_weights_only
from compression_core.model_io import Inputs, InputsError, num_samples, select

TENSOR_KINDS = (formats.TORCH, formats.PICKLE, formats.NPY, formats.NPZ, formats.SAFETENSORS)


def load_tensor_file(
    path: Path, kind: str, spec: CalibrationSpec
) -> tuple[Inputs, torch.Tensor | None, list[str]]:
    """``(inputs, labels, notes)`` from a tensor file of content kind ``kind`` (see `formats.sniff`)."""
    if path.stat().st_size > spec.max_total_bytes:
        raise CalibrationError(
            f"{path.name} is larger than max_total_bytes={spec.max_total_bytes}; upload fewer "
            "samples (calibration needs a few hundred)"
        )
    raw = _read(path, kind)
    notes: list[str] = []
    labels = None
    if spec.labels_key is not None:
        if not isinstance(raw, Mapping) or spec.labels_key not in raw:
            keys = list(raw) if isinstance(raw, Mapping) else type(raw).__name__
            raise CalibrationError(
                f"labels_key={spec.labels_key!r} was declared but {path.name} has no such entry "
                f"(it holds {keys}); store a dict with a {spec.labels_key!r} entry or unset labels_key"
            )
        labels = _labels(_as_tensor(raw[spec.labels_key], spec.labels_key))
        raw = {k: v for k, v in raw.items() if k != spec.labels_key}
    inputs = _structure(raw, path.name, notes)
    try:
        n = num_samples(inputs)
    except InputsError as e:
        raise CalibrationError(f"{path.name}: {e}") from e
    if labels is not None and labels.shape[0] != n:
        raise CalibrationError(
            f"{path.name}: {labels.shape[0]} labels for {n} samples; give one label per sample"
        )
    if n > spec.max_samples:
        inputs = select(inputs, slice(0, spec.max_samples))
        labels = labels[: spec.max_samples] if labels is not None else None
        notes.append(f"first {spec.max_samples} of {n} samples used (max_samples)")
    inputs, labels = _materialise_within(inputs, labels, spec.max_total_bytes, path.name)
    return inputs, labels, notes


def _materialise_within(inputs: Inputs, labels: torch.Tensor | None, limit: int, source: str):
    """Contiguous copies of the tensors, once their in-memory size is known to be within ``limit``. A
    `torch.save` file can hold an expanded view (stride 0): 1.6 kB on disk, gigabytes once anything copies it,
    so the file size checked above says nothing about memory."""
    if isinstance(inputs, Mapping):
        tensors = list(inputs.values())
    else:
        tensors = list(inputs) if isinstance(inputs, tuple) else [inputs]
    tensors += [labels] if labels is not None else []
    total = sum(t.numel() * t.element_size() for t in tensors)
    if total > limit:
        raise CalibrationError(
            f"{source} holds {total:,} bytes of tensors in memory (the file is smaller: it stores expanded or "
            f"shared views), more than max_total_bytes={limit:,}; store fewer or smaller samples, or set "
            "max_samples lower"
        )
    if isinstance(inputs, Mapping):
        inputs = {k: v.contiguous() for k, v in inputs.items()}
    elif isinstance(inputs, tuple):
        inputs = tuple(v.contiguous() for v in inputs)
    else:
        inputs = inputs.contiguous()
    return inputs, labels.contiguous() if labels is not None else None


def _read(path: Path, kind: str):
    try:
        if kind in (formats.TORCH, formats.PICKLE):
            return load_weights_only(path)
        if kind == formats.NPY:
            return np.load(path, allow_pickle=False)
        if kind == formats.NPZ:
            with np.load(path, allow_pickle=False) as archive:
                return {k: archive[k] for k in archive.files}
        if kind == formats.SAFETENSORS:
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
    except pickle.UnpicklingError:
        raise CalibrationError(
            f"{path.name} pickles Python objects other than tensors; loading it would run code, "
            "so it is refused. Save a tensor, a tuple of tensors or a dict of tensors with "
            "torch.save, or use .npy/.npz/.safetensors"
        ) from None
    except (ValueError, OSError, RuntimeError, EOFError) as e:
        raise CalibrationError(f"{path.name} cannot be read as a {kind} tensor file: {e}") from e
    raise CalibrationError(f"{path.name} is not a tensor file (.pt, .npy, .npz, .safetensors)")


def _as_tensor(value, name: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        try:
            value = torch.from_numpy(np.ascontiguousarray(value))
        except TypeError as e:
            raise CalibrationError(f"entry {name!r} has dtype {value.dtype}, which is not numeric") from e
    if not isinstance(value, torch.Tensor):
        raise CalibrationError(f"entry {name!r} is a {type(value).__name__}, not a tensor or array")
    return value


def _structure(raw, source: str, notes: list[str]) -> Inputs:
    if isinstance(raw, Mapping):
        if not raw:
            raise CalibrationError(f"{source} holds an empty dict; store at least one input tensor")
        tensors = {str(k): _float32(_as_tensor(v, str(k)), str(k), notes) for k, v in raw.items()}
        if len(tensors) == 1:
            notes.append(f"single entry {next(iter(tensors))!r} passed as the positional input")
            return next(iter(tensors.values()))
        notes.append(f"keyword inputs: {list(tensors)}")
        return tensors
    if isinstance(raw, Sequence) and not isinstance(raw, (str, bytes)):
        if not raw:
            raise CalibrationError(f"{source} holds an empty list; store at least one input tensor")
        return tuple(_float32(_as_tensor(v, f"[{i}]"), f"[{i}]", notes) for i, v in enumerate(raw))
    return _float32(_as_tensor(raw, "input"), "input", notes)


def _float32(t: torch.Tensor, name: str, notes: list[str]) -> torch.Tensor:
    """Models run in float32; float64 inputs (NumPy's default) would fail inside the first layer."""
    if t.dtype == torch.float64:
        notes.append(f"{name}: float64 converted to float32")
        return t.float()
    return t


def _labels(t: torch.Tensor) -> torch.Tensor:
    if t.dim() != 1 or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise CalibrationError(
            f"labels must be a 1-D integer tensor of class indices, got {t.dtype} {tuple(t.shape)}"
        )
    return t.long()
