"""Named schedules a user picks instead of a dozen knobs: ``fast``, ``balanced`` (the default) and ``paper``.

What each runs, and what it costs on EfficientNet-Lite0 (4.65 M weights) on 2 CPU cores, is measured in
`bench/results/ablation.md` and `bench/results/peers.md`; docs/method.md explains the choices.

- ``fast``: per-tensor steps from the measured sensitivity (16 probe batches), rescaled by how much of each
  layer's error GPTQ removes on samples it was not fitted to (`gptq_gain_allocation`, every preset: KL −19 to
  −30 % at 5–10× on EfficientNet-Lite0 over four seeds), each layer's GPTQ damping chosen on the same
  folds (`gptq_layer_dampings`: 0.1 or 1; KL −12.6 ± 9.7 % at 8×, −7.8 ± 2 % at 6×), GPTQ rounding under them (its
  Hessians from up to 512 calibration samples: distinct samples pay, the ccexam MNIST CNN gained at 10–20×
  over 128) to trellis-coded levels (`gptq_trellis`, every preset: on EfficientNet-Lite0 over four seeds KL
  −14 / −9.5 / −24 % at 5 / 8 / 10× against scalar levels, for about twice the rounding time), no gradient
  phase, and after GPTQ no BatchNorm stage (`CompressionConfig.bn_recalibration`: a third of the preset's time
  for held-out changes within the noise).
- ``balanced``: the same with asymmetric GPTQ after it (`gptq_asymmetric`, `recon/asymmetric.py`: every layer
  rounded again against the original output given the compressed network's inputs, its correction damped
  more where the folds chose a heavier GPTQ damping, a candidate the selection test must accept) and the
  BatchNorm stage. On all-MiniLM-L6-v2 it cut the held-out token error 12 % / 10 % at
  8× / 10× beyond `fast` (`bench/results/text_presets.md`), on the digits CNN at 20× accuracy 0.990 → 0.994;
  on EfficientNet-Lite0, over eight seeds paired with `fast` on the same photos, the lower KL in 23 of 32 runs
  at 5–8× (−4 ± 2 %, agreement even) and in 7 of 8 at 10× (KL −13 ± 3 %, agreement +0.024 ± 0.013;
  `bench/results/ablation.md`, tags "replicate: seed k"), ~1.5 min more on 2 cores. No gradient phase: the
  one round of 60 transform-learning iterations it ran until 2026-12-05 never passed the selection test on
  any bench model, at any target, with 20 or 72 calibration photos (docs/method.md), for 40 % of its time.
- ``paper``: everything ``balanced`` runs, then the reference schedule of the L² paper's public code,
  3 × (300 transform + 1,000 weight iterations) at batch 16, and GPTQ rounding of what it learned; meant for a
  GPU. Its candidates include ``balanced``'s, so the selection test keeps the learned weights only where they
  beat them (until 2026-12-07 it lacked the asymmetric stage, so it could write a worse file than ``balanced``).

Per-tensor, not per-channel: on EfficientNet-Lite0 at 8× the per-channel start (steps ∝ 1/√h per channel,
within 2× of the tensor's) was twice as far from the original model (distance 0.18 vs 0.083) and ended at
67.3 % agreement after GPTQ against 77.7 % per tensor (bench/results/ablation.md).
"""

from __future__ import annotations

_START = dict(
    per_channel=False, allocation="sensitivity", sensitivity_batches=16, gptq_samples=512, gptq_asymmetric=False
)
_BALANCED = dict(_START, rounding="gptq", rounds=0, bn_recalibration=True, gptq_asymmetric=True)
PRESETS: dict[str, dict] = {
    "fast": dict(_START, rounding="gptq", rounds=0, bn_recalibration=None),
    "balanced": _BALANCED,
    # balanced's candidates, then the reference schedule: the selection test keeps its result only if better
    "paper": dict(_BALANCED, rounds=3, transform_iters=300, weight_iters=1000, batch_size=16),
}
DEFAULT_PRESET = "balanced"
