"""Worker process hooks.

* In each pool child after fork: drop the database connections inherited from the parent (a connection
  shared across processes corrupts both), and lower the child's priority and torch threads (`be_polite`).
  Torch is imported later, by the first job, inside the child.
* In the main worker process once it is ready: its liveness thread (`worker.liveness`: the liveness row
  /readyz counts, the sweep for abandoned jobs and lost messages, the check that its supervisor still lives),
  stopped with the worker. The main process never imports torch.
"""

from __future__ import annotations

import logging
import os
from functools import partial

from celery.signals import worker_process_init, worker_ready, worker_shutdown

from store.db import SessionLocal, get_engine
from store.queues import QUEUES, send_job
from store.settings import get_settings
from worker.events import hooks as _event_hooks  # noqa: F401  (webhook dispatcher + MLflow exporter threads)
from worker.liveness import MainProcessWatch

log = logging.getLogger(__name__)
_watch: list[MainProcessWatch] = []


@worker_process_init.connect
def _prepare_pool_child(**_) -> None:
    get_engine().dispose(close=False)
    be_polite(get_settings())


def be_polite(settings) -> None:
    """Make the process that computes jobs yield to an API on the same machine: a higher niceness, and
    `Settings.worker_torch_threads` torch threads. Set through the environment before torch is imported (the
    first job imports it), so the main process stays free of torch."""
    if settings.worker_nice:
        os.nice(settings.worker_nice)
    if settings.worker_torch_threads:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(settings.worker_torch_threads)


def _consumed_queues(sender) -> list[str]:
    try:
        return sorted(sender.app.amqp.queues.consume_from)
    except Exception:  # older/other consumers: fall back to every queue
        return list(QUEUES)


@worker_ready.connect
def _start_watch(sender=None, **_) -> None:
    watch = MainProcessWatch(
        session_factory=SessionLocal,
        settings=get_settings(),
        name=getattr(sender, "hostname", None) or "worker",
        queues=_consumed_queues(sender),
        enqueue=partial(send_job, sender.app),
    )
    _watch.append(watch.start())


@worker_shutdown.connect
def _stop_watch(**_) -> None:
    while _watch:
        _watch.pop().stop()
