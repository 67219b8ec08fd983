"""Asymmetric GPTQ targets (GPTAQ, Li et al. 2025): round each layer against the original network's output,
given the inputs the already-compressed network feeds it.

Plain GPTQ minimises ‖(Ŵ − W)·X‖² on the original network's inputs X, so every layer ignores the error the
layers before it already made. Feeding it the compressed network's inputs X̃ instead ("sequential") and keeping
W as the target made EfficientNet-Lite0 worse (KL 0.054 → 0.060 at 8×, docs/method.md): the layer then fits its
own input error rather than the original output. The asymmetric objective is ‖Ŵ·X̃ − W·X‖², which is
‖(Ŵ − W*)·X̃‖² + const with

    W* = W + W·(C − H̃)·(H̃ + λ·mean diag H̃·I)⁻¹,  H̃ = X̃·X̃ᵀ,  C = X·X̃ᵀ

(the correction damped like GPTQ's own H; without error upstream C = H̃ and W* = W). So plain GPTQ rounding of
the target W* under H̃ solves it, and the ratio controller can land the exact size with the same rounder.

Layers are taken one at a time in the order the network runs them, and each is rounded before the next is
measured (a layer the network calls more than once, or whose block it calls more than once, has no single input
and keeps its plain GPTQ rounding). Measured a block at a time instead (a residual block's three convolutions
from one pass), the second and third layers corrected an upstream error their block's first layer had just
removed: EfficientNet-Lite0 at 8× ended farther from the original (selection distance 0.040 against plain
GPTQ's 0.021; layer by layer 0.016).

X and X̃ come from the block holding the layer (`blockwise.find_blocks`), run on its cached inputs from the
original and the compressed network and stopped at the layer. Where an nn.Sequential feeds one block's output
into the next (checked on a probe pass), the next block's inputs are computed from the cached ones; otherwise
both networks run from the inputs to the block once. Running both networks from the inputs for every layer
instead gave the same statistics bit for bit and took 281–291 s of EfficientNet-Lite0's stage on 2 cores, where
the cache takes 108 s and ~1 GB for 230 samples (`block_cache_mb` bounds it; beyond, a temporary file).
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from compression_core.model_io import Inputs, call_model, num_samples, select, to_device
from compression_core.recon.blockwise import (
    ActivationStore,
    Block,
    Captured,
    Stacked,
    StopPass,
    capture,
    execution_order,
    find_blocks,
    student_model,
)
from compression_core.recon.gptq import GptqRounder, damped, gptq_layers, grouped_columns
from compression_core.recon.state import QuantizedState

# λ of the correction, heavier than GPTQ's 0.1: W* is a least-squares fit to a few hundred calibration
# samples. EfficientNet-Lite0 at 8× (`fast` + this, 300 held-out crops): KL 0.0415 at 0.1, 0.0321 at 1.0
# (plain GPTQ 0.039).
CORRECTION_DAMPING = 1.0


@torch.no_grad()
def retarget(
    model: nn.Module,
    state: QuantizedState,
    rounder: GptqRounder,
    inputs: Inputs,
    batch_size: int,
    device: torch.device,
    max_samples: int,
    on_layer: Callable[[float], None] | None = None,
    cache_bytes: int = 2048 << 20,
    plan: StagePlan | None = None,
    strength: float = 1.0,
) -> dict:
    """Give every layer ``rounder`` rounds the asymmetric target W* and the compressed network's H̃, one
    layer at a time in the order the network runs them, each rounded into ``state`` before the next is
    measured. ``model`` is the original float network; ``state`` holds the rounded start; ``on_layer`` is told
    the share of the stage's work done after each layer; activations beyond ``cache_bytes`` go to a temporary
    file; ``plan`` is `plan_stage`'s for this model (made here from one batch when not given). Returns, per
    layer, how far W* moved from W (relative norm), and the activation cache's peak memory."""
    if plan is None:
        probe = select(inputs, slice(0, min(num_samples(inputs), batch_size)))
        plan = plan_stage(model, rounder.hessians, probe, device, cache_bytes)
    planned = {unit.coded[0] for segment in plan.segments for unit in segment.layers}
    if not planned <= set(rounder.hessians):
        raise ValueError(f"the plan names layers GPTQ did not round: {sorted(planned - set(rounder.hessians))}")
    student = student_model(model, state)
    index_of = {name: i for i, name in enumerate(state.names)}
    subset = select(inputs, slice(0, min(num_samples(inputs), max_samples)))
    layer_work = iter(plan.layer_seconds)
    done_work, total_work = 0.0, plan.seconds_per_sample
    notes = []

    def round_layer(unit: Block, hessian: torch.Tensor, cross: torch.Tensor) -> None:
        nonlocal done_work
        name = unit.coded[0]
        original = rounder.originals[name]
        # A layer whose held-out folds chose a heavier GPTQ damping trusts its calibration correlations less, and
        # the correction leans on them harder than the rounding: its damping grows in proportion.
        distrust = rounder.layer_dampings.get(name, rounder.damping) / rounder.damping
        target = asymmetric_target(original, hessian, cross, CORRECTION_DAMPING * distrust, strength)
        rounder.originals[name], rounder.hessians[name] = target, hessian
        rounded = rounder.rounded(name)
        state.latents[index_of[name]].copy_(rounded)
        student.get_parameter(name).copy_(rounded)
        moved = float((target - original).norm() / original.norm().clamp_min(1e-12))
        notes.append({"layer": name, "moved": round(moved, 5)})
        done_work += next(layer_work)
        if on_layer is not None:
            on_layer(done_work / total_work)

    store = ActivationStore(cache_bytes)
    try:
        _walk(model, student, plan.segments, subset, batch_size, device, store, round_layer)
    finally:
        store.close()
    return {"layers": notes, "cache_peak_bytes": store.peak_memory, "spilled_bytes": store.spilled_bytes}


@dataclass
class StagePlan:
    """What the stage will do and cost, worked out once before it runs: the layers grouped by block in the
    order the network runs them, and the seconds per sample each layer stands for (from a dry run), which
    price the stage for the ETA and weigh its progress."""

    segments: list[_Segment]
    layer_seconds: list[float]

    @property
    def seconds_per_sample(self) -> float:
        return sum(self.layer_seconds)


def plan_stage(model: nn.Module, weights, probe: Inputs, device: torch.device, cache_bytes: int) -> StagePlan:
    """The stage's plan for the layers GPTQ rounds among ``weights`` (names), timed by a dry run of the stage
    on ``probe`` (a batch of a few samples)."""
    segments = _plan(model, weights, probe, device)
    batch = max(1, num_samples(probe))
    seconds = _layer_seconds(model, segments, probe, batch, device, cache_bytes)
    return StagePlan(segments, [s / batch for s in seconds])


def _walk(
    model: nn.Module,
    student: nn.Module,
    segments: list[_Segment],
    inputs: Inputs,
    batch_size: int,
    device: torch.device,
    store: ActivationStore,
    visit: Callable[[Block, torch.Tensor, torch.Tensor], None],
) -> None:
    """The stage's passes: every layer's H̃ and C in turn, handed to ``visit`` (which rounds the layer into
    ``student`` before the next is measured). A chain's first block gets both networks' inputs by passes
    from the inputs that stop there; a block with a bridge hands the next one its inputs."""
    fed: tuple[Captured, Captured] | None = None
    for segment in segments:
        if fed is None:
            fed = tuple(
                capture(net, net.get_submodule(segment.block), inputs, batch_size, device, store, False)
                for net in (model, student)
            )
        for unit in segment.layers:
            visit(unit, *_layer_statistics(model, student, segment.block, unit.name, fed, batch_size, device))
        following = None
        if segment.bridge:
            following = tuple(
                _advance(net, segment, captured, batch_size, device, store)
                for net, captured in zip((model, student), fed, strict=True)
            )
        store.release(*fed)
        fed = following


def _layer_seconds(
    model: nn.Module, segments: list[_Segment], probe: Inputs, batch_size: int, device: torch.device, cache_bytes: int
) -> list[float]:
    """Seconds of the stage each layer stands for, from a dry run on ``probe`` (a copy of the original network
    standing in for the compressed one, nothing rounded): the time since the layer before, so a chain's
    passes from the inputs and a bridge count toward the layer after them. Priced by a model of the passes
    (each layer's arrival time and column products, timed in one pass) the ETA of EfficientNet-Lite0's run was
    42 % off: the cache's copies and the block runs on it were missing."""
    seconds: list[float] = []
    last = time.monotonic()

    def lap(*_statistics) -> None:
        nonlocal last
        now = time.monotonic()
        seconds.append(now - last + 1e-6)
        last = now

    store = ActivationStore(cache_bytes)
    try:
        _walk(model, copy.deepcopy(model), segments, probe, batch_size, device, store, lap)
    finally:
        store.close()
    return seconds


def _plan(model: nn.Module, weights, inputs: Inputs, device: torch.device) -> list[_Segment]:
    """The layers GPTQ rounds among ``weights`` (names), grouped by block in the order the network runs."""
    probe = select(inputs, slice(0, 1))
    layers = gptq_layers(model, weights)
    order = execution_order(
        model, [Block(name.rpartition(".")[0], module, [name]) for name, module in layers.items()], probe, device
    )
    return _segments(model, order, probe, device)


@dataclass
class _Segment:
    """A block (an outermost module holding rounded layers, see `blockwise.find_blocks`) and its layers in the
    order they run. ``bridge`` names the modules, block first, that turn its output into the next block's
    input when nn.Sequential guarantees it (then the next block's input is computed from the cached one,
    not by running both networks from the start); empty when the next block starts a new chain."""

    block: str
    layers: list[Block]
    bridge: list[str] = field(default_factory=list)


def _segments(model: nn.Module, order: list[Block], probe: Inputs, device: torch.device) -> list[_Segment]:
    """``order``'s layers grouped by block, blocks in the order they run; a layer whose block runs more than
    once is left out (it has no single input), as is a layer that runs more than once."""
    blocks = find_blocks(model, [u.coded[0] for u in order])
    blocks = execution_order(model, blocks, probe, device)
    segments = [_Segment(b.name, [u for u in order if u.coded[0].startswith(b.name + ".")]) for b in blocks]
    segments = [s for s in segments if s.layers]
    for here, after in itertools.pairwise(segments):
        here.bridge = _sequential_bridge(model, here.block, after.block)
    _check_bridges(model, segments, probe, device)
    return segments


def _check_bridges(model: nn.Module, segments: list[_Segment], probe: Inputs, device: torch.device) -> None:
    """Drop every bridge whose output is not what the next block receives in a real forward pass (a model
    may call a Sequential's modules itself and change the value between them)."""
    seen: dict[str, list] = {}

    def keep(key: str, pre: bool):
        def hook(_module, args, *output) -> None:
            seen.setdefault(key, [args[0] if pre else output[0]])

        return hook

    handles = []
    for here, after in itertools.pairwise(segments):
        if here.bridge:
            handles.append(model.get_submodule(here.bridge[-1]).register_forward_hook(keep("out " + here.block, False)))
            handles.append(model.get_submodule(after.block).register_forward_pre_hook(keep("in " + after.block, True)))
    try:
        call_model(model, to_device(probe, device))
    finally:
        for h in handles:
            h.remove()
    for here, after in itertools.pairwise(segments):
        out, fed = seen.get("out " + here.block, [None])[0], seen.get("in " + after.block, [None])[0]
        if not (isinstance(out, torch.Tensor) and isinstance(fed, torch.Tensor) and torch.equal(out, fed)):
            here.bridge = []


def _sequential_bridge(model: nn.Module, first: str, second: str) -> list[str]:
    """The modules from ``first`` up to (not including) ``second`` when an nn.Sequential runs them one into the
    next: ``first`` is the last module of every Sequential it ends, ``second`` the first of every one it
    starts, and the two sit in one Sequential with only modules holding no rounded layer between them (those
    are in the bridge too). Empty when no such Sequential joins them."""
    for a in _climb(model, first, last=True):
        for b in _climb(model, second, last=False):
            parent_a, _, child_a = a.rpartition(".")
            parent_b, _, child_b = b.rpartition(".")
            parent = model.get_submodule(parent_a)
            if parent_a != parent_b or not _plain_sequential(parent):
                continue
            keys = list(parent._modules)
            i, j = keys.index(child_a), keys.index(child_b)
            if i < j:
                prefix = parent_a + "." if parent_a else ""
                return [first] + [prefix + k for k in keys[i + 1 : j]]
    return []


def _climb(model: nn.Module, name: str, last: bool) -> list[str]:
    """``name`` and the Sequentials it is the last (``last``) or first module of, innermost first."""
    chain = [name]
    while name:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        keys = list(parent._modules) if _plain_sequential(parent) else []
        if not keys or child != (keys[-1] if last else keys[0]):
            break
        name = parent_name
        chain.append(name)
    return chain


def _plain_sequential(module: nn.Module) -> bool:
    """An nn.Sequential whose forward is Sequential's own (each module's output the next one's input)."""
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _advance(
    network: nn.Module,
    segment: _Segment,
    fed: Captured,
    batch_size: int,
    device: torch.device,
    store: ActivationStore,
) -> Captured:
    """The next block's input in ``network``: ``segment``'s block run on its cached input, then the bridge."""
    n = fed.samples
    following: Captured | None = None
    for start in range(0, n, batch_size):
        args, kwargs = fed.batch(torch.arange(start, min(n, start + batch_size)), device)
        value = network.get_submodule(segment.bridge[0])(*args, **kwargs)
        for name in segment.bridge[1:]:
            value = network.get_submodule(name)(value)
        if not isinstance(value, torch.Tensor):
            raise RuntimeError(f"{segment.bridge[-1]!r} passes on a {type(value).__name__}, not a tensor")
        if following is None:
            following = Captured([Stacked(value, n, store)], {})
        following.args[0].append(value)
    return following


def _layer_statistics(
    model: nn.Module,
    student: nn.Module,
    block: str,
    layer: str,
    fed: tuple[Captured, Captured],
    batch_size: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """H̃ = mean X̃·X̃ᵀ and C = mean X·X̃ᵀ per group for module ``layer`` of ``block``, X from ``model``'s
    block run on its cached input ``fed[0]``, X̃ from ``student``'s on ``fed[1]``; both stop at the layer."""
    taken: list[torch.Tensor] = []
    sums: list[torch.Tensor] = []
    count = 0

    def take(module, args):
        taken.append(grouped_columns(module, args[0].detach().float()))
        raise StopPass

    def combine(module, args):
        nonlocal count
        cols, teacher = grouped_columns(module, args[0].detach().float()), taken.pop()
        products = (torch.bmm(cols, cols.transpose(1, 2)), torch.bmm(teacher, cols.transpose(1, 2)))
        if sums:
            sums[0] += products[0]
            sums[1] += products[1]
        else:
            sums.extend(products)
        count += cols.shape[2]
        raise StopPass

    handles = [
        model.get_submodule(layer).register_forward_pre_hook(take),
        student.get_submodule(layer).register_forward_pre_hook(combine),
    ]
    n = fed[0].samples
    try:
        for start in range(0, n, batch_size):
            index = torch.arange(start, min(n, start + batch_size))
            for network, captured in zip((model, student), fed, strict=True):
                args, kwargs = captured.batch(index, device)
                try:
                    network.get_submodule(block)(*args, **kwargs)
                except StopPass:
                    pass
    finally:
        for h in handles:
            h.remove()
    if not sums:
        raise RuntimeError(f"layer {layer!r} was never called by its block {block!r}")
    return sums[0] / count, sums[1] / count


def asymmetric_target(
    weight: torch.Tensor, hessian: torch.Tensor, cross: torch.Tensor, damping: float, strength: float = 1.0
) -> torch.Tensor:
    """W* = W + α·W·(C − H̃)·(H̃ + λ·mean diag H̃·I)⁻¹ per group, in W's shape (α = ``strength``)."""
    groups, k = hessian.shape[0], hessian.shape[1]
    w = weight.detach().double().reshape(groups, -1, k)
    h, _ = damped(hessian, damping)
    # (C − H̃)·(H̃ + λ)⁻¹ = ((H̃ + λ)⁻¹·(C − H̃)ᵀ)ᵀ, H̃ symmetric
    shift = torch.linalg.solve(h, (cross.double() - hessian.double()).transpose(1, 2)).transpose(1, 2)
    return (w + strength * torch.bmm(w, shift)).reshape(weight.shape).to(weight.dtype)
