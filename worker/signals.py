"""Worker process hooks.

* In each pool child after fork: drop the database connections inherited from the parent (a connection
  shared across processes corrupts both). Torch is imported later, by the first job, inside the child.
* In the main worker process once it is ready, and then every ``sweep_interval`` seconds: requeue jobs whose
  attempt died (`worker.claims.requeue_abandoned`). The main process never imports torch.
"""

from __future__ import annotations

import logging
import threading
from functools import partial

from celery.signals import worker_process_init, worker_ready, worker_shutdown

from store.db import SessionLocal, get_engine
from store.queues import QUEUES, send_job
from worker.claims import STALE_AFTER_S, requeue_abandoned
from worker.events import hooks as _event_hooks  # noqa: F401  (webhook dispatcher + MLflow exporter threads)

log = logging.getLogger(__name__)
_stop = threading.Event()

SWEEP_INTERVAL_S = 30.0


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


def sweep_once(queues, enqueue) -> list:
    return requeue_abandoned(SessionLocal, queues, stale_after_s=STALE_AFTER_S, enqueue=enqueue)


@worker_ready.connect
def _start_sweeper(sender=None, **_) -> None:
    queues = _consumed_queues(sender)
    enqueue = partial(send_job, sender.app)

    def loop() -> None:
        while True:
            try:
                found = sweep_once(queues, enqueue)
                if found:
                    log.warning("requeued %d abandoned job(s): %s", len(found), found)
            except Exception:
                log.warning(
                    "sweep for abandoned jobs failed; retrying in %.0f s", SWEEP_INTERVAL_S, exc_info=True
                )
            if _stop.wait(SWEEP_INTERVAL_S):
                return

    threading.Thread(target=loop, name="l2-sweeper", daemon=True).start()


@worker_shutdown.connect
def _stop_sweeper(**_) -> None:
    _stop.set()
