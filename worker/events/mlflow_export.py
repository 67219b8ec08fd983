"""Logging a succeeded job to MLflow: a run with the options as params, the results as metrics, the per-layer
table (CSV) and the ``.l2`` file as artifacts, and a registered model version when the block names a model.

Work comes from `MlflowExport` rows (made when the job's ``job.succeeded`` event is dispatched) and runs in a
thread of the worker's main process, beside the webhook dispatcher, never on the job's path: the job has
already succeeded, and an MLflow failure never changes that. Each failed attempt is recorded on the row and
emitted as a ``job.mlflow_failed`` event, then retried with the webhooks' backoff for their retry window; a
success emits ``job.mlflow_logged`` with the run id and model version. The run id is stored as soon as the run
exists, so a retry continues that run instead of making a second one.

``mlflow`` is an optional extra (``pip install 'l2-compression[mlflow]'``), imported only here.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import tempfile
import threading
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, update

from store.models import Checkpoint, Job, LayerResult, MlflowExport, utcnow
from store.outbox import emit
from worker.events.dispatcher import backoff_s

log = logging.getLogger(__name__)

LAYER_COLUMNS = (
    "position",
    "name",
    "shape",
    "dtype",
    "numel",
    "mode",
    "transform",
    "levels",
    "bit_width",
    "entropy_bits",
    "sparsity",
    "bytes",
    "original_bytes",
)
LEASE_S = 600.0


class MlflowUnavailable(RuntimeError):
    pass


def _flatten(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = value


def run_params(job: Job) -> dict[str, str]:
    params = {"target_ratio": job.target_ratio, "architecture": job.architecture, "device": job.device}
    _flatten("options", dict(job.options or {}), params)
    return {k: str(v)[:6000] for k, v in params.items() if v is not None}


def run_metrics(job: Job) -> dict[str, float]:
    metrics = {
        "true_ratio": job.true_ratio,
        "artifact_bytes": job.artifact_bytes,
        "original_bytes": job.original_bytes,
        "estimated_ratio": job.estimated_ratio,
    }
    _flatten("eval", dict(job.evaluation or {}), metrics)
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(float(value)):
            out[key.replace(":", "_")] = float(value)
    return out


def write_layers_csv(layers: list[LayerResult], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(LAYER_COLUMNS)
        for layer in layers:
            row = [getattr(layer, c) for c in LAYER_COLUMNS]
            row[2] = "x".join(str(d) for d in (layer.shape or []))
            writer.writerow(["" if v is None else v for v in row])


class MlflowExporter:
    """Leases due exports one at a time and logs them (`run` loops until stopped)."""

    def __init__(self, session_factory, settings) -> None:
        self.session_factory = session_factory
        self.settings = settings
        self.data_dir = Path(settings.data_dir)

    def lease(self) -> str | None:
        now = utcnow()
        free = (MlflowExport.leased_until.is_(None)) | (MlflowExport.leased_until < now)
        with self.session_factory() as session:
            export_id = session.execute(
                select(MlflowExport.id)
                .where(MlflowExport.status == "pending", MlflowExport.next_attempt_at <= now, free)
                .order_by(MlflowExport.next_attempt_at)
                .limit(1)
            ).scalar()
            if export_id is None:
                return None
            won = session.execute(
                update(MlflowExport)
                .where(MlflowExport.id == export_id, MlflowExport.status == "pending", free)
                .values(leased_until=now + timedelta(seconds=LEASE_S))
            ).rowcount
            session.commit()
        return export_id if won else None

    def step(self) -> bool:
        """Do one due export, if there is one; returns whether there was."""
        export_id = self.lease()
        if export_id is None:
            return False
        try:
            run_id, version = self.export(export_id)
        except Exception as exc:
            log.warning("MLflow export %s failed", export_id, exc_info=True)
            self.record_failure(export_id, f"{type(exc).__name__}: {exc}"[:2000])
        else:
            self.record_success(export_id, run_id, version)
        return True

    def export(self, export_id: str) -> tuple[str, str | None]:
        with self.session_factory() as session:
            export = session.get(MlflowExport, export_id)
            job = session.get(Job, export.job_id)
            layers = list(
                session.execute(
                    select(LayerResult).where(LayerResult.job_id == job.id).order_by(LayerResult.position)
                ).scalars()
            )
            checkpoint = session.get(Checkpoint, job.checkpoint_id) if job.checkpoint_id else None
            session.expunge_all()
        config = dict(export.config or {})
        # This loop retries on its own schedule; the client's own retries (minutes by default) would only keep
        # the thread from the next export.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
        try:
            from mlflow.tracking import MlflowClient  # optional extra: imported only when there is work
        except ImportError as exc:
            raise MlflowUnavailable(
                "the worker has no mlflow package; install the extra: pip install 'l2-compression[mlflow]'"
            ) from exc
        uri = config["tracking_uri"]
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        run_id = export.run_id or self._create_run(client, export, job, config, checkpoint)
        from mlflow.entities import Metric, Param

        stamp = int(utcnow().timestamp() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric(k, v, stamp, 0) for k, v in run_metrics(job).items()],
            params=[Param(k, v) for k, v in run_params(job).items()],  # the same values again on a retry: allowed
        )
        artifact = self.data_dir / job.artifact_path
        with tempfile.TemporaryDirectory(prefix="l2-mlflow-") as tmp:
            table = Path(tmp) / "layers.csv"
            write_layers_csv(layers, table)
            client.log_artifact(run_id, str(table), "l2")
            client.log_artifact(run_id, str(artifact), "l2")
        client.set_terminated(run_id, "FINISHED")
        version = None
        if config.get("registered_model"):
            version = self._register(client, config["registered_model"], run_id, job)
        return run_id, version

    def _create_run(self, client, export: MlflowExport, job: Job, config: dict, checkpoint) -> str:
        experiment_name = config.get("experiment") or "l2-compression"
        experiment = client.get_experiment_by_name(experiment_name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(experiment_name)
        tags = {
            "l2.job_id": job.id,
            "l2.artifact_sha256": job.artifact_sha256 or "",
            "l2.source_checkpoint_sha256": (checkpoint.sha256 if checkpoint else "") or "",
            "mlflow.source.name": "l2-compression",
        }
        run = client.create_run(experiment_id, tags=tags, run_name=f"l2-{job.id[:8]}")
        run_id = run.info.run_id
        with self.session_factory() as session:  # a retry continues this run
            session.execute(update(MlflowExport).where(MlflowExport.id == export.id).values(run_id=run_id))
            session.commit()
        return run_id

    @staticmethod
    def _register(client, name: str, run_id: str, job: Job) -> str:
        from mlflow.exceptions import MlflowException

        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(getattr(exc, "error_code", "")) + str(exc):
                raise
        for existing in client.search_model_versions(f"name='{name}' and run_id='{run_id}'"):
            return str(existing.version)
        version = client.create_model_version(
            name, source=f"runs:/{run_id}/l2", run_id=run_id, tags={"l2.job_id": job.id}
        )
        return str(version.version)

    def record_success(self, export_id: str, run_id: str, version: str | None) -> None:
        with self.session_factory() as session:
            export = session.get(MlflowExport, export_id)
            export.status, export.run_id, export.model_version = "logged", run_id, version
            export.attempts = (export.attempts or 0) + 1
            export.leased_until, export.last_error, export.updated_at = None, None, utcnow()
            emit(session, export.job_id, "job.mlflow_logged", {"mlflow": mlflow_public(export)})
            session.commit()

    def record_failure(self, export_id: str, error: str) -> None:
        s = self.settings
        with self.session_factory() as session:
            export = session.get(MlflowExport, export_id)
            now = utcnow()
            export.attempts = (export.attempts or 0) + 1
            export.leased_until, export.last_error, export.updated_at = None, error, now
            created = export.created_at if export.created_at.tzinfo else export.created_at.replace(tzinfo=now.tzinfo)
            if now >= created + timedelta(seconds=s.webhook_retry_window_s):
                export.status = "failed"
            else:
                export.next_attempt_at = now + timedelta(
                    seconds=backoff_s(export.attempts, s.webhook_retry_base_s, s.webhook_retry_max_s)
                )
            emit(session, export.job_id, "job.mlflow_failed", {"mlflow": mlflow_public(export)})
            session.commit()

    def run(self, stop: threading.Event) -> None:
        idle = max(1.0, self.settings.webhook_poll_interval_s)
        while not stop.is_set():
            try:
                busy = self.step()
            except Exception:
                log.warning("MLflow export round failed; retrying", exc_info=True)
                busy = False
            if not busy:
                stop.wait(idle)


def mlflow_public(export: MlflowExport) -> dict:
    """What jobs show and events carry about their MLflow export."""
    return {
        "status": export.status,
        "attempts": export.attempts,
        "run_id": export.run_id,
        "model_version": export.model_version,
        "error": export.last_error,
        "tracking_uri": (export.config or {}).get("tracking_uri"),
        "experiment": (export.config or {}).get("experiment"),
        "registered_model": (export.config or {}).get("registered_model"),
    }
