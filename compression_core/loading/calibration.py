"""Calibration data from what users have: an image folder (class sub-folders give labels), a .zip / .tar /
.tar.gz of one (extracted safely into a temporary folder), a tensor file of ready inputs, or a text file with
one sample per line and the model's tokenizer folder. The result's
``inputs`` is a `model_io.Inputs` value the compressor and the evaluation can call any model with."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from compression_core.loading import formats
from compression_core.loading.archives import ArchiveLimits, extract_archive
from compression_core.loading.errors import CalibrationError
from compression_core.loading.images import load_image_folder
from compression_core.loading.spec import CalibrationSpec
from compression_core.loading.tensor_files import TENSOR_KINDS, load_tensor_file
from compression_core.loading.text import load_text
from compression_core.model_io import Inputs, num_samples

_IMAGE_KINDS = (formats.DIRECTORY, formats.ZIP, formats.TAR)


@dataclass
class CalibrationData:
    """``inputs`` (N samples), optional ``labels`` (N,) int64, ``skipped`` undecodable or oversized images,
    ``classes`` (class-folder names, index = label) and human-readable ``notes`` about what was done."""

    inputs: Inputs
    labels: torch.Tensor | None
    skipped: int
    count: int
    notes: list[str] = field(default_factory=list)
    classes: list[str] | None = None
    source_kind: str = ""


def load_calibration(path: str | Path, spec: CalibrationSpec | None = None) -> CalibrationData:
    """Read calibration data from ``path`` as ``spec`` says (the content decides the reader; a declared
    ``spec.kind`` that contradicts it is an error)."""
    spec = spec or CalibrationSpec()
    path = Path(path)
    if not path.exists():
        raise CalibrationError(f"calibration source {str(path)!r} does not exist")
    kind = formats.sniff(path)
    if spec.kind == "text" or (spec.kind is None and spec.tokenizer is not None):
        if kind != formats.UNKNOWN:
            raise CalibrationError(
                f"{path.name} is {kind} content, not a plain text file; a tokenizer (or kind='text') "
                "asks for one sample per line of UTF-8 text"
            )
        inputs, notes = load_text(path, spec)
        return CalibrationData(inputs, None, 0, num_samples(inputs), notes, None, "text")
    if kind in _IMAGE_KINDS:
        _expect(spec, "images", path, kind)
        return _from_images(path, kind, spec)
    if kind in TENSOR_KINDS:
        _expect(spec, "tensors", path, kind)
        inputs, labels, notes = load_tensor_file(path, kind, spec)
        return CalibrationData(inputs, labels, 0, num_samples(inputs), notes, None, kind)
    raise CalibrationError(
        f"{path.name} is not calibration data this service reads (looks like: {kind}). "
        "Upload an image folder "
        "or a .zip/.tar/.tar.gz of images, a tensor file: .pt (torch.save of a tensor, tuple or dict of "
        "tensors), .npy, .npz or .safetensors, or a text file with one sample per line together with the "
        "model's tokenizer folder (tokenizer setting, --tokenizer DIR)"
    )


def _expect(spec: CalibrationSpec, wanted: str, path: Path, kind: str) -> None:
    if spec.kind is not None and spec.kind != wanted:
        raise CalibrationError(
            f"kind={spec.kind!r} was declared but {path.name} is {kind} content, which is read "
            f"as {wanted}; set kind={wanted!r} or leave kind unset"
        )


def _from_images(path: Path, kind: str, spec: CalibrationSpec) -> CalibrationData:
    if kind == formats.DIRECTORY:
        found = load_image_folder(path, spec)
    else:
        limits = ArchiveLimits(
            max_members=spec.max_count, max_total_bytes=spec.max_total_bytes, max_ratio=spec.max_ratio
        )
        with tempfile.TemporaryDirectory(prefix="l2-calib-") as tmp:
            extract_archive(path, tmp, limits)
            found = load_image_folder(tmp, spec)
    return CalibrationData(
        found.images,
        found.labels,
        found.skipped,
        int(found.images.shape[0]),
        found.notes,
        found.classes,
        kind,
    )


def split_holdout(inputs: Inputs, fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train_indices, holdout_indices)``: sorted int64 index tensors partitioning the N samples, with
    ``round(N * fraction)`` held out (at least 1 when fraction > 0, and never all of them). The same
    ``(N, fraction, seed)`` always gives the same split, so a run can be reproduced and the holdout reused;
    select rows with `model_io.select(inputs, indices)`."""
    if not 0.0 <= fraction < 1.0:
        raise CalibrationError(f"holdout fraction {fraction} is invalid: must be in [0, 1)")
    n = num_samples(inputs)
    held = 0 if fraction == 0 or n < 2 else min(n - 1, max(1, round(n * fraction)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[held:].sort().values, order[:held].sort().values
