"""`torch.load` of a file whose content `formats.sniff` already recognised.

torch ≥ 2.10 chooses a reader from a *path's* suffix: a `torch.save` file uploaded as ``model.safetensors`` went
to the safetensors reader and failed with "header too large". The loaders promise to go by content, so they
hand torch an open file, which has no suffix to misread.
"""

from __future__ import annotations

from pathlib import Path

import torch


def load_weights_only(path: str | Path):
    """Tensors and plain containers from a `torch.save` file (``weights_only=True``: a pickle naming any other
    global raises before anything it names is imported), on the CPU."""
    with open(path, "rb") as f:
        return torch.load(f, weights_only=True, map_location="cpu")
