"""Configuration of one compression run: a frozen, validated value object (invalid values raise
`ConfigError` with the field name and what is allowed)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

KERNELS = ("cosine", "linear", "triangle")
ROUNDINGS = ("nearest", "gptq")
CONFIG_VERSION = 1


class ConfigError(ValueError):
    """A configuration value is out of range; the message names the field and the allowed values."""


@dataclass(frozen=True)
class CompressionConfig:
    """Knobs of the L² optimizer. The defaults are the ``balanced`` preset (`presets.py`), sized for 2 CPU
    cores; `from_dict` takes a ``preset`` name as the base.

    ``transform``: default kind for weight tensors (ndim ≥ 2); ``transform_overrides`` maps fnmatch-style
    name patterns (e.g. ``"classifier.*"``) to a kind, first match wins. 1-D float parameters (biases, norm
    scales) always use ``linear``; BN running statistics are coded at ``bn_statistics_precision`` × the
    precision their layer's β and γ get (`recon/bn_statistics.py`; 0 stores them exactly, as other float
    buffers and integer tensors are); with ``bn_statistics_grid`` > 0 they are first moved onto a fixed grid of
    that step in ``log var`` (and ``grid`` × the layer's RMS σ in the mean), γ and β absorbing the change, so
    they cost a few bits a value and no output error (0: no grid).
    ``rounds`` alternations of ``transform_iters`` (transform parameters + rate term) and ``weight_iters``
    (latent weights + rate term), each iteration on one calibration batch of ``batch_size``.
    ``rate_weight`` is λ of the normalised hinge λ·ReLU(S − B)/B; ``counter_samples`` > 0 lets the soft
    entropy counter judge a larger tensor from that many of its codes (fixed random subset, scaled to its
    size; the paper's code judges n/128) instead of all of them — the file size is always measured exactly.
    ``allocation`` is where the bits start:
    ``sensitivity`` (steps ∝ (measured sensitivity)^−``sensitivity_exponent``, spending the budget;
    ½ is the high-rate optimum for an exact sensitivity), ``equal_step`` (one step for
    every weight) or ``equal_bits`` (the same bits per weight in every tensor); see `recon/allocation.py`.
    ``rounding``: ``gptq`` (second-order rounding of the codes under the learned grids, `recon/gptq.py`, on
    ``gptq_samples`` samples) or ``nearest``; ``gptq_damping``: λ of H + λ·mean(diag H)·I (larger trusts
    the calibration inputs less); ``gptq_rate_weight``: how much GPTQ's choice between a weight's two
    neighbouring levels weighs their bits against their error (rate-aware rounding; 0 = nearest after
    compensation, 1 = the high-rate exchange rate of a uniform quantizer; 0.25 measured best with the trellis,
    docs/method.md). ``gptq_asymmetric``: after that rounding, round every layer again against the original
    network's output given the compressed network's inputs, layer by layer (`recon/asymmetric.py`; a
    candidate the selection test must accept; on in ``balanced``, the default, and ``paper``, off in
    ``fast``); ``gptq_asymmetric_strength`` (0–1]: the share of that stage's correction the target takes (it
    is a least-squares fit to the calibration samples; 0.25 and 0.5 measured no better than 1 on
    EfficientNet-Lite0, docs/method.md). ``gptq_trellis`` (on in every preset):
    GPTQ picks trellis-coded levels (dependent quantization: two interleaved grids and a 4-state machine,
    `transforms/trellis.py`), about 3.4 % fewer bits at equal error, for about twice GPTQ's rounding time;
    such files are format version 2 or later (`docs/format.md`).
    ``gptq_gain_allocation`` (on): before GPTQ's landing, each layer's step is scaled by r^−½, r the share of
    the output error that GPTQ leaves on samples it was not fitted to (`recon/gptq_gain.py`; two folds of the
    Hessian samples; r floored at ⅕): coarser steps where the compensation is strong, finer where it is not.
    ``gptq_layer_dampings``: further dampings each layer tries in that measurement beside ``gptq_damping``; a
    layer keeps the one that leaves the least error on the fold it was not fitted to, for every later
    rounding (() keeps every layer at ``gptq_damping``; without the gain allocation nothing is measured).
    ``block_iters`` > 0 reconstructs the codes block by block after the rounding (`recon/blockwise.py`):
    that many steps per block at ``block_lr`` (in levels per step, cosine-decayed) against the block's
    teacher output, on QDrop's input mix (``block_input_mix``: each input element the teacher's with this
    probability, else the compressed network's); ``block_modules`` (fnmatch patterns of module names)
    replaces the automatic blocks; activations beyond ``block_cache_mb`` MiB go to a temporary file (in
    the asymmetric stage too, which caches each block's inputs).
    ``bn_recalibration``: the BatchNorm stage after the weights are chosen (re-estimated or bias-corrected
    statistics, kept when they lower the distance on calibration samples; `recon/batchnorm.py`). True (the
    default) always, False never, None (the ``fast`` preset) only when the weights written were rounded to
    nearest: GPTQ's rounding already compensates each layer's output shift on the calibration inputs, and on
    EfficientNet-Lite0 the stage changed held-out scores after it by less than their noise for a third of
    ``fast``'s time (docs/method.md).
    ``bn_correction_chunk`` > 0 runs the BatchNorm bias correction's 64 samples that many at a time (a running
    average, `recon/batchnorm.correct_batchnorm`): a lower memory peak for a less exact correction, which on
    EfficientNet-Lite0 kept little of the single batch's gain (docs/method.md).
    ``augment``: the gradient phases see every image batch randomly re-cropped and flipped, the teacher run on
    the same batch (`recon/augment.py`); needs image calibration inputs (one N×C×H×W float tensor).
    ``holdout_fraction`` of the calibration samples is never used for optimization, only to report accuracy.
    ``output_keys``: which named outputs (dict / ModelOutput entries, e.g. ``("last_hidden_state",)``) the
    distillation distance compares; empty means every floating-point output. Token outputs count only real
    tokens when the inputs carry an ``attention_mask`` (`token_mask.py`).
    """

    transform: str = "prune_quant"
    transform_overrides: tuple[tuple[str, str], ...] = ()
    per_channel: bool = False
    kernel: str = "cosine"
    resolution: float = 64.0
    rounds: int = 0
    transform_iters: int = 60
    weight_iters: int = 0
    batch_size: int = 32
    transform_lr: float = 1e-3
    weight_lr: float = 1e-4
    rate_weight: float = 10.0
    counter_samples: int = 4096
    allocation: str = "sensitivity"
    rounding: str = "gptq"
    gptq_samples: int = 512
    gptq_damping: float = 0.1
    gptq_rate_weight: float = 0.25
    gptq_asymmetric: bool = True
    gptq_asymmetric_strength: float = 1.0
    gptq_trellis: bool = True
    gptq_gain_allocation: bool = True
    gptq_layer_dampings: tuple[float, ...] = (1.0,)
    block_iters: int = 0
    block_lr: float = 0.01
    block_input_mix: float = 0.5
    block_modules: tuple[str, ...] = ()
    block_cache_mb: int = 2048
    sensitivity_batches: int = 16
    sensitivity_exponent: float = 0.5
    feature_modules: tuple[str, ...] = ()
    augment: bool = False
    feature_weight: float = 1.0
    output_keys: tuple[str, ...] = ()
    bn_recalibration: bool | None = True
    bn_correction_chunk: int = 0
    bn_statistics_precision: float = 1.0
    bn_statistics_grid: float = 0.125
    holdout_fraction: float = 0.2
    min_coded_numel: int = 64
    ratio_tolerance: float = 0.01
    seed: int = 0
    version: int = CONFIG_VERSION
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        from compression_core.recon.allocation import ALLOCATIONS
        from compression_core.transforms.levels import TRANSFORM_KINDS

        def need(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ConfigError(f"{name}={getattr(self, name)!r} is invalid: {allowed}")

        need(self.transform in TRANSFORM_KINDS, "transform", f"one of {TRANSFORM_KINDS}")
        for pattern, kind in self.transform_overrides:
            if kind not in TRANSFORM_KINDS:
                raise ConfigError(f"transform_overrides[{pattern!r}]={kind!r} is invalid: one of {TRANSFORM_KINDS}")
        need(self.kernel in KERNELS, "kernel", f"one of {KERNELS}")
        need(self.resolution > 0, "resolution", "must be > 0")
        need(self.rounds >= 0, "rounds", "must be ≥ 0")
        need(self.transform_iters >= 0, "transform_iters", "must be ≥ 0")
        need(self.weight_iters >= 0, "weight_iters", "must be ≥ 0")
        need(self.batch_size >= 1, "batch_size", "must be ≥ 1")
        need(self.transform_lr > 0, "transform_lr", "must be > 0")
        need(self.weight_lr >= 0, "weight_lr", "must be ≥ 0")
        need(self.rate_weight >= 0, "rate_weight", "must be ≥ 0")
        need(self.counter_samples >= 0, "counter_samples", "must be ≥ 0 (0 counts every code)")
        need(self.allocation in ALLOCATIONS, "allocation", f"one of {ALLOCATIONS}")
        need(self.rounding in ROUNDINGS, "rounding", f"one of {ROUNDINGS}")
        need(self.gptq_samples >= 1, "gptq_samples", "must be ≥ 1")
        need(self.gptq_damping > 0, "gptq_damping", "must be > 0")
        need(
            isinstance(self.gptq_layer_dampings, tuple)
            and all(isinstance(d, int | float) and not isinstance(d, bool) and 0 < d <= 1e4
                    for d in self.gptq_layer_dampings),
            "gptq_layer_dampings",
            "a list of dampings in (0, 10000], e.g. [1.0]; empty keeps every layer at gptq_damping",
        )
        need(0 <= self.gptq_rate_weight <= 100, "gptq_rate_weight", "must be between 0 and 100")
        need(0 < self.gptq_asymmetric_strength <= 1, "gptq_asymmetric_strength", "must be in (0, 1]")
        need(self.block_iters >= 0, "block_iters", "must be ≥ 0 (0: no block-wise reconstruction)")
        need(self.block_lr > 0, "block_lr", "must be > 0 (levels per step)")
        need(0.0 <= self.block_input_mix <= 1.0, "block_input_mix", "must be in [0, 1]")
        need(self.block_cache_mb >= 0, "block_cache_mb", "must be ≥ 0 (0 keeps every activation on disk)")
        need(self.bn_recalibration in (None, True, False), "bn_recalibration", "true, false or null (automatic)")
        need(self.bn_statistics_precision >= 0, "bn_statistics_precision", "must be ≥ 0 (0 stores them as fp32)")
        need(0 <= self.bn_statistics_grid <= 1, "bn_statistics_grid", "must be in [0, 1] (0: no fixed grid)")
        need(self.bn_correction_chunk >= 0, "bn_correction_chunk", "must be ≥ 0 (0 runs the 64 samples as one batch)")
        need(self.sensitivity_batches >= 1, "sensitivity_batches", "must be ≥ 1")
        need(0.0 <= self.sensitivity_exponent <= 1.0, "sensitivity_exponent", "must be in [0, 1] (½: steps ∝ 1/√h)")
        need(0.0 <= self.holdout_fraction < 1.0, "holdout_fraction", "must be in [0, 1)")
        need(self.min_coded_numel >= 1, "min_coded_numel", "must be ≥ 1")
        need(0.0 < self.ratio_tolerance < 0.5, "ratio_tolerance", "must be in (0, 0.5)")
        need(
            isinstance(self.output_keys, tuple) and all(isinstance(k, str) and k for k in self.output_keys),
            "output_keys",
            "a tuple of output names, e.g. ('last_hidden_state',); empty for every output",
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> CompressionConfig:
        """Build from JSON-like values (lists become tuples); unknown keys raise `ConfigError`. A ``preset``
        key (`presets.PRESETS`) supplies the base values, which the other keys override."""
        from compression_core.presets import PRESETS

        values = dict(values)
        preset = values.pop("preset", None)
        if preset is not None and preset not in PRESETS:
            raise ConfigError(f"preset={preset!r} is invalid: one of {tuple(PRESETS)}")
        known = set(cls.__dataclass_fields__)
        unknown = set(values) - known
        if unknown:
            raise ConfigError(
                f"unknown option(s) {sorted(unknown)}; known: {sorted(known - {'extra', 'version'})} and preset"
            )
        fixed = {**PRESETS.get(preset, {}), **values}
        if "transform_overrides" in fixed:
            items = fixed["transform_overrides"]
            items = items.items() if isinstance(items, dict) else items
            fixed["transform_overrides"] = tuple((str(p), str(k)) for p, k in items)
        for key in ("feature_modules", "block_modules"):
            if key in fixed:
                fixed[key] = (fixed[key],) if isinstance(fixed[key], str) else tuple(fixed[key])
        if "gptq_layer_dampings" in fixed:
            dampings = fixed["gptq_layer_dampings"]
            fixed["gptq_layer_dampings"] = (
                (dampings,) if isinstance(dampings, int | float) and not isinstance(dampings, bool) else tuple(dampings)
            )
        if "output_keys" in fixed:
            keys = fixed["output_keys"]
            fixed["output_keys"] = (keys,) if isinstance(keys, str) else tuple(keys)
        return cls(**fixed)
