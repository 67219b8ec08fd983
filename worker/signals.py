"""Worker process hooks.

* In each pool child after fork: drop the database connections inherited from the parent (a connection
  shared across processes corrupts both), lower the child's priority and torch threads (`be_polite`), and
  let a SIGTERM stop it only while it runs a job (an idle one leaves quietly with the main process). Torch is
  imported later, by the first job, inside the child.
* In the main worker process once it is ready: its liveness thread (`worker.liveness`: the liveness row
  /readyz counts, the sweep for abandoned jobs and lost messages, the check that its supervisor still lives),
  stopped with the worker. The main process never imports torch.
"""

from __future__ import annotations

import logging
import os
import signal
from functools import partial

from billiard.common import reset_signals
from celery.signals import task_postrun, task_prerun, worker_process_init, worker_ready, worker_shutdown

from store.db import SessionLocal, get_engine
from store.queues import QUEUES, send_job
from store.settings import get_settings
from worker.events import hooks as _event_hooks  # noqa: F401  (webhook dispatcher + MLflow exporter threads)
from worker.liveness import MainProcessWatch

log = logging.getLogger(__name__)
_watch: list[MainProcessWatch] = []
_in_pool_child = False  # the SIGTERM choices below are for a prefork pool child, never a main process


@worker_process_init.connect
def _prepare_pool_child(**_) -> None:
    global _in_pool_child
    _in_pool_child = True
    get_engine().dispose(close=False)
    be_polite(get_settings())
    _ignore_sigterm()


# A worker is stopped by SIGTERM to its whole process group (`worker.supervisor`), so its pool child gets one
# too. An idle child has nothing to lose and leaves when the main process's warm shutdown closes the pool (exit
# 0); dying of the signal instead made the pool report "ForkPoolWorker-1 exited with signal 15" as an ERROR on
# every normal stop. A child running a job still stops at once (billiard's own handler): the attempt is
# abandoned and requeued by the next worker's sweep.
@task_prerun.connect
def _stop_on_sigterm_while_running(**_) -> None:
    if not _in_pool_child:
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    reset_signals()  # billiard's SIGTERM handler (it leaves an ignored signal alone, hence SIG_DFL first)


@task_postrun.connect
def _ignore_sigterm(**_) -> None:
    if _in_pool_child:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


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
