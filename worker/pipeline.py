"""From a job row to a finished artifact: claim → load → compress → write → evaluate → publish → record.

Every step that changes the row is guarded by the claim (``worker`` + ``attempts``), so an attempt that was
presumed dead and replaced can never overwrite its successor. Outcomes:

* success: the ``.l2`` file at its final name (published atomically, `worker.artifacts`), its size, SHA-256,
  true ratio, the per-layer rows and the evaluation, state ``succeeded`` — all in one transaction;
* cancel (``cancel_requested`` seen by the heartbeat): state ``canceled``, no artifact;
* any error about the job: state ``failed`` with a message saying what to change, no artifact and no
  temporary file left; transient database errors are re-raised so the task retries (`worker.tasks`).

Torch is imported here at the top: `worker.tasks` imports this module only inside the task, i.e. only in the
pool child that runs a job.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from sqlalchemy import delete, select

from compression_core.coding import load_l2
from compression_core.compressor import compress
from compression_core.config import CompressionConfig, ConfigError
from compression_core.evaluation import EvaluationError, compare_models
from compression_core.loading import (
    ArchitectureError,
    CalibrationError,
    CalibrationSpec,
    CheckpointError,
    LoadingError,
    load_calibration,
    load_model,
)
from compression_core.progress import CompressionCanceled
from compression_core.recon.budget import UnreachableTargetError
from store import job_states
from store.db import SessionLocal, is_transient
from store.job_states import still_claimed_by
from store.models import Checkpoint, Dataset, Job, LayerResult
from store.settings import get_settings
from worker.artifacts import ArtifactPaths, publish, sha256_of
from worker.claims import STALE_AFTER_S, Claim, Outcome, claim_job
from worker.progress import Heartbeat, ProgressWriter

log = logging.getLogger(__name__)

CANCEL_CHECK_INTERVAL_S = 1.0


class JobInputError(ValueError):
    """The job refers to something unusable (missing file, unavailable device); the message says what."""


class AttemptLost(RuntimeError):
    """Another attempt took the job over; this one must stop without touching the row."""


@dataclass(frozen=True)
class JobSpec:
    """Plain values read from the job's rows once, so no ORM object outlives its session."""

    job_id: object
    tenant_id: object
    checkpoint_path: Path
    checkpoint_sha256: str | None
    calibration_path: Path
    calibration_spec: dict
    eval_path: Path | None
    eval_spec: dict | None
    architecture: str | None
    arch_kwargs: dict
    target_ratio: float
    options: dict
    device: str | None


def run_pipeline(job_id, *, settings=None, session_factory=None, owner: str | None = None) -> str:
    """Run one delivery of job ``job_id``; returns ``succeeded``/``failed``/``canceled`` or the claim outcome
    (``ended``, ``busy``, ``missing``) when there was nothing for this delivery to do."""
    settings = settings or get_settings()
    session_factory = session_factory or SessionLocal
    outcome, claim = claim_job(job_id, session_factory, stale_after_s=STALE_AFTER_S, me=owner)
    if outcome is not Outcome.CLAIMED:
        log.info("job %s: nothing to do (%s)", job_id, outcome.value)
        return outcome.value
    return run_claimed(claim, settings=settings, session_factory=session_factory)


def run_claimed(claim: Claim, *, settings=None, session_factory=None) -> str:
    """Run an attempt this process has already claimed (`worker.tasks` claims before importing torch)."""
    return JobRun(claim, settings or get_settings(), session_factory or SessionLocal).run()


def resolve_data_path(data_dir: Path, stored: str) -> Path:
    path = Path(stored)
    return path if path.is_absolute() else data_dir / path


class JobRun:
    def __init__(self, claim: Claim, settings, session_factory) -> None:
        self.claim = claim
        self.settings = settings
        self.session_factory = session_factory
        self.data_dir = Path(settings.data_dir)
        self.progress = ProgressWriter(
            claim.job_id,
            claim.owner,
            claim.attempt,
            session_factory,
            min_interval_s=getattr(settings, "progress_min_interval_s", 1.0),
        )
        self.paths: ArtifactPaths | None = None

    # -- the run ----
    def run(self) -> str:
        heartbeat = Heartbeat(
            self.claim.job_id,
            self.claim.owner,
            self.claim.attempt,
            self.session_factory,
            interval_s=CANCEL_CHECK_INTERVAL_S,
        )
        try:
            with heartbeat:
                spec = self.read_spec()
                self.paths = ArtifactPaths(self.data_dir, spec.tenant_id, spec.job_id)
                self.paths.remove_temps()
                return self.compress_and_publish(spec, heartbeat)
        except CompressionCanceled:
            self.cleanup()
            if heartbeat.lost:
                log.warning(
                    "job %s: attempt %s lost its claim; stopped", self.claim.job_id, self.claim.attempt
                )
                return "lost"
            self.finish("canceled", message="canceled on request; no artifact was written")
            return "canceled"
        except AttemptLost:
            self.cleanup()
            return "lost"
        except Exception as exc:
            self.cleanup()
            if is_transient(exc):
                raise
            log.exception("job %s failed", self.claim.job_id)
            self.finish("failed", message=explain(exc), error=explain(exc))
            return "failed"
        finally:
            _release_accelerator_memory()

    def compress_and_publish(self, spec: JobSpec, heartbeat: Heartbeat) -> str:
        device = resolve_device(spec.device)
        self.progress.set_phase("loading", 0.01, f"loading checkpoint and calibration data (device {device})")
        config = CompressionConfig.from_dict(dict(spec.options or {}))
        loaded = load_model(spec.checkpoint_path, spec.architecture, spec.arch_kwargs)
        if spec.checkpoint_sha256 and loaded.source_sha256 != spec.checkpoint_sha256:
            raise JobInputError(
                f"checkpoint file {spec.checkpoint_path.name} changed since upload (SHA-256 "
                f"{loaded.source_sha256[:12]}… ≠ recorded {spec.checkpoint_sha256[:12]}…); upload it again"
            )
        calibration = load_calibration(
            spec.calibration_path, CalibrationSpec.from_dict(spec.calibration_spec or {})
        )
        if heartbeat.should_cancel():
            raise CompressionCanceled("canceled while loading")

        result = compress(
            loaded.model,
            calibration.inputs,
            spec.target_ratio,
            config=config,
            progress=self.progress,
            should_cancel=heartbeat.should_cancel,
            device=device,
            metadata={
                "job_id": str(spec.job_id),
                "checkpoint_sha256": loaded.source_sha256,
                "form": loaded.form,
                "architecture": spec.architecture,
                "arch_kwargs": spec.arch_kwargs,
                "config": config.to_dict(),
            },
        )
        if heartbeat.should_cancel():
            raise CompressionCanceled("canceled after compression, before writing")

        self.progress.set_phase("writing", 0.96, "writing the .l2 artifact")
        self.paths.folder.mkdir(parents=True, exist_ok=True)
        temp = self.paths.temp(self.claim.attempt)
        result.write(temp)
        file_bytes = temp.stat().st_size

        self.progress.set_phase("evaluating", 0.98, "decoding the artifact and evaluating it")
        evaluation = self.evaluate(loaded.model, temp, result, calibration, spec, device)
        digest = sha256_of(temp)
        if heartbeat.should_cancel():
            raise CompressionCanceled("canceled before publishing")
        self.assert_still_claimed()
        publish(temp, self.paths.final)
        self.record_success(result, file_bytes, digest, evaluation)
        return "succeeded"

    # -- evaluation ----
    def evaluate(self, model, artifact: Path, result, calibration, spec: JobSpec, device) -> dict:
        """Held-out agreement from `compress` (on calibration samples it never optimized on), plus, with an
        eval dataset, the decoded artifact's accuracy on it (labels required for accuracy)."""
        evaluation = {"holdout": dict(result.evaluation)}
        decoded = load_l2(artifact)
        mismatched = [
            k for k, v in result.state_dict.items() if k not in decoded or not torch.equal(decoded[k], v)
        ]
        if mismatched:
            raise RuntimeError(
                f"the written artifact does not decode to the optimized weights: {mismatched[:5]}"
            )
        if spec.eval_path is not None:
            data = load_calibration(spec.eval_path, CalibrationSpec.from_dict(spec.eval_spec or {}))
            candidate = copy.deepcopy(model).float().eval()
            candidate.load_state_dict(
                {k: v.float() if v.is_floating_point() else v for k, v in decoded.items()}
            )
            reference = copy.deepcopy(model).float().eval()
            metrics = compare_models(reference, candidate, data.inputs, labels=data.labels, device=device)
            metrics["labelled"] = data.labels is not None
            evaluation["eval_dataset"] = metrics
        return json_safe(evaluation)

    # -- rows ----
    def read_spec(self) -> JobSpec:
        with self.session_factory() as session:
            job = session.execute(select(Job).where(Job.id == self.claim.job_id)).scalar_one()
            checkpoint = session.get(Checkpoint, job.checkpoint_id) if job.checkpoint_id is not None else None
            dataset = session.get(Dataset, job.dataset_id) if job.dataset_id is not None else None
            eval_dataset = (
                session.get(Dataset, job.eval_dataset_id) if job.eval_dataset_id is not None else None
            )
            if checkpoint is None:
                raise JobInputError("the job's checkpoint was deleted; upload it again and submit a new job")
            if dataset is None:
                raise JobInputError(
                    "the job's calibration dataset was deleted; upload it again and submit a new job"
                )
            if job.eval_dataset_id is not None and eval_dataset is None:
                raise JobInputError(f"eval dataset {job.eval_dataset_id} was deleted; upload it again")
            return JobSpec(
                job_id=job.id,
                tenant_id=job.tenant_id,
                checkpoint_path=resolve_data_path(self.data_dir, checkpoint.path),
                checkpoint_sha256=getattr(checkpoint, "sha256", None),
                calibration_path=resolve_data_path(self.data_dir, dataset.path),
                calibration_spec=dict(dataset.spec or {}),
                eval_path=resolve_data_path(self.data_dir, eval_dataset.path) if eval_dataset else None,
                eval_spec=dict(eval_dataset.spec or {}) if eval_dataset else None,
                architecture=job.architecture,
                arch_kwargs=dict(job.arch_kwargs or {}),
                target_ratio=float(job.target_ratio),
                options=dict(job.options or {}),
                device=job.device,
            )

    def _claimed(self) -> tuple:
        return still_claimed_by(self.claim.job_id, self.claim.owner, self.claim.attempt)

    def assert_still_claimed(self) -> None:
        with self.session_factory() as session:
            if session.execute(select(Job.id).where(*self._claimed())).first() is None:
                raise AttemptLost(f"job {self.claim.job_id}: attempt {self.claim.attempt} was replaced")

    def record_success(self, result, file_bytes: int, digest: str, evaluation: dict) -> None:
        true_ratio = result.summary.original_bytes / file_bytes
        message = f"{file_bytes} bytes, true ratio {true_ratio:.3f} (target {result.summary.target_ratio:g})"
        with self.session_factory() as session:
            won = job_states.succeed(
                session,
                self.claim.job_id,
                self._claimed(),
                message,
                artifact_path=str(self.paths.final.relative_to(self.data_dir)),
                artifact_bytes=file_bytes,
                artifact_sha256=digest,
                true_ratio=true_ratio,
                original_bytes=result.summary.original_bytes,
                estimated_ratio=result.summary.original_bytes / max(1, result.summary.estimated_file_bytes),
                evaluation=evaluation,
            )
            if not won:
                session.rollback()
                raise AttemptLost(f"job {self.claim.job_id}: attempt {self.claim.attempt} was replaced")
            session.execute(delete(LayerResult).where(LayerResult.job_id == self.claim.job_id))
            for position, layer in enumerate(result.layers):
                session.add(
                    LayerResult(
                        job_id=self.claim.job_id,
                        position=position,
                        name=layer.name,
                        shape=list(layer.shape),
                        dtype=layer.dtype,
                        numel=layer.numel,
                        mode=layer.mode,
                        transform=layer.transform,
                        params=json_safe(layer.params),
                        levels=layer.levels,
                        bit_width=_num(layer.bit_width),
                        entropy_bits=_num(layer.entropy_bits),
                        sparsity=_num(layer.sparsity),
                        bytes=layer.bytes,
                        original_bytes=layer.original_bytes,
                    )
                )
            session.commit()

    def finish(self, state: str, *, message: str, error: str | None = None) -> None:
        with self.session_factory() as session:
            job_states.end_job(session, self.claim.job_id, self._claimed(), state, message[:4000], error=error)
            session.commit()

    def cleanup(self) -> None:
        if self.paths is not None:
            try:
                self.paths.remove_temps()
            except OSError:
                log.warning("could not remove temporary files of job %s", self.claim.job_id, exc_info=True)


# -- helpers ----
def resolve_device(requested: str | None) -> str:
    requested = (requested or "auto").strip().lower()
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise JobInputError(
                f"the job asks for device {requested!r} but this worker has no CUDA device; submit it with "
                "device 'cpu' (queue cpu) or run a GPU worker: l2 worker --queues gpu"
            )
        index = int(requested.split(":", 1)[1]) if ":" in requested else 0
        if index >= torch.cuda.device_count():
            raise JobInputError(
                f"device {requested!r} does not exist; this worker has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
        return requested
    if requested == "cpu":
        return "cpu"
    raise JobInputError(f"device {requested!r} is not supported; use 'cpu', 'cuda', 'cuda:N' or 'auto'")


def _release_accelerator_memory() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _num(value):
    value = float(value)
    return value if math.isfinite(value) else None


def json_safe(value):
    """JSON columns reject NaN/Infinity (PostgreSQL): non-finite floats become None, tuples lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return json_safe(value.item())
    return value


def explain(exc: BaseException) -> str:
    """A failure message for the user: what went wrong and what to change."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, JobInputError):
        return text
    if isinstance(exc, ConfigError):
        return f"invalid compression options: {text}"
    if isinstance(exc, UnreachableTargetError):
        return f"target ratio cannot be reached: {text}"
    if isinstance(exc, CheckpointError):
        return f"checkpoint could not be loaded: {text}"
    if isinstance(exc, ArchitectureError):
        return f"architecture problem: {text}"
    if isinstance(exc, CalibrationError):
        return f"calibration data could not be read: {text}"
    if isinstance(exc, LoadingError):
        return f"input could not be loaded: {text}"
    if isinstance(exc, EvaluationError):
        return f"evaluating the decoded model on the eval dataset failed: {text}"
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return (
            "out of GPU memory: lower options.batch_size, use a smaller calibration set (max_samples), or "
            "submit the job to the cpu queue"
        )
    if isinstance(exc, MemoryError):
        return "the worker ran out of memory: lower options.batch_size or the calibration max_samples"
    if isinstance(exc, OSError):
        return (
            f"could not read or write a file on the worker ({text}); check free space and permissions "
            "of the data folder, then resubmit"
        )
    return (
        f"internal error ({type(exc).__name__}: {text}); the job can be resubmitted, and if it fails again "
        "please report this job's id"
    )
