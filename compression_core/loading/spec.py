"""What calibration data to read and the limits that keep an upload from exhausting the worker: a frozen,
validated value (bad values raise `CalibrationError` naming the field)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from typing import Literal

from compression_core.loading.errors import CalibrationError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PIL_MAX_IMAGE_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold (1024 * 1024 * 1024 // 4 // 3)


@dataclass(frozen=True)
class CalibrationSpec:
    """How to turn a calibration source into model inputs.

    ``kind``: ``"images"`` (a folder or a .zip/.tar/.tar.gz of one), ``"tensors"`` (.pt, .npy, .npz,
    .safetensors of ready inputs), ``"text"`` (a UTF-8 file, one sample per non-empty line) or None to infer it
    from the content (a ``tokenizer`` makes it text).
    Images: shorter side resized to ``resize`` (or to exactly (h, w)), centre-cropped to ``crop``, scaled to
    [0, 1], then normalised per channel with ``mean``/``std`` (None: ImageNet statistics for 3 channels, no
    normalisation for 1). ``max_samples`` images are drawn in a ``seed``-determined order, so class folders
    are mixed. Tensors: the first ``max_samples`` rows; ``labels_key`` names a dict entry holding labels.
    Text: ``tokenizer`` is the model's local tokenizer folder; lines are truncated to ``max_length`` tokens and
    padded to the longest line (``padding="longest"``) or to ``max_length``; ``max_samples`` lines are drawn in
    a ``seed``-determined order (`text.py`).
    Limits: ``max_count`` files or archive members, ``max_total_bytes`` of file (or uncompressed archive)
    bytes, ``max_ratio`` of uncompressed to compressed size, ``max_image_pixels``/``max_image_bytes`` per
    image (larger images are skipped; Pillow's own pixel limit also applies).
    """

    kind: Literal["images", "tensors", "text"] | None = None
    resize: int | tuple[int, int] | None = 256
    crop: int | tuple[int, int] | None = 224
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channels: int = 3
    max_samples: int = 1024
    labels_key: str | None = None
    seed: int = 0
    max_count: int = 100_000
    max_total_bytes: int = 2 * 1024**3
    max_ratio: float = 100.0
    max_image_pixels: int = PIL_MAX_IMAGE_PIXELS
    max_image_bytes: int = 64 * 1024**2
    tokenizer: str | None = None
    max_length: int = 128
    padding: Literal["longest", "max_length"] = "longest"

    def __post_init__(self) -> None:
        for name in ("resize", "crop", "mean", "std"):  # JSON gives lists
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if isinstance(self.tokenizer, os.PathLike):
            object.__setattr__(self, "tokenizer", os.fspath(self.tokenizer))

        def need(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise CalibrationError(
                    f"calibration setting {name}={getattr(self, name)!r} is invalid: {allowed}"
                )

        need(
            self.kind in (None, "images", "tensors", "text"),
            "kind",
            "use 'images', 'tensors', 'text' or leave it unset",
        )
        for name in ("resize", "crop"):
            v = getattr(self, name)
            need(
                v is None
                or (isinstance(v, int) and v > 0)
                or (isinstance(v, tuple) and len(v) == 2 and all(isinstance(s, int) and s > 0 for s in v)),
                name,
                "a positive int, (height, width) or None",
            )
        need(self.channels in (1, 3), "channels", "1 (greyscale) or 3 (RGB)")
        for name in ("mean", "std"):
            v = getattr(self, name)
            need(
                v is None or (isinstance(v, tuple) and len(v) in (1, self.channels)),
                name,
                f"None or {self.channels} value(s), one per channel",
            )
        need(self.std is None or all(s > 0 for s in self.std), "std", "all values must be > 0")
        need((self.mean is None) == (self.std is None), "mean", "give mean and std together, or neither")
        for name in ("max_samples", "max_count", "max_total_bytes", "max_image_pixels", "max_image_bytes"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name, "an int ≥ 1")
        need(self.max_ratio >= 1, "max_ratio", "must be ≥ 1")
        need(isinstance(self.max_length, int) and self.max_length >= 1, "max_length", "an int ≥ 1 (tokens)")
        need(self.padding in ("longest", "max_length"), "padding", "'longest' or 'max_length'")
        need(
            self.tokenizer is None or (isinstance(self.tokenizer, str) and self.tokenizer != ""),
            "tokenizer",
            "the path of a local tokenizer folder, or None",
        )

    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        if self.mean is not None:
            return self.mean, self.std
        return (IMAGENET_MEAN, IMAGENET_STD) if self.channels == 3 else None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CalibrationSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CalibrationError(f"unknown calibration settings {unknown}; known: {sorted(known)}")
        return cls(**data)
