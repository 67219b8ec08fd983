import numpy as np
import pytest
import torch
from PIL import Image


def write_images(folder, n, size=(12, 10), fmt="PNG", seed=0):
    """``n`` small random RGB images in ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"img{i}.{fmt.lower()}"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, fmt)
        paths.append(path)
    return paths


@pytest.fixture
def make_images():
    return write_images


@pytest.fixture
def class_folder(tmp_path):
    """``data/cat`` (3 images) and ``data/dog`` (2 images)."""
    root = tmp_path / "data"
    write_images(root / "cat", 3, seed=1)
    write_images(root / "dog", 2, seed=2)
    return root


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
