"""Named schedules a user picks instead of a dozen knobs: ``fast``, ``balanced`` (the default) and ``paper``.

What each runs, and what it costs on EfficientNet-Lite0 (4.65 M weights) on 2 CPU cores, is measured in
`bench/results/ablation.md` and `bench/results/peers.md`; docs/method.md explains the choices.

- ``fast``: per-channel steps from the measured sensitivity, GPTQ rounding under them, no gradient phase.
- ``balanced``: the same start, then one round of transform learning (steps and dead zones per channel) on
  the calibration set; written only if it beats the start on samples it never trained on.
- ``paper``: the reference schedule of the L² paper's public code, 3 × (300 transform + 1,000 weight
  iterations) at batch 16 with round-to-nearest; meant for a GPU.
"""

from __future__ import annotations

PRESETS: dict[str, dict] = {
    "fast": dict(per_channel=True, allocation="sensitivity", rounding="gptq", rounds=0),
    "balanced": dict(
        per_channel=True, allocation="sensitivity", rounding="gptq", rounds=1, transform_iters=100,
        weight_iters=0,
    ),
    "paper": dict(
        per_channel=True, allocation="sensitivity", rounding="nearest", rounds=3, transform_iters=300,
        weight_iters=1000, batch_size=16,
    ),
}
DEFAULT_PRESET = "balanced"
