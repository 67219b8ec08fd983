"""Block-wise reconstruction (BRECQ, Li et al. 2021; QDrop, Wei et al. 2022) of the integer codes.

End-to-end training of every code against the network's output over a few hundred samples overfits them (the
weight phase doubled EfficientNet-Lite0's KL at 5×). A block — a residual block, a stage's unit, a transformer
layer, or a lone layer between them — sees thousands of activation positions per sample, so its codes can be
fitted to its own teacher output without that. Blocks are reconstructed in the order the network runs them:

- the teacher's input and output of the block are captured on the calibration samples, and so is the input the
  already-reconstructed student feeds it (both within a memory bound, spilled to a temporary file above it);
- the block runs on QDrop's mix of the two inputs (each element the teacher's with probability
  ``block_input_mix``) and its codes move in code space with a straight-through rounding (Adam, cosine decay)
  to minimise the normalised squared error against the teacher's output;
- the codes are kept only where the block, fed the student's own inputs, ends closer to the teacher than before.

Grids (steps and dead zones) stay as landed: only which level each weight takes changes, so the rate moves
little and the ratio controller lands the exact size afterwards as everywhere else.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from compression_core.config import ConfigError
from compression_core.model_io import Inputs, call_model, float_outputs, num_samples, select, to_device
from compression_core.recon.state import QuantizedState
from compression_core.transforms import round_ste

# Samples whose student-input loss decides whether a block's new codes are kept.
_JUDGE_SAMPLES = 128


@dataclass
class Block:
    """A module reconstructed as one unit, and the coded state_dict entries (full names) inside it."""

    name: str
    module: nn.Module
    coded: list[str]


def find_blocks(model: nn.Module, coded: list[str], patterns: tuple[str, ...] = ()) -> list[Block]:
    """The blocks of ``model`` that hold coded tensors. With ``patterns`` (fnmatch on module names), the
    outermost modules matching one; otherwise every child of a container (Sequential, ModuleList,
    ModuleDict) is a block and containers are entered, so residual blocks, stage units and transformer layers
    become blocks, and the layers around them (stem, head, classifier) blocks of their own. Coded entries
    outside every block are not reconstructed."""
    if patterns:
        return _matching_blocks(model, coded, patterns)  # raises ConfigError when nothing matches
    return list(_container_blocks(model, "", coded))


def _inside(prefix: str, names: list[str]) -> list[str]:
    return [n for n in names if n.startswith(prefix + ".")]


def _container_blocks(module: nn.Module, prefix: str, coded: list[str]):
    for name, child in module.named_children():
        full = f"{prefix}{name}"
        inside = _inside(full, coded)
        if not inside:
            continue
        if isinstance(child, nn.Sequential | nn.ModuleList | nn.ModuleDict):
            yield from _container_blocks(child, f"{full}.", inside)
        elif isinstance(module, nn.Sequential | nn.ModuleList | nn.ModuleDict) or not _has_containers(child):
            yield Block(full, child, inside)
        else:  # a plain module wrapping containers (a backbone inside a model): enter it
            yield from _container_blocks(child, f"{full}.", inside)


def _has_containers(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Sequential | nn.ModuleList | nn.ModuleDict) for m in module.modules())


def _matching_blocks(model: nn.Module, coded: list[str], patterns: tuple[str, ...]) -> list[Block]:
    blocks: list[Block] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(b.name + ".") for b in blocks):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            inside = _inside(name, coded)
            if inside:
                blocks.append(Block(name, module, inside))
    if not blocks:
        raise ConfigError(
            f"block_modules {list(patterns)} match no module holding coded weights; "
            f"module names look like {[n for n, _ in model.named_modules()][1:6]}"
        )
    return blocks


class StopPass(Exception):
    """Raised by a capture hook: the rest of the forward pass is not needed."""


@dataclass
class Captured:
    """A block's calls over the samples: positional and keyword arguments (tensors batched along dim 0 are
    stacked over every sample, anything else kept from the first call) and, for the teacher, its outputs."""

    args: list
    kwargs: dict
    outputs: list[torch.Tensor] = field(default_factory=list)

    def batch(self, index: torch.Tensor, device: torch.device) -> tuple[list, dict]:
        def pick(value):
            return value[index].to(device) if isinstance(value, Stacked) else value

        return [pick(a) for a in self.args], {k: pick(v) for k, v in self.kwargs.items()}

    def targets(self, index: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
        return [o[index].to(device) for o in self.outputs]

    @property
    def samples(self) -> int:
        """How many samples the calls hold (the rows of the first stacked argument)."""
        return next(v.data.shape[0] for v in [*self.args, *self.kwargs.values()] if isinstance(v, Stacked))


class Stacked:
    """Per-sample tensor storage, in memory or in a memory-mapped temporary file, filled batch by batch."""

    def __init__(self, first: torch.Tensor, total: int, store: ActivationStore) -> None:
        self.data, self.memory_bytes = store.allocate((total, *first.shape[1:]), first.dtype)
        self.filled = 0

    def append(self, part: torch.Tensor) -> None:
        self.data[self.filled : self.filled + part.shape[0]] = part.detach().cpu()
        self.filled += part.shape[0]

    def __getitem__(self, index) -> torch.Tensor:
        return self.data[index]


class ActivationStore:
    """Where captured activations live: in memory up to ``bound_bytes`` at once, beyond it in memory-mapped
    files of a temporary folder (removed by `close`). Records the most bytes held in memory at once and how
    many went to disk."""

    def __init__(self, bound_bytes: int) -> None:
        self.bound = bound_bytes
        self.in_memory = 0
        self.peak_memory = 0
        self.spilled_bytes = 0
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._files = 0

    def allocate(self, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, int]:
        """A tensor of ``shape`` and the bytes of memory it takes (0 when it lives in a file)."""
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if self.in_memory + nbytes <= self.bound:
            self.in_memory += nbytes
            self.peak_memory = max(self.peak_memory, self.in_memory)
            return torch.empty(shape, dtype=dtype), nbytes
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="l2-blocks-")
        self._files += 1
        self.spilled_bytes += nbytes
        path = Path(self._tmp.name) / f"{self._files}.bin"
        np_dtype = torch.empty((), dtype=dtype).numpy().dtype
        return torch.from_numpy(np.memmap(path, dtype=np_dtype, mode="w+", shape=shape)), 0

    def release(self, *captured: Captured) -> None:
        """Give back the memory ``captured`` held (the caller drops them)."""
        for c in captured:
            for v in [*c.args, *c.kwargs.values(), *c.outputs]:
                if isinstance(v, Stacked):
                    self.in_memory -= v.memory_bytes

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def capture(
    model: nn.Module,
    module: nn.Module,
    inputs: Inputs,
    batch_size: int,
    device: torch.device,
    store: ActivationStore,
    with_outputs: bool,
) -> Captured:
    """Run ``model`` over ``inputs`` in batches and record what ``module`` is called with (and returns),
    stopping each pass there."""
    n = num_samples(inputs)
    result: Captured | None = None

    def stacked(value, rows: int) -> bool:
        return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows

    def hook(_module, args, kwargs, output=None):
        nonlocal result
        rows = _rows(args, kwargs)
        if result is None:
            result = Captured(
                [Stacked(a, n, store) if stacked(a, rows) else a for a in args],
                {k: Stacked(v, n, store) if stacked(v, rows) else v for k, v in kwargs.items()},
            )
            if with_outputs:
                result.outputs = [Stacked(o, n, store) for o in float_outputs(output)]
        for slot, value in [*zip(result.args, args, strict=True), *((result.kwargs[k], v) for k, v in kwargs.items())]:
            if isinstance(slot, Stacked):
                slot.append(value)
        if with_outputs:
            for slot, value in zip(result.outputs, float_outputs(output), strict=True):
                slot.append(value)
        raise StopPass

    if with_outputs:
        handle = module.register_forward_hook(lambda m, a, k, o: hook(m, a, k, o), with_kwargs=True)
    else:
        handle = module.register_forward_pre_hook(lambda m, a, k: hook(m, a, k), with_kwargs=True)
    try:
        with torch.no_grad():
            for start in range(0, n, batch_size):
                batch = to_device(select(inputs, slice(start, min(n, start + batch_size))), device)
                try:
                    call_model(model, batch)
                except StopPass:
                    pass
    finally:
        handle.remove()
    if result is None:
        raise RuntimeError("the block was never called by the model's forward pass")
    return result


def _rows(args, kwargs) -> int:
    for v in [*args, *kwargs.values()]:
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return int(v.shape[0])
    return -1


@dataclass
class BlockSettings:
    """What `reconstruct` needs of the run's configuration."""

    iterations: int
    lr: float
    input_mix: float
    batch_size: int
    cache_bytes: int
    patterns: tuple[str, ...] = ()
    seed: int = 0
    rate_weight: float = 10.0


def execution_order(model: nn.Module, blocks: list[Block], probe: Inputs, device: torch.device) -> list[Block]:
    """``blocks`` in the order one forward pass first calls them, without those called more than once (a
    shared module has no single input to reconstruct against) or never."""
    calls: dict[str, int] = {}
    order: list[str] = []

    def counter(name: str):
        def record(_module, _args):
            calls[name] = calls.get(name, 0) + 1
            if calls[name] == 1:
                order.append(name)

        return record

    handles = [b.module.register_forward_pre_hook(counter(b.name)) for b in blocks]
    try:
        with torch.no_grad():
            call_model(model, to_device(probe, device))
    finally:
        for h in handles:
            h.remove()
    by_name = {b.name: b for b in blocks}
    return [by_name[name] for name in order if calls[name] == 1]


def _quantized(state: QuantizedState, indices: list[int], codes: list[torch.Tensor]) -> list[torch.Tensor]:
    """T⁻¹ of the codes (rounded with a straight-through gradient), per coded tensor of a block."""
    return [state.transforms[i].inverse(round_ste(c), state.latents[i]) for i, c in zip(indices, codes, strict=True)]


def _block_loss(outputs: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    """Squared error over every output, each normalised by its target's energy."""
    loss = outputs[0].new_zeros(())
    for out, target in zip(outputs, targets, strict=True):
        loss = loss + (out - target).pow(2).mean() / target.pow(2).mean().clamp_min(1e-12)
    return loss


def _run_block(block: Block, local: list[str], values: list[torch.Tensor], args: list, kwargs: dict):
    return float_outputs(functional_call(block.module, dict(zip(local, values, strict=True)), tuple(args), kwargs))


def _mix(teacher: list, student: list, keep_teacher: float, generator: torch.Generator) -> list:
    """QDrop's input: each float element from the teacher's input with probability ``keep_teacher``, else the
    student's."""
    mixed = []
    for t, s in zip(teacher, student, strict=True):
        if isinstance(t, torch.Tensor) and t.is_floating_point() and keep_teacher < 1.0:
            if keep_teacher <= 0.0:
                mixed.append(s)
                continue
            mask = torch.rand(t.shape, generator=generator).to(t.device) < keep_teacher
            mixed.append(torch.where(mask, t, s))
        else:
            mixed.append(t)
    return mixed


@torch.no_grad()
def _judge(block, local, state, indices, codes, teacher: Captured, student: Captured, device, batch: int) -> float:
    """The block's loss on up to ``_JUDGE_SAMPLES`` samples fed the student's own inputs."""
    n = min(_JUDGE_SAMPLES, teacher.outputs[0].filled)
    total = 0.0
    for start in range(0, n, batch):
        index = torch.arange(start, min(n, start + batch))
        args, kwargs = student.batch(index, device)
        out = _run_block(block, local, _quantized(state, indices, codes), args, kwargs)
        total += float(_block_loss(out, teacher.targets(index, device))) * len(index)
    return total / max(1, n)


def _optimize_block(
    block, local, state, indices, codes, teacher: Captured, fed: Captured, settings, device, generator
) -> None:
    """Move the block's ``codes`` (in place) to minimise its loss on QDrop's input mix, plus the rate hinge
    against the block's starting bits (the file must not grow: a landing that rescales undoes the rounding)."""
    trainable = [c for c in codes if c.requires_grad]
    if not (trainable and settings.iterations):
        return
    with torch.no_grad():
        start_bits = sum(float(state.rate_of(i, c)) for i, c in zip(indices, codes, strict=True))
    n = teacher.outputs[0].filled
    optimizer = torch.optim.Adam(trainable, lr=settings.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.iterations)
    for _ in range(settings.iterations):
        index = torch.randint(0, n, (min(settings.batch_size, n),), generator=generator)
        t_args, kwargs = teacher.batch(index, device)
        s_args, _ = fed.batch(index, device)
        args = _mix(t_args, s_args, settings.input_mix, generator)
        out = _run_block(block, local, _quantized(state, indices, codes), args, kwargs)
        loss = _block_loss(out, teacher.targets(index, device))
        if settings.rate_weight and start_bits > 0:
            bits = sum(state.rate_of(i, c) for i, c in zip(indices, codes, strict=True))
            loss = loss + settings.rate_weight * torch.relu(bits - start_bits) / start_bits
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()


def reconstruct(
    model: nn.Module,
    state: QuantizedState,
    inputs: Inputs,
    settings: BlockSettings,
    device: torch.device,
    on_block: Callable[[int, int, dict], None] | None = None,
) -> dict:
    """Reconstruct every block's codes in place (the latent weights end exactly on their levels). ``model``
    is the original float network; ``on_block(done, total, note)`` is told after each block. Returns what
    was done: per block its loss before and after (student inputs), whether the new codes were kept, and the
    activation cache's peak memory and spill."""
    index_of = {name: i for i, name in enumerate(state.names)}
    blocks = find_blocks(model, list(state.names), settings.patterns)
    blocks = execution_order(model, blocks, select(inputs, slice(0, 1)), device)
    student = student_model(model, state)
    store = ActivationStore(settings.cache_bytes)
    grids = [p.requires_grad for p in state.transform_parameters()]
    state.transforms.requires_grad_(False)  # the grids stay as landed
    generator = torch.Generator().manual_seed(settings.seed + 104729)
    notes: list[dict] = []
    try:
        for done, block in enumerate(blocks):
            indices = [index_of[name] for name in block.coded]
            local = [name[len(block.name) + 1 :] for name in block.coded]
            teacher = capture(model, block.module, inputs, settings.batch_size, device, store, with_outputs=True)
            fed = capture(
                student,
                student.get_submodule(block.name),
                inputs,
                settings.batch_size,
                device,
                store,
                with_outputs=False,
            )
            start_codes = [state.transforms[i].codes(state.latents[i]).detach().round() for i in indices]
            codes = [
                c.clone().requires_grad_(state.latents[i].requires_grad)
                for i, c in zip(indices, start_codes, strict=True)
            ]
            before = _judge(block, local, state, indices, codes, teacher, fed, device, settings.batch_size)
            _optimize_block(block, local, state, indices, codes, teacher, fed, settings, device, generator)
            after = _judge(block, local, state, indices, codes, teacher, fed, device, settings.batch_size)
            kept = after < before
            final = [c.detach().round() for c in codes] if kept else start_codes
            with torch.no_grad():
                for i, c, name in zip(indices, final, block.coded, strict=True):
                    value = state.transforms[i].inverse(c, state.latents[i])
                    state.latents[i].copy_(value)
                    student.get_parameter(name).copy_(value)
            note = {
                "block": block.name,
                "tensors": len(indices),
                "loss_before": before,
                "loss_after": after,
                "kept": kept,
            }
            notes.append(note)
            store.release(teacher, fed)
            del teacher, fed
            if on_block is not None:
                on_block(done + 1, len(blocks), note)
    finally:
        store.close()
        for p, flag in zip(state.transform_parameters(), grids, strict=True):
            p.requires_grad_(flag)
    return {
        "blocks": notes,
        "cache_peak_bytes": store.peak_memory,
        "spilled_bytes": store.spilled_bytes,
    }


def student_model(model: nn.Module, state: QuantizedState) -> nn.Module:
    """A copy of ``model`` carrying the state's current quantized weights (what earlier blocks feed later)."""
    student = copy.deepcopy(model)
    with torch.no_grad():
        for name, w, t in state.items():
            student.get_parameter(name).copy_(t.inverse(torch.round(t.codes(w)), w))
    return student
