"""BatchNorm recalibration under the quantized weights.

Quantization shifts the statistics of every pre-activation; BN layers still normalise with the fp32 model's
running mean/variance. Re-estimating them on calibration data with the decoded weights (a cumulative average,
BN layers in train mode, everything else in eval mode) removes that bias. The compressor keeps the
recalibrated statistics only when they lower the distillation distance on the optimization samples, so the
step can never make a model worse on the data it was judged on. The held-out samples are never used.
"""

from __future__ import annotations

import torch
from torch import nn

from compression_core.model_io import Inputs, batches, call_model, to_device

_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, _BN_TYPES) and m.track_running_stats for m in model.modules())


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, inputs: Inputs, batch_size: int, device: torch.device) -> None:
    """Replace every BN layer's running statistics by their average over ``inputs`` (in place)."""
    layers = [m for m in model.modules() if isinstance(m, _BN_TYPES) and m.track_running_stats]
    saved = [(m, m.momentum) for m in layers]
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over all batches
        m.train()
    try:
        for batch in batches(inputs, batch_size):
            call_model(model, to_device(batch, device))
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.eval()
