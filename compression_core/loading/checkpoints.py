"""Loading model checkpoints without running code from the file, and writing decoded weights back in the
file's own form.

Three forms are accepted, recognised by content (`formats.sniff`), not by suffix:

* ``state_dict``: tensors only (`torch.save(model.state_dict())` read with ``weights_only=True``, or
  safetensors), plus an architecture reference whose code this process trusts (`architectures`);
* ``export``: a `torch.export` program (``.pt2``), whose graph is data, not Python;
* ``torchscript``: a `torch.jit` archive, run by the TorchScript interpreter, not by pickle.

A pickled whole ``nn.Module`` (or any pickled object) would need unrestricted unpickling, i.e. running the
uploader's code, so it is refused with instructions for producing one of the forms above.

The compressor works on ``loaded.model.state_dict()``; for all three forms those keys are the keys
`export_decoded` expects back.
"""

from __future__ import annotations

import copy
import hashlib
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from compression_core.loading import formats
from compression_core.loading.architectures import build_architecture
from compression_core.loading.errors import CheckpointError
from compression_core.loading.export_pytrees import register_output_types
from compression_core.loading.fixed_batch import AnyBatch
from compression_core.loading.state_dicts import StateDictLayout, check_keys, load_into, unwrap
from compression_core.loading.torch_files import load_weights_only

Form = Literal["state_dict", "export", "torchscript"]

SUPPORTED_FORMS = (
    "Supported checkpoint forms: "
    "(1) a state_dict, saved with torch.save(model.state_dict(), 'model.pt') or "
    "safetensors.torch.save_file(model.state_dict(), 'model.safetensors'), together with an architecture "
    "name (a torchvision model such as 'resnet18', 'timm:NAME', or one registered with "
    "register_architecture); "
    "(2) a torch.export program: torch.export.save(torch.export.export(model, example_inputs), 'model.pt2'); "
    "(3) a TorchScript archive: torch.jit.save(torch.jit.script(model), 'model.ts') (or torch.jit.trace)."
)


@dataclass
class LoadedModel:
    """A checkpoint turned into a runnable float model in eval mode, plus what `export_decoded` needs.

    ``container`` is the file type written back: ``"torch"`` or ``"safetensors"`` for state_dicts,
    ``"pt2"`` or ``"torchscript"`` otherwise. ``fixed_batch_size``: an exported program traced with a
    constant batch dimension accepts only that many samples per call (None: any). ``notes`` are facts worth
    showing the user.
    """

    model: nn.Module
    form: Form
    source_sha256: str
    source_path: Path
    container: str
    architecture: str | None = None
    arch_kwargs: dict = field(default_factory=dict)
    layout: StateDictLayout | None = None
    program: torch.export.ExportedProgram | None = field(default=None, repr=False)
    fixed_batch_size: int | None = None
    notes: list[str] = field(default_factory=list)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_model(
    path: str | Path, architecture: str | None = None, arch_kwargs: dict | None = None
) -> LoadedModel:
    """Load a checkpoint in any supported form (see the module docstring); ``architecture`` and
    ``arch_kwargs`` are required for state_dicts and ignored (with a note) otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    kind = formats.sniff(path)
    digest = sha256_file(path)
    if kind in (formats.TORCH, formats.PICKLE, formats.SAFETENSORS):
        return _load_state_dict(path, kind, digest, architecture, arch_kwargs)
    if kind == formats.EXPORT:
        loaded = _load_export(path, digest)
    elif kind == formats.TORCHSCRIPT:
        loaded = _load_torchscript(path, digest)
    else:
        raise CheckpointError(
            f"{path.name} is not a model checkpoint this service can read (looks like: {kind}). "
            + SUPPORTED_FORMS
        )
    if architecture is not None:
        loaded.notes.append(
            f"architecture {architecture!r} ignored: a {loaded.form} file carries its own graph"
        )
    _note_dtypes(loaded)
    return loaded


def _load_state_dict(
    path: Path, kind: str, digest: str, architecture: str | None, arch_kwargs: dict | None
) -> LoadedModel:
    if kind == formats.SAFETENSORS:
        obj, metadata, container = _read_safetensors(path), _safetensors_metadata(path), "safetensors"
    else:
        obj, metadata, container = _torch_load_weights(path), None, "torch"
    tensors, layout = unwrap(obj, path.name)
    layout.metadata = metadata
    if architecture is None:
        raise CheckpointError(
            f"{path.name} is a state_dict ({len(tensors)} tensors, e.g. {list(tensors)[:3]}): it holds "
            "weights but no model code. Pass an architecture, e.g. architecture='resnet18', "
            "arch_kwargs={'num_classes': 10}, 'timm:NAME', or a name registered with "
            "register_architecture(); or upload a torch.export (.pt2) or TorchScript file instead"
        )
    model = build_architecture(architecture, arch_kwargs)
    load_into(model, tensors, architecture)
    notes = []
    if layout.wrapper:
        notes.append(f"weights read from checkpoint[{']['.join(map(repr, layout.wrapper))}]")
    if layout.prefix:
        notes.append(f"key prefix {layout.prefix!r} removed")
    return LoadedModel(
        model.eval(), "state_dict", digest, path, container,
        architecture=architecture, arch_kwargs=dict(arch_kwargs or {}), layout=layout, notes=notes,
    )  # fmt: skip


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # the library raises its own error types for corrupt headers
        raise CheckpointError(f"{path.name} looks like safetensors but cannot be read: {e}") from e


def _safetensors_metadata(path: Path) -> dict[str, str] | None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def _torch_load_weights(path: Path):
    """`torch.load` restricted to tensors and plain containers: a pickle that names any other global fails
    here before anything it references is imported or called."""
    try:
        return load_weights_only(path)
    except (pickle.UnpicklingError, AttributeError, ModuleNotFoundError, TypeError) as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f" (it references {found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path.name} is a pickle of Python objects{what}, e.g. a whole model "
            "saved with torch.save(model). "
            "Loading it would run code from the file, so it is refused. " + SUPPORTED_FORMS
        ) from None
    except (RuntimeError, EOFError, ValueError) as e:
        raise CheckpointError(
            f"{path.name} cannot be read as a torch.save file ({e}). " + SUPPORTED_FORMS
        ) from e


def _load_export(path: Path, digest: str) -> LoadedModel:
    register_output_types(path)
    try:
        program = torch.export.load(str(path))
    except Exception as e:  # deserialisation raises many types; all mean "not a usable program"
        raise CheckpointError(
            f"{path.name} looks like a torch.export program but cannot be loaded: {e}"
        ) from e
    module = program.module()
    # An exported graph's train/eval behaviour is fixed at export time; torch makes .train()/.eval() raise on
    # the unlifted module. Restoring nn.Module's versions (which only flip flags) lets callers put any
    # model in eval mode uniformly without changing what the graph computes.
    for name in ("train", "eval"):
        vars(module).pop(name, None)
    notes = ["exported program: train/eval behaviour fixed at export time"]
    fixed = _fixed_batch_sizes(program)
    sizes = set(fixed.values())
    if fixed:
        names = ", ".join(f"{k}: {{0: torch.export.Dim('batch')}}" for k in fixed)
        how = (
            "calls are split into chunks of that size (slower)" if len(sizes) == 1 else "calls must use them"
        )
        notes.append(
            f"inputs {fixed} were exported with a fixed leading (batch) size, so {how}; re-export with "
            f"dynamic_shapes={{{names}}} to accept any batch size"
        )
        if len(sizes) == 1:
            module = AnyBatch(module, next(iter(sizes)))
    return LoadedModel(
        module.eval(),
        "export",
        digest,
        path,
        "pt2",
        program=program,
        notes=notes,
        fixed_batch_size=next(iter(sizes)) if len(sizes) == 1 else None,
    )


def _fixed_batch_sizes(program: torch.export.ExportedProgram) -> dict[str, int]:
    """User inputs whose leading dimension is a constant in the exported graph (calls with another batch
    size fail the program's guards)."""
    from torch.export.graph_signature import InputKind

    nodes = {node.name: node for node in program.graph.nodes}
    fixed = {}
    for spec in program.graph_signature.input_specs:
        node = nodes.get(getattr(spec.arg, "name", None))
        if spec.kind != InputKind.USER_INPUT or node is None:
            continue
        shape = getattr(node.meta.get("val"), "shape", None)
        if shape is not None and len(shape) > 0 and isinstance(shape[0], int):
            fixed[node.name] = int(shape[0])
    return fixed


def _load_torchscript(path: Path, digest: str) -> LoadedModel:
    try:
        with (
            warnings.catch_warnings()
        ):  # TorchScript is deprecated upstream, but users still have these files
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # the TorchScript loader raises RuntimeError subclasses with C++ messages
        raise CheckpointError(f"{path.name} looks like TorchScript but cannot be loaded: {e}") from e
    return LoadedModel(module.eval(), "torchscript", digest, path, "torchscript")


def _note_dtypes(loaded: LoadedModel) -> None:
    other = sorted(
        {
            str(t.dtype)
            for t in loaded.model.state_dict().values()
            if t.is_floating_point() and t.dtype != torch.float32
        }
    )
    if other:
        loaded.notes.append(f"graph keeps its stored floating dtypes {other}; it is not converted to float32")


def export_decoded(loaded: LoadedModel, state_dict: Mapping[str, torch.Tensor], out_path: str | Path) -> Path:
    """Write ``state_dict`` (keys of ``loaded.model.state_dict()``) in the form ``loaded`` came from:
    a state_dict with the original wrapper, key prefix and dtypes (torch or safetensors), a ``.pt2`` program
    or a TorchScript archive with the new weights. ``loaded`` itself is not modified."""
    out_path = Path(out_path)
    check_keys(loaded.model.state_dict(), state_dict)
    if loaded.form == "state_dict":
        _write_state_dict(loaded, state_dict, out_path)
    elif loaded.form == "export":
        _write_export(loaded, state_dict, out_path)
    elif loaded.form == "torchscript":
        module = copy.deepcopy(loaded.model)
        own = module.state_dict()
        module.load_state_dict({k: v.detach().to("cpu", own[k].dtype) for k, v in state_dict.items()})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.save(module, str(out_path))
    else:
        raise CheckpointError(f"unknown checkpoint form {loaded.form!r}")
    return out_path


def _write_state_dict(loaded: LoadedModel, state_dict: Mapping[str, torch.Tensor], out_path: Path) -> None:
    layout = loaded.layout or StateDictLayout()
    if loaded.container == "safetensors":
        from safetensors.torch import save_file

        flat = layout.restore(state_dict)
        for _ in layout.wrapper:  # safetensors files are flat; wrappers only exist in torch files
            flat = next(iter(flat.values()))
        # clone: safetensors refuses tensors that share storage (tied weights)
        save_file({k: v.clone() for k, v in flat.items()}, str(out_path), metadata=layout.metadata)
    else:
        torch.save(layout.restore(state_dict), out_path)


def _write_export(loaded: LoadedModel, state_dict: Mapping[str, torch.Tensor], out_path: Path) -> None:
    """Save the loaded program with the new weights swapped in for the duration of the save. (A deep copy of
    the program would be simpler, but copying renames graph inputs such as nn.Sequential's ``input`` and the
    copy then fails torch's own verifier.)"""
    program = loaded.program
    originals = dict(program.state_dict)
    try:
        for key, old in originals.items():
            new = state_dict[key].detach().to("cpu", old.dtype).clone()
            program.state_dict[key] = (
                nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else new
            )
        torch.export.save(program, str(out_path))
    finally:
        program.state_dict.update(originals)
