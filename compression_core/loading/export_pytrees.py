"""Pytree types a `torch.export` program names, made known before it is loaded.

An exported program records its inputs' and outputs' structure as pytree specs naming their Python types. Hugging
Face models return `ModelOutput` dataclasses, which `transformers` registers as pytree nodes only when the module
defining them is imported; until then ``torch.export.load`` fails with a bare "error when deserializing". The
program's own JSON says which modules those are, so they are imported first. Only modules of the installed
`transformers` package are imported, never a module an uploaded file could choose freely.
"""

from __future__ import annotations

import importlib
import re
import zipfile
from pathlib import Path

from compression_core.loading.errors import CheckpointError

# Modules that define ModelOutput classes: the shared one and each model's modeling file.
_OUTPUT_MODULE = re.compile(r"^transformers\.(modeling_outputs|models\.\w+\.modeling_\w+)$")
# A type name inside the pytree spec, itself a JSON string inside the JSON (so its quotes may be escaped).
_NAMED = re.compile(rb"\b(transformers\.[A-Za-z0-9_.]+)\.([A-Za-z0-9_]*Output[A-Za-z0-9_]*)\b")
_MAX_JSON_BYTES = 256 * 1024 * 1024
_MAX_MODULES = 32


def output_modules(path: Path) -> list[str]:
    """The `transformers` modules whose output classes the program at ``path`` names (sorted, deduplicated)."""
    found: set[str] = set()
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if "/models/" not in info.filename or not info.filename.endswith(".json"):
                continue
            if info.file_size > _MAX_JSON_BYTES:
                continue
            for module, _ in _NAMED.findall(archive.read(info)):
                name = module.decode()
                if _OUTPUT_MODULE.match(name):
                    found.add(name)
    return sorted(found)[:_MAX_MODULES]


def register_output_types(path: Path) -> list[str]:
    """Import the modules `output_modules` names, so their ModelOutput classes are pytree nodes; returns them.
    Raises `CheckpointError` saying what to install when `transformers` is missing."""
    modules = output_modules(path)
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise CheckpointError(
                f"{path.name} is a torch.export program of a Hugging Face transformers model (its outputs are "
                f"{name} types), and loading it needs that module: install transformers "
                f"(pip install transformers) where the model is loaded ({e})"
            ) from e
    return modules
