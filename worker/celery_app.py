"""The Celery application: one task (``l2.run_job``), two explicit queues, settings for long jobs.

Why these settings:

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a job's message is acknowledged only after the job has
  finished, so a worker that dies mid-job leaves the message to be delivered again; the pipeline's claim step
  makes a second delivery finish the job once (it returns without work when the job already ended).
* ``worker_prefetch_multiplier = 1``: a worker busy with a 20-minute GPU job must not hold the next message
  hostage while an idle worker waits.
* explicit ``cpu`` / ``gpu`` queues with ``task_create_missing_queues`` off: a typo in a queue name fails at
  enqueue time instead of creating a queue no worker listens to.
* Redis ``visibility_timeout`` far longer than any job: otherwise Redis hands a still-running job to a second
  worker after an hour. Jobs abandoned by a killed worker are found sooner by the start-up sweep
  (`worker.recovery`), not by this timeout.
* No result backend: the job row in the database is the result.

The module is cheap to import (no torch), so the API process can use `enqueue_job` too.
"""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from api.settings import get_settings

TASK_NAME = "l2.run_job"
QUEUES = ("cpu", "gpu")
# Longer than any job is allowed to run; see the module docstring.
REDIS_VISIBILITY_TIMEOUT_S = 7 * 24 * 3600


def _transport_options(broker_url: str) -> dict:
    if broker_url.startswith(("redis://", "rediss://", "redis+socket://")):
        return {"visibility_timeout": REDIS_VISIBILITY_TIMEOUT_S}
    return {}


def create_celery_app(broker_url: str | None = None) -> Celery:
    """A Celery app for ``broker_url`` (default: `Settings.broker_url`)."""
    broker_url = broker_url or get_settings().broker_url
    app = Celery("l2", broker=broker_url, include=["worker.tasks"])
    exchange = Exchange("l2", type="direct")
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_queues=tuple(Queue(name, exchange, routing_key=name) for name in QUEUES),
        task_default_queue="cpu",
        task_default_exchange="l2",
        task_default_routing_key="cpu",
        task_create_missing_queues=False,
        task_routes={TASK_NAME: {"queue": "cpu"}},
        broker_transport_options=_transport_options(broker_url),
        broker_connection_retry_on_startup=True,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        # The job row holds state and progress; Celery's own task-state tracking would be a second truth.
        task_track_started=False,
    )
    return app


celery_app = create_celery_app()
app = celery_app  # the name `celery -A worker.celery_app` looks for first


def enqueue_job(job_id: str | int, queue: str) -> None:
    """Publish one ``l2.run_job`` message. Call after the job row is committed: the task reloads it by id."""
    if queue not in QUEUES:
        raise ValueError(f"queue {queue!r} does not exist; use one of {QUEUES}")
    celery_app.send_task(TASK_NAME, args=[job_id], queue=queue, routing_key=queue, exchange="l2")


# Register worker-process signal handlers (start-up sweep, engine reset after fork) whenever this app is
# loaded by a worker. Importing them is cheap: no torch.
from worker import signals as _signals  # noqa: E402,F401
