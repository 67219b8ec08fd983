"""Second-order rounding of the integer codes (GPTQ / OBQ), under each layer's own L² transform.

Round-to-nearest treats every weight alone. For a layer y = W·x, the output error of a rounding error δ is
δᵀ·H·δ with H = Σ x·xᵀ over the layer's calibration inputs; OBQ/GPTQ quantize W one input column at a time
and push each column's error onto the columns not yet quantized through the Cholesky factor of H⁻¹, so later
roundings absorb earlier ones (Frantar et al., ICLR 2023). The quantizer of a column is the layer's current
transform (per tensor or per output channel): the levels, and so the rate allocation, stay L²'s; only which
level each weight takes changes. Convolutions are handled as im2col matrices, per group (a depthwise 3×3
layer is C independent 9-column problems).

Inputs come from the original model (every layer's H in one pass), within a sample bound.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from compression_core.model_io import Inputs, batches, call_model, num_samples, select, to_device
from compression_core.recon.level_bits import bits_of, level_bits
from compression_core.recon.trellis_search import BlockRounder, trellis_block_rounder, trellis_quantizer, warm_up
from compression_core.transforms import Transform

log = logging.getLogger(__name__)
# GPTQ's own default is 0.01, for LLM layers with millions of input columns. A CNN classifier sees one column
# per sample: with 128 samples its 1280×1280 H has rank ≤ 128, and at 0.01 the compensation fits those samples
# (EfficientNet-Lite0 at 8×, classifier alone rounded: held-out KL 0.0163 at 0.01, 0.0125 at 0.1, and nearest
# rounding 0.0156); over the whole network 0.1 lowered KL 0.0575 → 0.0542 (bench/results/ablation.md).
DEFAULT_DAMPING = 0.1
_BLOCK = 128


def grouped_columns(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as (groups, K, positions): the columns that multiply the weight's K inputs."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1]).t().unsqueeze(0)
    if isinstance(module, nn.Conv2d) and module.groups == module.in_channels:
        return _depthwise_columns(module, x)
    return _unfolded_columns(module, x)


def _depthwise_columns(module: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """`grouped_columns` of a convolution with one input channel a group, built from the kernel's shifted
    views in one copy: the same values in the same order as `_unfolded_columns`, whose im2col and regrouping
    copy took two thirds of EfficientNet-Lite0's Hessian pass (10.7 of 16 s) for its depthwise layers."""
    (kh, kw), (sh, sw), (dh, dw) = module.kernel_size, module.stride, module.dilation
    ph, pw = module.padding if isinstance(module.padding, tuple) else (0, 0)
    x = F.pad(x, (pw, pw, ph, ph))
    n, channels, height, width = x.shape
    out_h = (height - dh * (kh - 1) - 1) // sh + 1
    out_w = (width - dw * (kw - 1) - 1) // sw + 1
    span_h, span_w = sh * (out_h - 1) + 1, sw * (out_w - 1) + 1
    views = [
        x[:, :, i * dh : i * dh + span_h : sh, j * dw : j * dw + span_w : sw].transpose(0, 1)
        for i in range(kh)
        for j in range(kw)
    ]
    return torch.stack(views, dim=1).reshape(channels, kh * kw, n * out_h * out_w)


def _unfolded_columns(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`grouped_columns` of any convolution, through im2col."""
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(2)
        kernel, stride, dilation = (1, module.kernel_size[0]), (1, module.stride[0]), (1, module.dilation[0])
        padding = (0, module.padding[0]) if isinstance(module.padding, tuple) else 0
    else:
        kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
        # String paddings ("same") and padding done inside forward (TF-style "same" convolutions) are left
        # out: the interior patches alone still estimate H.
        padding = module.padding if isinstance(module.padding, tuple) else 0
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # (N, C·k, L)
    n, ck, length = cols.shape
    g = module.groups
    return cols.reshape(n, g, ck // g, length).permute(1, 2, 0, 3).reshape(g, ck // g, n * length)


def supported(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d) and module.weight.dim() >= 2


@torch.no_grad()
def layer_hessians(
    model: nn.Module,
    layers: dict[str, nn.Module],
    inputs: Inputs,
    batch_size: int,
    device: torch.device,
    max_samples: int = 128,
    on_batch: Callable[[float], None] | None = None,
) -> dict[str, torch.Tensor]:
    """H = mean of x·xᵀ per layer and group, shape (groups, K, K), from the original model's inputs to each
    layer on at most ``max_samples`` calibration samples. ``on_batch`` is told the share done after each
    batch (a progress estimate's pace)."""
    return fold_hessians(model, layers, inputs, batch_size, device, max_samples, on_batch)[0]


@torch.no_grad()
def fold_hessians(
    model: nn.Module,
    layers: dict[str, nn.Module],
    inputs: Inputs,
    batch_size: int,
    device: torch.device,
    max_samples: int = 128,
    on_batch: Callable[[float], None] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """`layer_hessians`, and the same means over the even and over the odd batches: two folds of disjoint
    samples for out-of-sample checks (`gptq_gain.py`), at no extra forward pass. A fold without samples
    (a single batch) is left out of its dict."""
    sums: list[dict[str, torch.Tensor]] = [{}, {}]
    counts: list[dict[str, int]] = [dict.fromkeys(layers, 0), dict.fromkeys(layers, 0)]
    fold = [0]

    def hook(name):
        def record(module, args, _out):
            cols = grouped_columns(module, args[0].detach().float())
            h = torch.bmm(cols, cols.transpose(1, 2))
            into = sums[fold[0]]
            into[name] = into[name] + h if name in into else h
            counts[fold[0]][name] += cols.shape[2]

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    try:
        subset = select(inputs, slice(0, min(num_samples(inputs), max_samples)))
        total, done = num_samples(subset), 0
        for index, batch in enumerate(batches(subset, batch_size)):
            fold[0] = index % 2
            call_model(model, to_device(batch, device))
            done += num_samples(batch)
            if on_batch is not None:
                on_batch(done / total)
    finally:
        for h in handles:
            h.remove()
    combined = {
        n: sum(part[n] for part in sums if n in part) / (counts[0][n] + counts[1][n])
        for n in layers
        if n in sums[0] or n in sums[1]
    }
    per_fold = tuple({n: part[n] / counts[f][n] for n in layers if n in part} for f, part in enumerate(sums))
    return combined, *per_fold


def damped(h: torch.Tensor, damping: float) -> tuple[torch.Tensor, torch.Tensor]:
    """H + damping·mean(diag H)·I per group in float64 (a copy), dead inputs (zero diagonal) given a unit
    diagonal first; and the damping added, (groups, 1)."""
    h = h.double().clone()
    diag = torch.diagonal(h, dim1=1, dim2=2)
    diag[diag <= 0] = 1.0
    damp = damping * diag.mean(dim=1, keepdim=True)
    diag += damp
    return h, damp


def _inverse_cholesky(h: torch.Tensor, damping: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damping)⁻¹ per group; dead inputs (zero diagonal) get a unit diagonal."""
    h, damp = damped(h, damping)
    diag = torch.diagonal(h, dim1=1, dim2=2)
    for attempt in range(6):
        try:
            inv = torch.cholesky_inverse(torch.linalg.cholesky(h))
            return torch.linalg.cholesky(inv, upper=True).float()
        except torch.linalg.LinAlgError:  # numerically indefinite: dampen more
            diag += damp * (10.0**attempt)
    raise torch.linalg.LinAlgError("H stayed indefinite after damping")


@torch.no_grad()
def gptq_round(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    quantize: Callable[[torch.Tensor], torch.Tensor],
    damping: float = DEFAULT_DAMPING,
    shared_order: bool = False,
    round_block: BlockRounder | None = None,
) -> torch.Tensor:
    """Quantized weight (same shape) chosen column by column with error compensation. ``quantize`` maps
    a column of every output channel, shape (C_out,), to its dequantized levels; ``damping`` is λ of
    H + λ·mean(diag H)·I. With ``shared_order`` every group takes its columns in one order, so that each
    step rounds one column of the weight (what a trellis along the output channels needs). ``round_block``,
    when given, does a whole block's column loop in one call (the same result as the loop with ``quantize``)."""
    groups, k = hessian.shape[0], hessian.shape[1]
    c_out = weight.shape[0]
    rows = c_out // groups
    # Columns with the most input energy first ("act order"): their errors get the most columns to absorb them.
    diagonal = torch.diagonal(hessian, dim1=1, dim2=2)
    if shared_order:
        order = torch.argsort(diagonal.sum(0), descending=True).expand(groups, k)
    else:
        order = torch.argsort(diagonal, dim=1, descending=True)
    hessian = hessian.gather(1, order[:, :, None].expand(-1, -1, k)).gather(2, order[:, None, :].expand(-1, k, -1))
    w = weight.detach().float().reshape(groups, rows, k).gather(2, order[:, None, :].expand(-1, rows, -1))
    u = _inverse_cholesky(hessian, damping)  # (G, K, K), upper
    q = torch.empty_like(w)
    for b0 in range(0, k, _BLOCK):
        b1 = min(k, b0 + _BLOCK)
        ub = u[:, b0:b1, b0:b1]
        q[:, :, b0:b1], err = (round_block or _column_loop(quantize))(w[:, :, b0:b1].clone(), ub)
        if b1 < k:
            w[:, :, b1:] -= torch.bmm(err, u[:, b0:b1, b1:])
    return torch.empty_like(q).scatter_(2, order[:, None, :].expand(-1, rows, -1), q).reshape(weight.shape)


def _column_loop(quantize: Callable[[torch.Tensor], torch.Tensor]) -> BlockRounder:
    """GPTQ's column loop over one block (groups, rows, B) with ``ub`` the block's part of the Cholesky factor
    of H⁻¹: each column rounded by ``quantize``, its scaled error pushed onto the block's later columns. Returns
    the rounded block and the scaled errors (what the columns after the block absorb)."""

    def round_block(block: torch.Tensor, ub: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rounded, err = torch.empty_like(block), torch.empty_like(block)
        for j in range(block.shape[2]):
            col = block[:, :, j]
            qc = quantize(col.reshape(-1)).reshape(col.shape)
            e = (col - qc) / ub[:, j, j].unsqueeze(1)
            block[:, :, j:] -= e.unsqueeze(2) * ub[:, j, j:].unsqueeze(1)
            rounded[:, :, j] = qc
            err[:, :, j] = e
        return rounded, err

    return round_block


def gptq_layers(model: nn.Module, names) -> dict[str, nn.Module]:
    """The modules whose ``weight`` is among ``names`` and that GPTQ can round, by weight name."""
    modules = dict(model.named_modules())
    layers = {}
    for name in names:
        owner, _, leaf = name.rpartition(".")
        module = modules.get(owner)
        if leaf == "weight" and module is not None and supported(module):
            layers[name] = module
    return layers


def _hessian_shape(module: nn.Module) -> tuple[int, int]:
    """(groups, K) of the layer's H, as `grouped_columns` forms it: K inputs of a group multiply each output."""
    if isinstance(module, nn.Linear):
        return 1, module.weight.shape[1]
    return module.groups, module.weight[0].numel()  # (C_in / groups) · kernel positions


@torch.no_grad()
def estimate_rounding_seconds(
    model: nn.Module,
    targets: dict[str, tuple[torch.Tensor, Transform]],
    damping: float = DEFAULT_DAMPING,
    rate_weight: float = 0.0,
    stride: int = 8,
    trellis: bool = False,
) -> float:
    """What one GPTQ rounding of ``targets`` will take on this machine, known before the Hessian pass (which a
    progress estimate must see past): every ``stride``-th layer rounded under H = I, nothing written, the time
    scaled by the columns. The column loop is Python-overhead bound, so its time does not depend on H's
    values; a fixed per-column constant was 3–6× off across machines."""
    layers = gptq_layers(model, targets)
    names = list(layers)[stride // 2 :: stride] or list(layers)[:1]
    if not names:
        return 0.0
    if trellis:
        warm_up()
    t0 = time.monotonic()
    for name in names:
        groups, k = _hessian_shape(layers[name])
        original = targets[name][0]
        identity = torch.eye(k, device=original.device).expand(groups, k, k).contiguous()
        round_layer(original, targets[name][1], identity, damping, rate_weight, trellis)
    sampled = sum(_hessian_shape(layers[n])[1] for n in names)
    columns = sum(_hessian_shape(m)[1] for m in layers.values())
    return (time.monotonic() - t0) * columns / max(1, sampled)


def round_layer(
    original: torch.Tensor,
    transform: Transform,
    hessian: torch.Tensor,
    damping: float,
    rate_weight: float,
    trellis: bool = False,
) -> torch.Tensor:
    """GPTQ rounding of one layer's weight under its transform's levels (rate-aware at ``rate_weight``),
    trellis-coded levels when ``trellis``."""
    if not trellis:
        return gptq_round(original, hessian, column_quantizer(transform, rate_weight, original), damping)
    bits = _trellis_bits(transform, original, rate_weight)
    quantize = trellis_quantizer(transform, rate_weight, bits)
    round_block = trellis_block_rounder(transform, rate_weight, bits)
    return gptq_round(original, hessian, quantize, damping, shared_order=True, round_block=round_block)


def _trellis_bits(transform: Transform, reference: torch.Tensor, rate_weight: float) -> tuple[torch.Tensor, int] | None:
    """`level_bits` for the trellis search: the histogram of ``reference`` rounded to nearest on a grid twice as
    coarse (what either of its quantizers roughly sees); None when rounding ignores the rate."""
    if rate_weight <= 0:
        return None
    return level_bits(torch.round(transform.codes(reference) / 2).to(torch.int64).reshape(-1))


def column_quantizer(
    transform: Transform, rate_weight: float = 0.0, reference: torch.Tensor | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """T⁻¹(⌊T(v)⌉) for a vector holding one weight of every output channel.

    With ``rate_weight`` > 0 the rounding is rate-aware (RDOQ): each weight takes the lower or upper of its
    two neighbouring levels, whichever has the smaller (v − ŵ)² + rate_weight · ln2/6 · Δ² · bits(level), Δ the
    distance between the two levels and bits(level) = −log₂ p(level) under the histogram of ``reference``
    rounded to nearest on this grid (the tensor as the range coder will roughly see it). ln2/6 · Δ² is the
    distortion a uniform quantizer of step Δ trades for one bit at high rate (D = Δ²/12, dD/dR = −2 ln2 · D), so
    1 means that exchange rate; the size controller then spends the bits saved on finer steps."""
    if rate_weight <= 0 or reference is None:

        def quantize(v: torch.Tensor) -> torch.Tensor:
            return transform.inverse(torch.round(transform.codes(v)), v)

        return quantize
    bits, lowest = level_bits(transform.symbols(reference).reshape(-1))
    exchange = rate_weight * math.log(2.0) / 6.0

    def quantize(v: torch.Tensor) -> torch.Tensor:
        codes = transform.codes(v)
        lower = torch.floor(codes)
        upper = lower + 1.0
        w_lower, w_upper = transform.inverse(lower, v), transform.inverse(upper, v)
        step_sq = (w_upper - w_lower).pow(2)
        cost_lower = (v - w_lower).pow(2) + exchange * step_sq * bits_of(bits, lowest, lower)
        cost_upper = (v - w_upper).pow(2) + exchange * step_sq * bits_of(bits, lowest, upper)
        return torch.where(cost_upper < cost_lower, w_upper, w_lower)

    return quantize


class GptqRounder:
    """GPTQ rounding of a set of coded weights, re-runnable at any grid: the Hessians are measured once, the
    original weights kept, and `round_into` rounds them afresh under the transforms' current parameters
    (the ratio controller changes the steps between calls; re-rounding already-rounded weights on a shifted
    grid would alias, so each call starts from the originals)."""

    def __init__(
        self,
        model: nn.Module,
        targets: dict[str, tuple[torch.Tensor, Transform]],
        inputs: Inputs,
        batch_size: int,
        device: torch.device,
        max_samples: int = 128,
        damping: float = DEFAULT_DAMPING,
        on_batch: Callable[[float], None] | None = None,
        rate_weight: float = 0.0,
        trellis: bool = False,
        folds: bool = False,
    ) -> None:
        self.damping = damping
        # A layer's own damping where the held-out folds chose one (`gptq_gain.measure_gains`), else ``damping``.
        self.layer_dampings: dict[str, float] = {}
        self.rate_weight = rate_weight
        self.trellis = trellis
        layers = gptq_layers(model, targets)
        self.hessians, *folds_measured = fold_hessians(model, layers, inputs, batch_size, device, max_samples, on_batch)
        # Two disjoint halves of the samples' H per layer (`gptq_gain.py`), when asked for; free with `drop_folds`.
        self.folds: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = (
            tuple(folds_measured) if folds else None
        )
        self.input_hessians = dict(self.hessians)  # the original network's; `asymmetric.retarget` swaps entries
        self.originals = {name: targets[name][0].detach().clone() for name in self.hessians}
        self.targets = targets
        log.info("GPTQ rounding for %d of %d coded weights", len(self.hessians), len(targets))

    def drop_folds(self) -> None:
        self.folds = None

    def take_current_weights(self) -> None:
        """Round the latent weights as they are now (after a gradient phase moved them) from here on, under the
        original network's input statistics: an asymmetric stage's H̃ belonged to its own targets W*."""
        self.hessians = dict(self.input_hessians)
        self.originals = {name: self.targets[name][0].detach().clone() for name in self.hessians}

    @torch.no_grad()
    def round_into(self) -> None:
        """Overwrite each latent weight with the GPTQ rounding of its original under its transform."""
        for name in self.hessians:
            self.targets[name][0].copy_(self.rounded(name))

    def rounded(self, name: str) -> torch.Tensor:
        transform, hessian = self.targets[name][1], self.hessians[name]
        damping = self.layer_dampings.get(name, self.damping)
        return round_layer(self.originals[name], transform, hessian, damping, self.rate_weight, self.trellis)
