"""The Celery main process's own thread: it reports the worker alive, sweeps for jobs that need help, and
stops the worker when the process that supervises it is gone.

* Every `Settings.worker_heartbeat_s` it writes its `WorkerHeartbeat` row (``host:pid``, node name, queues);
  /readyz counts workers seen within three of those intervals, so a killed worker stops counting within
  seconds. A clean stop deletes the row at once.
* At start and then every `Settings.sweep_interval_s`: running jobs whose attempt died go back to the queue
  (`worker.claims.requeue_abandoned`), and queued jobs whose broker message was lost are published again
  (`worker.recovery.LostMessages`). Every worker sweeps; conditional updates make them race safely.
* Under ``l2 serve`` or ``l2 worker`` (`Settings.supervisor_pid`), a parent that is gone (its pid is no
  longer our parent's: SIGKILLed, crashed) means nobody will stop or restart this worker, so it stops itself
  with a warm shutdown (the running job finishes; no new one is taken) instead of living on as an orphan.

Nothing here imports torch: this runs in the main process, beside Celery's consumer.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import delete, update

from store.models import WorkerHeartbeat, utcnow
from worker.claims import STALE_AFTER_S, owner_identity, requeue_abandoned
from worker.recovery import LostMessages

log = logging.getLogger(__name__)

# A worker's row stays this long after its last report before any worker deletes it (history for operators).
FORGET_AFTER = timedelta(days=1)
# How often the parent is checked, at most.
PARENT_CHECK_S = 1.0


def supervisor_gone(supervisor_pid: int, main_pid: int) -> bool:
    """From a pool child: is the Celery main process ``main_pid`` no longer run by ``supervisor_pid``? Its
    own watch shuts it down warm, but a message it fetches meanwhile still reaches the pool; the task asks
    this before taking the job. Linux reads the main process's parent from /proc; elsewhere the supervisor's
    pid is probed."""
    if not supervisor_pid:
        return False
    try:
        with open(f"/proc/{main_pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1]) != supervisor_pid
    except (OSError, ValueError, IndexError):
        try:
            os.kill(supervisor_pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False


class MainProcessWatch:
    def __init__(
        self,
        *,
        session_factory,
        settings,
        name: str,
        queues: list[str],
        enqueue: Callable[[str, str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session_factory = session_factory
        self.settings = settings
        self.name = name
        self.queues = list(queues)
        self.enqueue = enqueue
        self.clock = clock
        self.identity = owner_identity()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="l2-liveness", daemon=True)
        self._orphaned = False
        self.lost = LostMessages(
            session_factory,
            self.queues,
            broker_url=settings.broker_url,
            lost_after_s=settings.lost_message_after_s,
            enqueue=enqueue,
        )

    # -- lifecycle ----
    def start(self) -> MainProcessWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        try:
            with self.session_factory() as session:
                session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.id == self.identity))
                session.commit()
        except Exception:
            log.warning("could not remove this worker's liveness row", exc_info=True)

    # -- the loop ----
    def _run(self) -> None:
        next_beat = next_sweep = self.clock()
        tick = min(PARENT_CHECK_S, self.settings.worker_heartbeat_s)
        while not self._stop.is_set():
            now = self.clock()
            if now >= next_beat:
                self._guarded("liveness report", self.report_alive)
                next_beat = now + self.settings.worker_heartbeat_s
            if now >= next_sweep:
                self._guarded("sweep", self.sweep)
                next_sweep = now + self.settings.sweep_interval_s
            self.check_parent()
            self._stop.wait(tick)

    def _guarded(self, what: str, action: Callable[[], object]) -> None:
        try:
            action()
        except Exception:  # the database may be restarting; the next round retries
            log.warning("%s failed; retrying", what, exc_info=True)

    def report_alive(self) -> None:
        now = utcnow()
        with self.session_factory() as session:
            found = session.execute(
                update(WorkerHeartbeat).where(WorkerHeartbeat.id == self.identity).values(last_seen=now)
            ).rowcount
            if not found:
                session.add(
                    WorkerHeartbeat(
                        id=self.identity, name=self.name, queues=",".join(self.queues), started_at=now, last_seen=now
                    )
                )
            session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.last_seen < now - FORGET_AFTER))
            session.commit()

    def sweep(self) -> None:
        requeued = requeue_abandoned(
            self.session_factory, self.queues, stale_after_s=STALE_AFTER_S, enqueue=self.enqueue
        )
        if requeued:
            log.warning("requeued %d abandoned job(s): %s", len(requeued), requeued)
        self.lost.sweep()

    def check_parent(self) -> None:
        supervisor = self.settings.supervisor_pid
        if not supervisor or self._orphaned or os.getppid() == supervisor:
            return
        self._orphaned = True
        log.error(
            "the process that runs this worker (pid %d) is gone; stopping after the running job (warm shutdown)",
            supervisor,
        )
        os.kill(os.getpid(), signal.SIGTERM)
