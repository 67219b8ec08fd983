"""Starts the webhook dispatcher and the MLflow exporter in the worker's main process once it is ready (the
embedded ``l2 serve`` worker included), and stops them at shutdown. Never in pool children: the job runs
there, and delivery must stay off its path. ``L2_WEBHOOK_DISPATCH=false`` turns both off for a worker."""

from __future__ import annotations

import logging
import threading

from celery.signals import worker_ready, worker_shutdown

log = logging.getLogger(__name__)
_stop = threading.Event()


def start_event_threads(session_factory, settings, stop: threading.Event) -> list[threading.Thread]:
    """The dispatcher and exporter loops as daemon threads (also used by `l2 webhooks dispatch` and tests)."""
    from worker.events.dispatcher import Dispatcher
    from worker.events.mlflow_export import MlflowExporter

    threads = [
        threading.Thread(target=Dispatcher(session_factory, settings).run, args=(stop,), name="l2-webhooks"),
        threading.Thread(target=MlflowExporter(session_factory, settings).run, args=(stop,), name="l2-mlflow"),
    ]
    for thread in threads:
        thread.daemon = True
        thread.start()
    return threads


@worker_ready.connect
def _start(sender=None, **_) -> None:
    from store.db import SessionLocal
    from store.settings import get_settings

    settings = get_settings()
    if not settings.webhook_dispatch:
        log.info("webhook and MLflow delivery off in this worker (L2_WEBHOOK_DISPATCH=false)")
        return
    start_event_threads(SessionLocal, settings, _stop)


@worker_shutdown.connect
def _stop_threads(**_) -> None:
    _stop.set()
