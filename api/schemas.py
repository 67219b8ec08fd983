"""Request and response bodies (pydantic). ``*Create`` are what clients send, ``*Public`` what they get back.

`CompressionOptions` and `CalibrationSpecIn` mirror `compression_core.CompressionConfig` and
`compression_core.loading.CalibrationSpec` field for field (a test pins that) so the API can refuse bad values
with a 422 at submission instead of a failed job minutes later, without importing torch.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from api.schemas_events import EventType, MlflowBlock, MlflowPublic

TransformKind = Literal["linear", "prune_quant", "log", "exp"]
Size = int | tuple[int, int]


# Names and file names are shown in listings, logs and the UI: control characters (NUL, newlines, escape
# sequences) would forge or break those lines, so the schema refuses them.
NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _FromRow(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# -- compression options -------------------------------------------------------------------------------------
class CompressionOptions(_Strict):
    """Options of the L² optimizer; anything left out takes the library default."""

    transform: TransformKind | None = None
    transform_overrides: dict[str, TransformKind] | list[tuple[str, TransformKind]] | None = Field(
        None, description="name pattern (fnmatch) → transform kind; first match wins"
    )
    per_channel: bool | None = None
    kernel: Literal["cosine", "linear", "triangle"] | None = None
    resolution: float | None = Field(None, gt=0)
    rounds: int | None = Field(None, ge=0, le=1000)
    transform_iters: int | None = Field(None, ge=0, le=1_000_000)
    weight_iters: int | None = Field(None, ge=0, le=1_000_000)
    batch_size: int | None = Field(None, ge=1, le=65536)
    transform_lr: float | None = Field(None, gt=0)
    weight_lr: float | None = Field(None, ge=0)
    rate_weight: float | None = Field(None, ge=0)
    counter_samples: int | None = Field(
        None, ge=0, le=1_000_000_000, description="codes per tensor the entropy counter judges while training; 0 = all"
    )
    allocation: Literal["sensitivity", "equal_step", "equal_bits"] | None = None
    rounding: Literal["gptq", "nearest"] | None = Field(
        None, description="gptq: second-order rounding under the learned grids; nearest: round to nearest"
    )
    gptq_samples: int | None = Field(None, ge=1, le=100_000, description="calibration samples GPTQ measures")
    gptq_damping: float | None = Field(None, gt=0, le=100, description="GPTQ's damping λ (H + λ·mean diag H)")
    gptq_rate_weight: float | None = Field(
        None, ge=0, le=100, description="rate-aware GPTQ: weight of a level's bits against its error; 0 = off"
    )
    gptq_asymmetric: bool | None = Field(
        None,
        description="after GPTQ, round every layer again against the original network's output given the "
        "compressed network's inputs (a candidate the selection test must accept; ~2 min more for "
        "EfficientNet-Lite0 on 2 cores); on in balanced, the default",
    )
    gptq_asymmetric_strength: float | None = Field(
        None,
        gt=0,
        le=1,
        description="how much of the asymmetric correction the target takes (1 = all of it; it is a least-squares "
        "fit to the calibration samples)",
    )
    gptq_trellis: bool | None = Field(
        None,
        description="GPTQ picks trellis-coded levels (dependent quantization): about 3 % fewer bits at equal "
        "error; the file is format version 2 or later",
    )
    gptq_gain_allocation: bool | None = Field(
        None,
        description="scale each layer's step by how much of its rounding error GPTQ removes on samples it was not "
        "fitted to (coarser where the compensation is strong)",
    )
    gptq_layer_dampings: list[Annotated[float, Field(gt=0, le=10_000)]] | None = Field(
        None,
        max_length=8,
        description="further GPTQ dampings each layer tries in the gain measurement, keeping the one that leaves "
        "the least error on samples it was not fitted to; [] = every layer at gptq_damping",
    )
    sensitivity_batches: int | None = Field(None, ge=1, le=10_000, description="probe batches of the allocation")
    sensitivity_exponent: float | None = Field(
        None, ge=0, le=1, description="steps ∝ sensitivity^−exponent in the allocation; 0 = one step for all"
    )
    block_iters: int | None = Field(
        None, ge=0, le=1_000_000, description="block-wise reconstruction steps per block after the rounding; 0 = off"
    )
    block_lr: float | None = Field(None, gt=0, description="block-wise reconstruction: levels per step")
    block_input_mix: float | None = Field(
        None, ge=0, le=1, description="block-wise: share of each block's input taken from the original network"
    )
    block_modules: list[str] | None = Field(
        None, description="block-wise: module-name patterns (fnmatch) that are the blocks; [] = found automatically"
    )
    block_cache_mb: int | None = Field(
        None, ge=0, le=1_048_576, description="block-wise: MiB of activations held in memory; beyond, a temp file"
    )
    feature_modules: list[str] | None = None
    augment: bool | None = Field(
        None, description="gradient phases: re-crop and flip every image batch (needs image calibration data)"
    )
    feature_weight: float | None = Field(None, ge=0)
    bn_recalibration: bool | None = Field(
        None,
        description="BatchNorm statistics stage: true always, false never; omitted, the preset's choice (fast runs it "
        "only on weights rounded to nearest: GPTQ rounding already compensates the shifts it corrects)",
    )
    bn_correction_chunk: int | None = Field(
        None, ge=0, le=4096, description="BN bias correction: samples per pass (lower memory peak); 0 = all 64 at once"
    )
    bn_statistics_precision: float | None = Field(
        None,
        ge=0,
        le=100,
        description="BatchNorm running statistics coded at this multiple of their layer's β/γ precision; 0 = fp32",
    )
    bn_statistics_grid: float | None = Field(
        None,
        ge=0,
        le=1,
        description="BatchNorm running statistics moved onto a fixed grid of this step in log var (and this × the "
        "layer's RMS σ in the mean), γ and β absorbing the change so the function is kept; 0 = no grid",
    )
    holdout_fraction: float | None = Field(None, ge=0, lt=1)
    output_keys: list[str] | None = Field(
        None, description='named outputs the distillation distance compares, e.g. ["last_hidden_state"]; [] = all'
    )
    min_coded_numel: int | None = Field(None, ge=1)
    ratio_tolerance: float | None = Field(None, gt=0, lt=0.5)
    seed: int | None = None


OPTION_NAMES = tuple(CompressionOptions.model_fields)


class CalibrationSpecIn(_Strict):
    """How the worker turns the data into model inputs (`compression_core.loading.CalibrationSpec`)."""

    kind: Literal["images", "tensors", "text"] | None = Field(None, description="None: inferred from the content")
    resize: Size | None = 256
    crop: Size | None = 224
    mean: list[float] | None = None
    std: list[float] | None = None
    channels: Literal[1, 3] = 3
    max_samples: int = Field(1024, ge=1)
    labels_key: str | None = None
    seed: int = 0
    max_count: int = Field(100_000, ge=1)
    max_total_bytes: int = Field(2 * 1024**3, ge=1)
    max_ratio: float = Field(100.0, ge=1)
    max_image_pixels: int = Field(89_478_485, ge=1)
    max_image_bytes: int = Field(64 * 1024**2, ge=1)
    tokenizer: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="text: absolute server path of the model's tokenizer folder (inside an allowed data root); "
        "the data is then a UTF-8 text file, one sample per non-empty line",
    )
    max_length: int = Field(128, ge=1, le=65536, description="text: tokens per sample (longer lines are truncated)")
    padding: Literal["longest", "max_length"] = "longest"

    @field_validator("resize", "crop")
    @classmethod
    def _positive(cls, value):
        sizes = value if isinstance(value, tuple) else (value,) if value is not None else ()
        if any(s <= 0 for s in sizes):
            raise ValueError("sizes must be positive")
        return value

    @model_validator(mode="after")
    def _mean_std(self) -> CalibrationSpecIn:
        if (self.mean is None) != (self.std is None):
            raise ValueError("give mean and std together, or neither")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None and len(v) not in (1, self.channels):
                raise ValueError(f"{name} needs 1 or {self.channels} value(s), one per channel")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError("std values must be > 0")
        return self


# -- checkpoints and datasets --------------------------------------------------------------------------------
class CheckpointPublic(_FromRow):
    id: str
    filename: str
    size_bytes: int
    sha256: str
    created_at: datetime


class CheckpointsPublic(BaseModel):
    data: list[CheckpointPublic]
    total: int


class DatasetCreate(_Strict):
    """Register calibration data already on the server (a folder, archive or tensor file) by its path, which
    must lie inside one of the server's allowed data roots."""

    name: str = Field(min_length=1, max_length=200, pattern=NO_CONTROL_CHARACTERS)
    path: str = Field(min_length=1, max_length=4096, description="absolute server path")
    spec: CalibrationSpecIn = Field(default_factory=CalibrationSpecIn)


class DatasetPublic(_FromRow):
    id: str
    name: str
    source: Literal["upload", "path"]
    filename: str | None
    size_bytes: int | None
    sha256: str | None
    spec: dict[str, Any]
    created_at: datetime


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
    total: int


# -- jobs ----------------------------------------------------------------------------------------------------
# `compression_core.recon.budget.MIN_REACHABLE_RATIO` (a test pins the two): every model reaches a target from
# here up; below it only some do, which only the worker can tell after loading the model.
MIN_TARGET_RATIO = 2.0
JobState = Literal["queued", "running", "succeeded", "failed", "canceled"]


class JobCreate(_Strict):
    checkpoint_id: str
    dataset_id: str = Field(description="calibration data")
    eval_dataset_id: str | None = Field(None, description="optional data to evaluate the decoded model on")
    architecture: str | None = Field(
        None,
        max_length=200,
        description="registered architecture name (e.g. 'digits_cnn'), torchvision model name (e.g. "
        "'resnet18') or 'timm:NAME', needed for a plain state_dict checkpoint (arbitrary 'module:callable' "
        "references are not accepted: the service never imports code a request names)",
    )
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    target_ratio: float = Field(
        le=100,
        json_schema_extra={"minimum": MIN_TARGET_RATIO},
        description=f"fp32 size / .l2 file size, in [{MIN_TARGET_RATIO:g}, 100]",
    )
    preset: Literal["fast", "balanced", "paper"] | None = Field(
        None,
        description="optimizer schedule: 'fast' (GPTQ rounding, no gradient phase), 'balanced' (the default: "
        "plus asymmetric GPTQ and the BatchNorm stage, sized for 2 CPU cores), 'paper' (all of "
        "balanced, then the reference gradient schedule, for a GPU); fields in options override it",
    )
    options: CompressionOptions = Field(default_factory=CompressionOptions)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # -- events (issue 11) --
    webhook_url: str | None = Field(
        None, max_length=2000, description="shortcut: send this job's events here (its secret is in the 202 answer)"
    )
    webhook_events: list[EventType] | None = Field(None, description="event types for webhook_url; None: all")
    mlflow: MlflowBlock | None = Field(None, description="log the result to MLflow (default: the tenant's block)")

    @field_validator("target_ratio")
    @classmethod
    def _reachable(cls, value: float) -> float:
        if not value >= MIN_TARGET_RATIO:
            raise ValueError(
                f"{value:g} is below {MIN_TARGET_RATIO:g}, the lowest ratio every model reaches (lower targets need "
                "more than 16 bits per weight, beyond what the coder spends); ask for at least "
                f"{MIN_TARGET_RATIO:g} (the l2 command line names a model's own lowest reachable ratio)"
            )
        return value

    @field_validator("options", mode="before")
    @classmethod
    def _known_options(cls, value):
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(OPTION_NAMES))
            if unknown:
                raise ValueError(f"unknown option(s) {unknown}; allowed: {sorted(OPTION_NAMES)}")
        return value


class ArtifactInfo(BaseModel):
    url: str
    bytes: int | None
    sha256: str | None


class JobPublic(_FromRow):
    id: str
    state: JobState
    phase: str | None
    progress: float = Field(description="0..1")
    progress_percent: float
    eta_seconds: float | None
    latest_losses: dict[str, Any] | None
    estimated_ratio: float | None
    target_ratio: float
    true_ratio: float | None
    original_bytes: int | None
    checkpoint_id: str | None
    dataset_id: str | None
    eval_dataset_id: str | None
    architecture: str | None
    arch_kwargs: dict[str, Any]
    options: dict[str, Any]
    device: str
    queue: str
    cancel_requested: bool
    error: str | None
    evaluation: dict[str, Any] | None
    artifact: ArtifactInfo | None
    attempts: int
    idempotency_key: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    webhook_url: str | None = None
    webhook_secret: str | None = Field(None, description="signing secret of webhook_url, only in the 202 answer")
    mlflow: MlflowPublic | None = None


class JobsPublic(BaseModel):
    data: list[JobPublic]
    total: int
    limit: int
    offset: int


class JobEventPublic(_FromRow):
    id: str
    state: str
    phase: str | None
    message: str | None
    created_at: datetime


class JobEventsPublic(BaseModel):
    data: list[JobEventPublic]


class LayerResultPublic(_FromRow):
    position: int
    name: str
    shape: list[int]
    dtype: str
    numel: int
    mode: str
    transform: str | None
    params: Any | None
    levels: int | None
    bit_width: float | None
    entropy_bits: float | None
    sparsity: float | None
    bytes: int | None
    original_bytes: int | None


class LayerResultsPublic(BaseModel):
    data: list[LayerResultPublic]


# -- misc ----------------------------------------------------------------------------------------------------
class Message(BaseModel):
    """Every error: what went wrong and what to change."""

    detail: str


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str | None = None


class ValidationProblem(BaseModel):
    """422: ``detail`` joins every problem into one sentence; ``errors`` lists them one by one."""

    detail: str
    errors: list[ValidationIssue]


ERROR_RESPONSES: dict = {
    401: {"model": Message, "description": "missing, invalid or revoked API key"},
    404: {"model": Message, "description": "no such resource for this tenant"},
    422: {"model": ValidationProblem, "description": "the request is malformed; the detail says which field"},
}


class ReadyPublic(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str]


Limit = Annotated[int, Field(ge=1, le=500)]
_ISO_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def _iso_date_time_only(value: Any) -> Any:
    """Pydantic would also read a number as Unix seconds (``-5`` → 1969) or a bare date; the schema promises
    an ISO 8601 date-time, so anything else is refused before it parses."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _ISO_DATE_TIME.match(value):
        raise ValueError(f"{value!r} is not an ISO 8601 date-time; send e.g. 2026-01-31T12:00:00Z")
    return value


def _utc_if_naive(value: datetime) -> datetime:
    """A time without an offset is read as UTC (the rows store aware UTC; a naive value failed the query)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


IsoDateTime = Annotated[datetime, BeforeValidator(_iso_date_time_only), AfterValidator(_utc_if_naive)]

# Databases hold OFFSET in a signed 64-bit integer (PostgreSQL bigint, SQLite integer): a larger offset would
# fail inside the driver (a 500) instead of answering an empty page, so the schema bounds it.
MAX_OFFSET = 2**62
Offset = Annotated[int, Field(ge=0, le=MAX_OFFSET, description="rows to skip (newest first)")]


# -- resumable uploads (tus 1.0) -----------------------------------------------------------------------------
class UploadPublic(_FromRow):
    """A resumable upload: ``offset`` of ``length`` bytes received; ``resource`` is the checkpoint or dataset
    it became once complete."""

    id: str
    kind: Literal["checkpoint", "dataset"]
    filename: str
    name: str | None
    length: int
    offset: int
    complete: bool
    resource_id: str | None
    resource: str | None = Field(description="URL of the checkpoint or dataset, once complete")
    created_at: datetime
    expires_at: datetime
