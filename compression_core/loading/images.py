"""Image folders as calibration inputs: finding the images (class sub-folders become labels), decoding them
defensively (undecodable or oversized files are skipped and counted, never fatal), and the fixed
resize → centre-crop → normalise pipeline that inference code for vision models uses."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from compression_core.loading.errors import CalibrationError
from compression_core.loading.spec import CalibrationSpec

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm"}
)
_JUNK_DIRS = frozenset({"__MACOSX", ".git", "__pycache__"})


@dataclass
class ImageSet:
    """Decoded images: ``images`` (N, C, H, W) float32, ``labels`` (N,) int64 or None, what was skipped."""

    images: torch.Tensor
    labels: torch.Tensor | None
    classes: list[str] | None
    skipped: int
    skip_reasons: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)


def _list_images(root: Path, spec: CalibrationSpec) -> tuple[list[Path], int]:
    """Image files under ``root`` in sorted order (symlinks and hidden files are not followed), and the count
    of other files ignored."""
    found, ignored, total = [], 0, 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in _JUNK_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if name.startswith(".") or path.is_symlink() or not path.is_file():
                ignored += 1
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                ignored += 1
                continue
            found.append(path)
            if len(found) > spec.max_count:
                raise CalibrationError(
                    f"the image folder holds more than {spec.max_count} images; upload fewer "
                    "(calibration needs a few hundred) or raise max_count"
                )
            total += path.stat().st_size
            if total > spec.max_total_bytes:
                raise CalibrationError(
                    f"the images total more than {spec.max_total_bytes} bytes; upload fewer or "
                    "smaller images (or raise max_total_bytes)"
                )
    return found, ignored


def _content_root(root: Path) -> Path:
    """Skip a single wrapping folder (``images.zip`` usually contains ``images/``)."""
    while True:
        entries = [e for e in root.iterdir() if not e.name.startswith(".") and e.name not in _JUNK_DIRS]
        if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
            root = entries[0]
        else:
            return root


def load_image_folder(root: str | Path, spec: CalibrationSpec) -> ImageSet:
    """Decode up to ``spec.max_samples`` images from ``root``. Labels exist when every image sits in a direct
    sub-folder of the (unwrapped) root: sub-folder names, sorted, are classes 0, 1, … (torchvision's
    ImageFolder convention)."""
    root = _content_root(Path(root))
    files, ignored = _list_images(root, spec)
    if not files:
        raise CalibrationError(
            f"no images found (looked for {sorted(IMAGE_SUFFIXES)}); upload a folder or "
            "archive of image files"
        )
    relative = [f.relative_to(root) for f in files]
    classes = sorted({r.parts[0] for r in relative}) if all(len(r.parts) == 2 for r in relative) else None
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(spec.seed)).tolist()
    images, labels, reasons = [], [], Counter()
    for i in order:
        if len(images) >= spec.max_samples:
            break
        tensor = _decode(files[i], spec, reasons)
        if tensor is not None:
            images.append(tensor)
            if classes is not None:
                labels.append(classes.index(relative[i].parts[0]))
    if not images:
        raise CalibrationError(
            f"none of the {len(files)} images could be decoded ({dict(reasons)}); upload "
            "JPEG/PNG images within the size limits"
        )
    _same_size(images)
    notes = [f"{len(images)} of {len(files)} images used"]
    if ignored:
        notes.append(f"{ignored} non-image or hidden files ignored")
    if reasons:
        notes.append("skipped: " + ", ".join(f"{n} {why}" for why, n in sorted(reasons.items())))
    if classes is not None:
        notes.append(
            f"labels from {len(classes)} class folders: {classes[:10]}{' …' if len(classes) > 10 else ''}"
        )
    return ImageSet(
        torch.stack(images),
        torch.tensor(labels, dtype=torch.int64) if classes is not None else None,
        classes,
        sum(reasons.values()),
        reasons,
        notes,
    )


def _decode(path: Path, spec: CalibrationSpec, reasons: Counter) -> torch.Tensor | None:
    if path.stat().st_size > spec.max_image_bytes:
        reasons["larger than max_image_bytes"] += 1
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > spec.max_image_pixels:
                    reasons["more pixels than max_image_pixels"] += 1
                    return None
                img = img.convert("RGB" if spec.channels == 3 else "L")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        reasons["more pixels than Pillow allows"] += 1
        return None
    except (OSError, ValueError, SyntaxError, Image.UnidentifiedImageError):
        reasons["undecodable"] += 1
        return None
    return _transform(img, spec)


def _transform(img: Image.Image, spec: CalibrationSpec) -> torch.Tensor:
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as tf

    if spec.resize is not None:
        size = [spec.resize] if isinstance(spec.resize, int) else list(spec.resize)
        img = tf.resize(img, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
    if spec.crop is not None:
        img = tf.center_crop(img, [spec.crop, spec.crop] if isinstance(spec.crop, int) else list(spec.crop))
    array = np.asarray(img, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)
    norm = spec.normalisation()
    if norm is not None:
        mean, std = (torch.tensor(v, dtype=torch.float32).view(-1, 1, 1) for v in norm)
        tensor = (tensor - mean) / std
    return tensor


def _same_size(images: list[torch.Tensor]) -> None:
    sizes = Counter(tuple(t.shape[1:]) for t in images)
    if len(sizes) > 1:
        raise CalibrationError(
            f"images have different sizes after resizing ({dict(sizes.most_common(3))}); set "
            "crop (e.g. crop=224) so every image ends up the same size"
        )
