"""Let a program exported with a fixed batch size take any batch.

`torch.export.export(model, (x,))` without ``dynamic_shapes`` bakes x's batch size into the graph's guards,
and that is how most `.pt2` files are made. The optimizer, the teacher cache and the evaluation all batch
freely, so such a module is adapted: a call is split into chunks of the fixed size, the last chunk padded by
repeating its final sample, and the outputs are concatenated and trimmed.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn


def _leading_size(args: tuple, kwargs: dict) -> int | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    return None


def _chunk(value, n: int, start: int, size: int):
    """Rows start…start+size of a batched tensor, padded to ``size`` with its last row; others unchanged."""
    if not (isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n):
        return value
    part = value[start:start + size]
    if part.shape[0] < size:
        pad = part[-1:].expand((size - part.shape[0],) + tuple(part.shape[1:]))
        part = torch.cat([part, pad])
    return part


def _merge(outputs: list, n: int):
    """Concatenate per-chunk outputs along dim 0 and trim the padding; containers are merged element-wise."""
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        if first.dim() == 0:
            return first
        return torch.cat(outputs)[:n]
    if isinstance(first, Mapping):
        return type(first)({k: _merge([o[k] for o in outputs], n) for k in first})
    if isinstance(first, tuple) and hasattr(first, "_fields"):  # namedtuple
        return type(first)(*(_merge(list(parts), n) for parts in zip(*outputs, strict=True)))
    if isinstance(first, (list, tuple)):
        return type(first)(_merge(list(parts), n) for parts in zip(*outputs, strict=True))
    return first


class AnyBatch(nn.Module):
    """Runs ``inner`` on chunks of its fixed batch size. It shares the inner module's parameter, buffer and
    submodule tables instead of registering it as a child, so state_dict names, `functional_call` and
    `.to()` see exactly the checkpoint's tensors."""

    def __init__(self, inner: nn.Module, batch: int) -> None:
        super().__init__()
        self.__dict__["inner"] = inner
        self._parameters, self._buffers, self._modules = inner._parameters, inner._buffers, inner._modules
        self.batch = batch
        self.training = inner.training

    def forward(self, *args, **kwargs):
        n = _leading_size(args, kwargs)
        if n is None or n == self.batch:
            return self.inner(*args, **kwargs)
        outputs = []
        for start in range(0, n, self.batch):
            chunk_args = tuple(_chunk(a, n, start, self.batch) for a in args)
            chunk_kwargs = {k: _chunk(v, n, start, self.batch) for k, v in kwargs.items()}
            outputs.append(self.inner(*chunk_args, **chunk_kwargs))
        return _merge(outputs, n)

    def train(self, mode: bool = True) -> AnyBatch:
        self.inner.train(mode)
        return super().train(mode)

    def __deepcopy__(self, memo: dict) -> AnyBatch:
        return AnyBatch(copy.deepcopy(self.inner, memo), self.batch)

