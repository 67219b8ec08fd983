"""The alternating optimization of L² (paper Sec. 5, method notes "Training schedule").

Each round runs ``transform_iters`` steps on the transform parameters, then ``weight_iters`` steps on the
latent weights, both minimising  D(student, teacher) + λ·ReLU(S − B)/B  on random calibration batches. The
model stays in eval mode throughout (BN uses the original statistics, dropout is off), so the loss is
deterministic for a fixed seed on CPU; BN statistics are re-estimated afterwards (`batchnorm.py`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.func import functional_call

from compression_core.config import CompressionConfig
from compression_core.model_io import Inputs, call_model, float_outputs, num_samples, select, to_device
from compression_core.progress import CancelCheck, CompressionCanceled, ProgressCallback, ProgressEvent
from compression_core.recon.augment import crop_and_flip
from compression_core.recon.budget import Budget
from compression_core.recon.capture import FeatureCapture
from compression_core.recon.losses import distillation_distance
from compression_core.recon.state import QuantizedState
from compression_core.token_mask import token_mask

# Teacher outputs are cached for all optimization samples when they fit in this many elements.
TEACHER_CACHE_ELEMENTS = 50_000_000


@dataclass
class Reporter:
    """Forwards progress to the caller's callback, checks for cancellation, keeps a loss history."""

    total_iterations: int
    progress: ProgressCallback | None = None
    should_cancel: CancelCheck | None = None
    history: list[dict] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def check_cancel(self) -> None:
        if self.should_cancel is not None and self.should_cancel():
            raise CompressionCanceled("compression canceled by request")

    def emit(
        self,
        phase: str,
        iteration: int,
        fraction: float,
        losses: dict | None = None,
        estimated_ratio: float | None = None,
        message: str = "",
    ) -> None:
        if losses is not None:
            self.history.append({"phase": phase, "iteration": iteration, **losses, "estimated_ratio": estimated_ratio})
        if self.progress is not None:
            self.progress(
                ProgressEvent(
                    phase,
                    iteration,
                    self.total_iterations,
                    min(1.0, fraction),
                    losses or {},
                    estimated_ratio,
                    message,
                )
            )


class Teacher:
    """Outputs of the original model for calibration samples, cached when small enough."""

    def __init__(
        self,
        model: torch.nn.Module,
        inputs: Inputs,
        device: torch.device,
        batch_size: int,
        capture: FeatureCapture | None,
        output_keys: tuple[str, ...] = (),
        cached: bool = True,
    ) -> None:
        self.model, self.inputs, self.device, self.capture = model, inputs, device, capture
        self.output_keys = output_keys
        self.cache: list[torch.Tensor] | None = None
        if capture is None and cached:
            probe = self._run(select(inputs, slice(0, 1)))
            per_sample = sum(t.numel() for t in probe)
            if per_sample * num_samples(inputs) <= TEACHER_CACHE_ELEMENTS:
                n = num_samples(inputs)
                parts = [self._run(select(inputs, slice(i, min(n, i + batch_size)))) for i in range(0, n, batch_size)]
                self.cache = [torch.cat(chunks) for chunks in zip(*parts, strict=True)]

    @torch.no_grad()
    def _run(self, batch: Inputs) -> list[torch.Tensor]:
        if self.capture is None:
            return float_outputs(call_model(self.model, to_device(batch, self.device)), self.output_keys)
        with self.capture.active() as cap:
            outs = float_outputs(call_model(self.model, to_device(batch, self.device)), self.output_keys)
        return outs + cap.features

    def outputs(self, index: torch.Tensor) -> list[torch.Tensor]:
        if self.cache is not None:
            return [t[index.to(t.device)] for t in self.cache]
        return self._run(select(self.inputs, index))

    def outputs_of(self, batch: Inputs) -> list[torch.Tensor]:
        """Outputs for inputs that are not among the calibration samples (an augmented batch)."""
        return self._run(batch)


def _student_outputs(
    model,
    params: dict[str, torch.Tensor],
    batch: Inputs,
    device,
    capture: FeatureCapture | None,
    output_keys: tuple[str, ...] = (),
) -> list[torch.Tensor]:
    batch = to_device(batch, device)
    if capture is None:
        return float_outputs(functional_call(model, params, _as_args(batch), _as_kwargs(batch)), output_keys)
    with capture.active() as cap:
        outs = float_outputs(functional_call(model, params, _as_args(batch), _as_kwargs(batch)), output_keys)
    return outs + cap.features


def _as_args(batch: Inputs) -> tuple:
    if isinstance(batch, torch.Tensor):
        return (batch,)
    return () if isinstance(batch, dict) else tuple(batch)


def _as_kwargs(batch: Inputs) -> dict:
    return dict(batch) if isinstance(batch, dict) else {}


def _distortion_and_rate(
    model, state: QuantizedState, batch: Inputs, target, device, capture, config: CompressionConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step's forward: the quantized student's distance from the teacher's ``target`` on ``batch`` and
    the differentiable bits of every coded tensor."""
    quantized, rate = state.quantized_and_rate()
    student = _student_outputs(model, quantized, batch, device, capture, config.output_keys)
    return distillation_distance(student, target, token_mask(batch)), rate


def seconds_per_iteration(
    model: torch.nn.Module, state: QuantizedState, inputs: Inputs, config: CompressionConfig, device: torch.device
) -> float:
    """One timed schedule step's forward and backward on a batch (the teacher's output and the optimizer step
    left out; nothing changes): what an iteration costs before the schedule can time its own. Pricing it
    from a no-grad forward and the quantizer's pass came out ~30 % short on EfficientNet-Lite0."""
    capture = FeatureCapture(model, config.feature_modules) if config.feature_modules else None
    batch = select(inputs, slice(0, min(config.batch_size, num_samples(inputs))))
    teacher = Teacher(model, batch, device, config.batch_size, capture, config.output_keys)
    target = teacher.outputs(torch.arange(num_samples(batch)))
    phase = "transform" if config.transform_iters or not config.weight_iters else "weights"
    with state.learning(phase):
        t0 = time.monotonic()
        distortion, rate = _distortion_and_rate(model, state, batch, target, device, capture, config)
        loss = distortion + 0.0 * rate
        if loss.requires_grad:
            loss.backward()
        seconds = time.monotonic() - t0
    state.zero_grad(set_to_none=True)
    return seconds


def _stepped_finitely(optimizer: torch.optim.Optimizer) -> bool:
    """Take the optimizer's step; if it leaves any parameter non-finite (a learning rate far too large), undo
    it and say so, instead of letting NaN codes reach the entropy counter."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    before = [p.detach().clone() for p in params]
    optimizer.step()
    if all(bool(torch.isfinite(p).all()) for p in params):
        return True
    with torch.no_grad():
        for p, value in zip(params, before, strict=True):
            p.copy_(value)
    return False


def run_schedule(
    model: torch.nn.Module,
    state: QuantizedState,
    inputs: Inputs,
    config: CompressionConfig,
    budget: Budget,
    side_bytes: Callable[[], float],
    reporter: Reporter,
    device: torch.device,
    fraction_of: Callable[[float], float] = lambda done: 0.9 * done,
) -> None:
    """Optimize ``state`` in place. ``side_bytes()`` re-estimates the non-payload bytes of the file."""
    n = num_samples(inputs)
    capture = FeatureCapture(model, config.feature_modules) if config.feature_modules else None
    # With augmentation every batch is new: the teacher runs on it, and caching its calibration outputs is waste.
    teacher = Teacher(model, inputs, device, config.batch_size, capture, config.output_keys, cached=not config.augment)
    gen = torch.Generator().manual_seed(config.seed)
    transform_opt = torch.optim.Adam(state.transform_parameters(), lr=config.transform_lr)
    weight_groups = state.weight_param_groups(config.weight_lr)
    weight_opt = torch.optim.Adam(weight_groups, lr=config.weight_lr) if weight_groups else None
    total = max(1, reporter.total_iterations)
    step = 0
    report_every = max(1, total // 200)
    for round_index in range(config.rounds):
        phases = [
            ("transform", config.transform_iters, transform_opt),
            ("weights", config.weight_iters if weight_opt else 0, weight_opt),
        ]
        for phase, iters, optimizer in phases:
            with state.learning(phase):
                for it in range(iters):
                    reporter.check_cancel()
                    index = torch.randint(0, n, (min(config.batch_size, n),), generator=gen)
                    batch = select(inputs, index)
                    if config.augment:
                        batch = crop_and_flip(batch, gen)
                        target = teacher.outputs_of(batch)
                    else:
                        target = teacher.outputs(index)
                    distortion, rate = _distortion_and_rate(model, state, batch, target, device, capture, config)
                    side = side_bytes()
                    bits_budget = budget.payload_bits(side)
                    hinge = torch.relu(rate - bits_budget) / max(bits_budget, 1.0)
                    loss = distortion + config.rate_weight * hinge
                    state.zero_grad(set_to_none=True)  # both groups: the idle one must not accumulate
                    loss.backward()
                    if not _stepped_finitely(optimizer):
                        reporter.emit(
                            phase,
                            step,
                            fraction_of(step / total),
                            message=f"the {phase} phase diverged at its iteration {it + 1} (a parameter became "
                            "non-finite; a lower learning rate avoids it): the last finite state is kept and the "
                            "schedule stops here",
                        )
                        return
                    step += 1
                    if it % report_every == 0 or it == iters - 1:
                        losses = {
                            "distortion": distortion.item(),
                            "rate_bits_per_weight": rate.item() / max(1, budget.coded_numel),
                            "budget_bits_per_weight": bits_budget / max(1, budget.coded_numel),
                            "total": loss.item(),
                            "round": round_index,
                        }
                        frac = fraction_of(step / total)
                        reporter.emit(phase, step, frac, losses, budget.estimated_ratio(side, rate.item()))
