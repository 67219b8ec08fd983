"""The workers' Celery application: the shared settings of `store.queues` plus this package's one task
(`worker.tasks`). ``celery -A worker.celery_app worker`` loads it; the API never does (it publishes by task
name through `store.queues.celery_enqueuer`).

Loading it also registers the worker-process signal handlers (`worker.signals`: engine reset after fork, the
sweep for abandoned jobs). Nothing here imports torch: the main worker process stays free of it.
"""

from __future__ import annotations

from store.queues import QUEUES, TASK_NAME, make_celery, send_job
from store.settings import get_settings
from worker import signals as _signals  # noqa: F401  (connects the worker-process signal handlers)

__all__ = ["QUEUES", "TASK_NAME", "app", "celery_app", "create_celery_app", "enqueue_job"]


def create_celery_app(broker_url: str | None = None):
    """The workers' Celery app for ``broker_url`` (default: `Settings.broker_url`)."""
    return make_celery(broker_url or get_settings().broker_url, include=("worker.tasks",))


celery_app = create_celery_app()
app = celery_app  # the name `celery -A worker.celery_app` looks for first


def enqueue_job(job_id: str | int, queue: str) -> None:
    """Publish one ``l2.run_job`` message on this app's broker (see `store.queues.send_job`)."""
    send_job(celery_app, job_id, queue)
