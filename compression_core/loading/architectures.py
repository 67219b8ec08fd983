"""Architecture references: the code half of a state_dict checkpoint. A state_dict holds only tensors, so the
model's code must come from somewhere trusted — torchvision, timm, or a factory this process registered —
never from the uploaded file.

Names resolve in this order: a registered name, ``timm:NAME`` (when timm is installed),
``torchvision:NAME`` or a bare torchvision model name (built with ``weights=None``: no download).
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Callable

from torch import nn

from compression_core.loading.errors import ArchitectureError

Factory = Callable[..., nn.Module]

_registry: dict[str, Factory] = {}
_lock = threading.Lock()


def register_architecture(name: str, factory: Factory, *, replace: bool = False) -> None:
    """Make ``name`` usable as ``load_model(..., architecture=name)``; ``factory(**arch_kwargs)`` must return
    a freshly initialised model. Registering another factory under a taken name needs ``replace=True`` so two
    plug-ins cannot silently shadow each other."""
    if not name or name.startswith(("timm:", "torchvision:")):
        raise ValueError(
            f"architecture name {name!r} is empty or uses a reserved prefix (timm:, torchvision:)"
        )
    with _lock:
        if name in _registry and _registry[name] is not factory and not replace:
            raise ValueError(f"architecture {name!r} is already registered; pass replace=True to override it")
        _registry[name] = factory


def unregister_architecture(name: str) -> None:
    with _lock:
        _registry.pop(name, None)


def registered_architectures() -> list[str]:
    with _lock:
        return sorted(_registry)


def build_architecture(name: str, kwargs: dict | None = None) -> nn.Module:
    """A randomly initialised model for ``name`` (see the module docstring), in float32."""
    kwargs = dict(kwargs or {})
    with _lock:
        factory = _registry.get(name)
    if factory is not None:
        return _call(name, factory, kwargs)
    if name.startswith("timm:"):
        return _build_timm(name[len("timm:") :], kwargs)
    return _build_torchvision(name.removeprefix("torchvision:"), kwargs)


def _call(name: str, factory: Factory, kwargs: dict) -> nn.Module:
    try:
        model = factory(**kwargs)
    except TypeError as e:
        raise ArchitectureError(f"architecture {name!r} rejected arch_kwargs {kwargs}: {e}") from e
    if not isinstance(model, nn.Module):
        raise ArchitectureError(
            f"the factory for architecture {name!r} returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model.float()


def _build_timm(name: str, kwargs: dict) -> nn.Module:
    try:
        import timm
    except ImportError as e:
        raise ArchitectureError(f"architecture 'timm:{name}' needs the timm package: pip install timm") from e
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        raise ArchitectureError(f"timm has no model {name!r}" + (f"; did you mean {close}?" if close else ""))
    kwargs.setdefault("pretrained", False)
    return _call(f"timm:{name}", timm.create_model, {"model_name": name, **kwargs})


def _build_torchvision(name: str, kwargs: dict) -> nn.Module:
    from torchvision import models

    available = models.list_models()
    if name not in available:
        known = available + registered_architectures()
        close = difflib.get_close_matches(name, known, n=5)
        raise ArchitectureError(
            f"unknown architecture {name!r}: use a torchvision model name (e.g. 'resnet18'), 'timm:NAME', "
            "or a name registered with register_architecture()"
            + (f"; did you mean {close}?" if close else "")
        )
    if kwargs.get("weights") is not None:
        raise ArchitectureError(
            "arch_kwargs must not ask for pretrained weights: the checkpoint supplies them"
        )
    kwargs["weights"] = None
    return _call(name, lambda **kw: models.get_model(name, **kw), kwargs)


def _register_project_models() -> None:
    """The project's own reference models (demo, tests, benchmarks) are referable by name."""
    from compression_core.zoo import DigitsCNN

    _registry.setdefault("digits_cnn", DigitsCNN)


_register_project_models()
