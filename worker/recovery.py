"""Queued jobs whose broker message was lost: published again.

A job is ``queued`` in the database and, separately, has a message in the broker. The two can part: Redis
restarted without the message on disk, the API process died between committing the row and publishing, a
worker died after fetching the message but before claiming the job (the SQL broker never hands a fetched
message out again). Such a job would wait forever. The sweep publishes it again when it has been queued for
`Settings.lost_message_after_s` since it was last published and no waiting message names it, in two sweeps at
least ``confirm_s`` apart: a message a worker has just fetched is no longer waiting, but its job is claimed
(``running``) within moments, so one look alone would mistake it for lost. The claim makes a duplicate
harmless all the same (the second delivery finds the job running or ended and does nothing).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import select, update

from store.job_states import record_event
from store.models import Job, utcnow
from store.queues import waiting_job_ids

log = logging.getLogger(__name__)

# Two sightings of a job without a message at least this far apart make it lost (see the module docstring).
CONFIRM_S = 10.0


class LostMessages:
    """Finds and republishes lost jobs on ``queues``; keep one per process, since it remembers what the
    previous sweep saw."""

    def __init__(
        self,
        session_factory,
        queues: list[str] | tuple[str, ...],
        *,
        broker_url: str,
        lost_after_s: float,
        enqueue: Callable[[str, str], None],
        waiting: Callable[[str, list[str]], set[str] | None] = waiting_job_ids,
        confirm_s: float = CONFIRM_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session_factory = session_factory
        self.queues = list(queues)
        self.broker_url = broker_url
        self.lost_after_s = lost_after_s
        self.enqueue = enqueue
        self.waiting = waiting
        self.confirm_s = confirm_s
        self.clock = clock
        self._suspects: dict[str, float] = {}  # job id -> when first seen without a message

    def sweep(self) -> list:
        """Publish again every job found lost (see the module docstring); return their ids. With a broker that
        cannot be read (``waiting`` returns None) nothing is published: a duplicate per sweep would pile up
        behind a long queue."""
        missing = self._missing()
        now = self.clock()
        self._suspects = {job: self._suspects.get(job, now) for job in missing}
        republished = []
        with self.session_factory() as session:
            for job_id, (queue, last) in missing.items():
                if now - self._suspects[job_id] < self.confirm_s:
                    continue
                # Conditional on the row as read: of several sweeping workers, one publishes; the next sweep
                # waits another ``lost_after_s`` because updated_at moves on.
                moved = session.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.state == "queued", Job.updated_at == last)
                    .values(updated_at=utcnow())
                ).rowcount
                if not moved:
                    session.rollback()
                    continue
                message = f"no message for this job in queue {queue}; published again"
                record_event(session, job_id, "queued", "queued", message)
                session.commit()
                self.enqueue(job_id, queue)
                self._suspects.pop(job_id, None)
                republished.append(job_id)
                log.warning("job %s: its broker message was lost; published again on %s", job_id, queue)
        return republished

    def _missing(self) -> dict[str, tuple[str, object]]:
        """Jobs queued longer than ``lost_after_s`` that no waiting message names: id -> (queue, updated_at)."""
        before = utcnow() - timedelta(seconds=self.lost_after_s)
        with self.session_factory() as session:
            rows = session.execute(
                select(Job.id, Job.queue, Job.updated_at).where(
                    Job.state == "queued", Job.queue.in_(self.queues), Job.updated_at < before
                )
            ).all()
        if not rows:
            return {}
        present = self.waiting(self.broker_url, self.queues)
        if present is None:
            return {}
        return {str(job): (queue, last) for job, queue, last in rows if str(job) not in present}
