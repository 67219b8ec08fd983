"""What the pages show, computed from the rows the service functions return: the headline score of a job, the
per-layer story, the points of the compare chart, the commands that reproduce a job, and the small formatters
the templates use. No database access here; the routes fetch, this shapes."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from store.models import Job, JobLossPoint, LayerResult

# Registered architecture names offered in the form (free text is allowed too). The API process must not import
# torch, so this is the project's own registry (`compression_core.loading.architectures`) plus common
# torchvision names; the worker resolves and validates the name.
SUGGESTED_ARCHITECTURES = (
    "digits_cnn",
    "resnet18",
    "resnet50",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "vit_b_16",
    "timm:efficientnet_lite0",
)
PRESETS = ("fast", "balanced", "paper")

# (key, label, where in `Job.evaluation`, better when higher)
SCORES = (
    ("accuracy", "accuracy (evaluation set)", ("eval_dataset", "candidate_accuracy")),
    ("agreement", "top-1 agreement (evaluation set)", ("eval_dataset", "top1_agreement")),
    ("holdout_agreement", "top-1 agreement (held-out calibration)", ("holdout", "top1_agreement")),
    ("sqnr_db", "output SQNR dB (evaluation set)", ("eval_dataset", "sqnr_db")),
    ("holdout_sqnr_db", "output SQNR dB (held-out calibration)", ("holdout", "sqnr_db")),
)


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def scores(evaluation: dict | None) -> dict[str, float]:
    """Every score of `SCORES` the evaluation has (finite values only)."""
    found: dict[str, float] = {}
    for key, _, (section, field) in SCORES:
        value = _finite(((evaluation or {}).get(section) or {}).get(field))
        if value is not None:
            found[key] = value
    return found


def headline(evaluation: dict | None) -> tuple[str, float] | None:
    """The one score a person reads first: accuracy on a labelled evaluation set, else agreement with the
    original model, else output SQNR; None before the job has an evaluation."""
    found = scores(evaluation)
    for key, label, _ in SCORES:
        if key in found:
            return label, found[key]
    return None


def format_score(key_or_label: str, value: float) -> str:
    if "sqnr" in key_or_label.lower():
        return f"{value:.1f} dB"
    return f"{100 * value:.2f} %"


def age(moment: datetime | None, now: datetime | None = None) -> str:
    if moment is None:
        return ""
    seconds = max(0.0, ((now or datetime.now(UTC)) - moment).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} s ago"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = max(0, round(seconds))
    minutes, sec = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {sec:02d} s"
    return f"{sec} s"


def human_bytes(value: int | None) -> str:
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"


def layer_story(layers: list[LayerResult], artifact_bytes: int | None) -> list[dict]:
    """The per-layer rows in network order (``position``), with bits per weight (the coded payload's bits over
    the tensor's elements, exactly what `l2 inspect` prints) and the layer's share of the whole file."""
    rows = []
    for layer in layers:
        share = layer.bytes / artifact_bytes if layer.bytes is not None and artifact_bytes else None
        bits = 8.0 * layer.bytes / layer.numel if layer.bytes is not None and layer.numel else None
        rows.append(
            {
                "position": layer.position,
                "name": layer.name,
                "shape": "×".join(str(s) for s in layer.shape) or "scalar",
                "numel": layer.numel,
                "mode": layer.mode,
                "transform": layer.transform or "—",
                "levels": layer.levels,
                "bit_width": _finite(layer.bit_width),
                "entropy_bits": _finite(layer.entropy_bits),
                "bits_per_weight": bits,
                "sparsity": _finite(layer.sparsity),
                "bytes": layer.bytes,
                "original_bytes": layer.original_bytes,
                "share": share,
            }
        )
    return rows


def loss_series(points: list[JobLossPoint]) -> list[dict]:
    """The loss curves' points: time, phase, progress and each finite loss (distortion, rate and budget in bits
    per weight, total, round)."""
    return [
        {
            "seq": p.seq,
            "t": p.created_at.isoformat(),
            "phase": p.phase,
            "progress": p.progress,
            "estimated_ratio": _finite(p.estimated_ratio),
            **{k: v for k, v in (p.losses or {}).items() if _finite(v) is not None},
        }
        for p in points
    ]


def request_body(job: Job) -> dict:
    """The `POST /v1/jobs` body that submits this job again (what the client sent; library defaults stay out).
    A preset is stored among the options (``options["preset"]``) and goes back to its own field."""
    options = dict(job.options or {})
    preset = options.pop("preset", None)
    body: dict[str, Any] = {
        "checkpoint_id": job.checkpoint_id,
        "dataset_id": job.dataset_id,
        "eval_dataset_id": job.eval_dataset_id,
        "architecture": job.architecture,
        "arch_kwargs": job.arch_kwargs or None,
        "target_ratio": job.target_ratio,
        "preset": preset,
        "options": options or None,
        "device": job.device,
    }
    return {k: v for k, v in body.items() if v is not None}


def reproduce_commands(job: Job, base_url: str, auth_enabled: bool) -> dict[str, str]:
    """curl and Python (httpx, installed with the service) commands that submit the same job again."""
    body = request_body(job)
    text = json.dumps(body, indent=2)
    base = base_url.rstrip("/")
    curl_auth = ' \\\n  -H "Authorization: Bearer $L2_API_KEY"' if auth_enabled else ""
    curl = (
        f"curl -s -X POST {base}/v1/jobs{curl_auth} \\\n  -H 'Content-Type: application/json' \\\n"
        f"  -d '{json.dumps(body)}'"
    )
    py_auth = ', headers={"Authorization": f"Bearer {os.environ[\'L2_API_KEY\']}"}' if auth_enabled else ""
    python = (
        "import os, httpx\n\n"
        f"body = {text}\n"
        f'job = httpx.post("{base}/v1/jobs", json=body{py_auth}).raise_for_status().json()\n'
        'print(job["id"], job["state"])'
    )
    return {"curl": curl, "python": python}


def compare_points(rows) -> list[dict]:
    """The compare chart's points: one per job that has a true ratio and the chosen score (``row.score``),
    with what its hover text and click need and nothing more."""
    points = []
    for row in rows:
        ratio, score = _finite(row.true_ratio), _finite(row.score)
        if ratio is None or score is None:
            continue
        points.append(
            {
                "id": row.id,
                "true_ratio": ratio,
                "score": score,
                "target_ratio": row.target_ratio,
                "options": row.options or {},
            }
        )
    return points
