"""How much the distillation distance cares about each weight tensor, before any optimization.

Near the original weights the distance D grows like ½·δᵀ·G·δ with G the Gauss–Newton matrix of the outputs.
Its diagonal is estimated without per-sample gradients: for random v ~ N(0, 1) over every output element,
E[(∂(v·f)/∂w)²] = Σ (∂f/∂w)² (Hutchinson's trick), one backward pass per batch. Each output is weighted
like in `losses.distillation_distance` (1 / (elements × mean square)), so the figures share its scale; with an
attention mask, padded positions of token outputs get no probe direction and do not count as elements.

The mean diagonal entry per tensor, h_t, says what a quantization error of a given size costs in that tensor;
`allocation.py` turns it into the initial steps (equal h_t·Δ_t², i.e. Δ_t ∝ 1/√h_t).
"""

from __future__ import annotations

import torch

from compression_core.model_io import Inputs, call_model, float_outputs, num_samples, select, to_device
from compression_core.token_mask import position_weights, token_mask


def weight_sensitivity(model: torch.nn.Module, names: list[str], inputs: Inputs, batch_size: int,
                       device: torch.device, seed: int, batches: int = 4,
                       output_keys: tuple[str, ...] = (), per_channel: bool = False) -> dict:
    """Mean Gauss–Newton diagonal of the distillation distance per named parameter (0.0 where the outputs
    do not depend on it); with ``per_channel``, a float64 tensor of one mean per output channel (dim 0)
    instead, which is what per-channel steps need. ``model`` is left as it was."""
    params = dict(model.named_parameters())
    wanted = [params[n] for n in names]
    previous = [p.requires_grad for p in wanted]
    totals = {n: torch.zeros(max(1, p.shape[0]) if p.dim() else 1, dtype=torch.float64)
              for n, p in zip(names, wanted, strict=True)}
    gen = torch.Generator().manual_seed(seed + 104729)
    n = num_samples(inputs)
    try:
        for p in wanted:
            p.requires_grad_(True)
        for _ in range(batches):
            index = torch.randint(0, n, (min(batch_size, n),), generator=gen)
            batch = select(inputs, index)
            outputs = float_outputs(call_model(model, to_device(batch, device)), output_keys)
            mask = token_mask(batch)
            probe = 0.0
            for out in outputs:
                real = position_weights(out, mask)
                if real is None:
                    energy = out.numel() * float(out.detach().pow(2).mean())
                else:  # elements · mean square over the real positions only
                    energy = float((out.detach().pow(2) * real).sum())
                weight = 1.0 / (energy + 1e-12) / len(outputs)
                v = torch.randn(out.shape, generator=gen).to(out.device)
                if real is not None:
                    v = v * real
                probe = probe + (v * out).sum() * weight**0.5
            grads = torch.autograd.grad(probe, wanted, allow_unused=True)
            for name, g in zip(names, grads, strict=True):
                if g is not None and g.numel():
                    rows = g.detach().double().pow(2).reshape(totals[name].shape[0], -1)
                    totals[name] += rows.mean(dim=1).cpu() / batches
    finally:
        for p, flag in zip(wanted, previous, strict=True):
            p.requires_grad_(flag)
    if per_channel:
        return totals
    return {name: float(t.mean()) for name, t in totals.items()}
