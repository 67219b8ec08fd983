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

Layers are taken one at a time in the order the network runs them; each gets X and X̃ from one pass of the
original and of the compressed network over the same samples (both stopped at the layer) and is rounded before
the next is measured (a layer the network calls more than once has no single input and keeps its plain GPTQ
rounding). Measured a block at a time instead (a residual block's three convolutions from one pass),
the second and third layers corrected an upstream error their block's first layer had just removed:
EfficientNet-Lite0 at 8× ended farther from the original (selection distance 0.040 against plain GPTQ's 0.021;
layer by layer 0.016).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from compression_core.model_io import Inputs, batches, call_model, num_samples, select, to_device
from compression_core.recon.blockwise import Block, StopPass, execution_order, student_model
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
) -> dict:
    """Give every layer ``rounder`` rounds the asymmetric target W* and the compressed network's H̃, one
    layer at a time in the order the network runs them, each rounded into ``state`` before the next is
    measured. ``model`` is the original float network; ``state`` holds the rounded start; ``on_layer`` is told
    the share of the stage's work done after each layer. Returns, per layer, how far W* moved from W (relative
    norm)."""
    layers = gptq_layers(model, rounder.hessians)
    units = [Block(name.rpartition(".")[0], module, [name]) for name, module in layers.items()]
    units = execution_order(model, units, select(inputs, slice(0, 1)), device)
    student = student_model(model, state)
    index_of = {name: i for i, name in enumerate(state.names)}
    subset = select(inputs, slice(0, min(num_samples(inputs), max_samples)))
    work = _work_per_layer(model, units, select(inputs, slice(0, min(num_samples(inputs), batch_size))), device)
    done_work, total_work = 0.0, sum(work)
    notes = []
    for unit, layer_work in zip(units, work, strict=True):
        name = unit.coded[0]
        hessian, cross = _layer_statistics(model, student, name, unit.module, subset, batch_size, device)
        original = rounder.originals[name]
        target = asymmetric_target(original, hessian, cross, CORRECTION_DAMPING)
        rounder.originals[name], rounder.hessians[name] = target, hessian
        rounded = rounder.rounded(name)
        state.latents[index_of[name]].copy_(rounded)
        student.get_parameter(name).copy_(rounded)
        moved = float((target - original).norm() / original.norm().clamp_min(1e-12))
        notes.append({"layer": name, "moved": round(moved, 5)})
        done_work += layer_work
        if on_layer is not None:
            on_layer(done_work / total_work)
    return {"layers": notes}


def _work_per_layer(model: nn.Module, units: list[Block], probe: Inputs, device: torch.device) -> list[float]:
    """What measuring each layer costs, in seconds of one probe batch: both networks run until they reach it,
    and its input columns and their products are formed (timed here on the probe's inputs to the layer; the
    time spent in them is taken out of the later layers' arrival times). Counted as one layer of n, the
    progress of EfficientNet-Lite0's stage ran 2× ahead after its cheap first layers (ETA 61 % off); by arrival
    time alone, the early high-resolution layers' products were missing (58 %)."""
    reached: dict[str, float] = {}
    products: dict[str, float] = {}
    inside = [0.0]

    def mark(name: str):
        def hook(module, args) -> None:  # a pre-hook's return value would replace the layer's inputs
            t0 = time.monotonic()
            reached.setdefault(name, t0 - inside[0])
            cols = grouped_columns(module, args[0].detach().float())
            torch.bmm(cols, cols.transpose(1, 2))
            spent = time.monotonic() - t0
            products.setdefault(name, spent)
            inside[0] += spent

        return hook

    handles = [u.module.register_forward_pre_hook(mark(u.name)) for u in units]
    try:
        started = time.monotonic()
        call_model(model, to_device(probe, device))
        whole = time.monotonic() - started - inside[0]
    finally:
        for h in handles:
            h.remove()
    return [
        2.0 * (reached.get(u.name, started + whole) - started) + 2.0 * products.get(u.name, 0.0) + 1e-6
        for u in units
    ]


def _layer_statistics(
    model: nn.Module,
    student: nn.Module,
    name: str,
    layer: nn.Module,
    inputs: Inputs,
    batch_size: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """H̃ = mean X̃·X̃ᵀ and C = mean X·X̃ᵀ per group for weight ``name`` (of ``layer`` in ``model``), X from
    ``model``, X̃ from ``student`` on the same samples; both passes stop at the layer."""
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
        layer.register_forward_pre_hook(take),
        student.get_submodule(name.rpartition(".")[0]).register_forward_pre_hook(combine),
    ]
    try:
        for batch in batches(inputs, batch_size):
            batch = to_device(batch, device)
            for network in (model, student):
                try:
                    call_model(network, batch)
                except StopPass:
                    pass
    finally:
        for h in handles:
            h.remove()
    if not sums:
        raise RuntimeError(f"layer {name!r} was never called by the model's forward pass")
    return sums[0] / count, sums[1] / count


def asymmetric_target(weight: torch.Tensor, hessian: torch.Tensor, cross: torch.Tensor, damping: float) -> torch.Tensor:
    """W* = W + W·(C − H̃)·(H̃ + λ·mean diag H̃·I)⁻¹ per group, in W's shape."""
    groups, k = hessian.shape[0], hessian.shape[1]
    w = weight.detach().double().reshape(groups, -1, k)
    h, _ = damped(hessian, damping)
    # (C − H̃)·(H̃ + λ)⁻¹ = ((H̃ + λ)⁻¹·(C − H̃)ᵀ)ᵀ, H̃ symmetric
    shift = torch.linalg.solve(h, (cross.double() - hessian.double()).transpose(1, 2)).transpose(1, 2)
    return (w + torch.bmm(w, shift)).reshape(weight.shape).to(weight.dtype)
