"""Recognising a file by its content, not its name: users rename files freely (`model.bin`, `weights.pt`
that is really safetensors), and trusting a suffix would route a pickle to the wrong reader."""

from __future__ import annotations

import json
import tarfile
import zipfile
from pathlib import Path

# What `sniff` can answer.
DIRECTORY, SAFETENSORS, TORCH, PICKLE, EXPORT, TORCHSCRIPT = (
    "directory",
    "safetensors",
    "torch",
    "pickle",
    "export",
    "torchscript",
)
NPY, NPZ, ZIP, TAR, UNKNOWN = "npy", "npz", "zip", "tar", "unknown"

_SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit


def sniff(path: str | Path) -> str:
    """The content kind of ``path``: one of the module constants above.

    `torch.save` archives (``*/data.pkl``), TorchScript (``*/constants.pkl`` and ``*/code/``) and
    `torch.export` programs (``*/archive_format``) are all zip files; they are told apart by member names.
    ``PICKLE`` is a bare pickle stream: the legacy `torch.save` format or `pickle.dump` output.
    """
    path = Path(path)
    if path.is_dir():
        return DIRECTORY
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"\x93NUMPY"):
        return NPY
    if zipfile.is_zipfile(path):
        return _zip_kind(path)
    if _is_safetensors(path, head, size):
        return SAFETENSORS
    if head[:1] == b"\x80":  # pickle PROTO opcode
        return PICKLE
    try:
        if tarfile.is_tarfile(path):
            return TAR
    except (OSError, EOFError, tarfile.TarError):
        pass
    return UNKNOWN


def _zip_kind(path: Path) -> str:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    if any(n == "archive_format" or n.endswith("/archive_format") for n in names):
        return EXPORT
    if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
        return TORCHSCRIPT
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return TORCH
    if names and all(n.endswith(".npy") for n in names):
        return NPZ
    return ZIP


def _is_safetensors(path: Path, head: bytes, size: int) -> bool:
    """An 8-byte little-endian header length followed by a JSON object of that length."""
    if len(head) < 9 or head[8:9] != b"{":
        return False
    n = int.from_bytes(head[:8], "little")
    if not 2 <= n <= min(size - 8, _SAFETENSORS_MAX_HEADER):
        return False
    with open(path, "rb") as f:
        f.seek(8)
        try:
            return isinstance(json.loads(f.read(n)), dict)
        except (ValueError, UnicodeDecodeError):
            return False
