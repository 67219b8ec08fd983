"""Queued jobs whose broker message was lost: published again.

A job is ``queued`` in the database and, separately, has a message in the broker. The two can part: Redis
restarted without the message on disk, the API process died between committing the row and publishing, a
worker died after fetching the message but before claiming the job (the SQL broker never hands a fetched
message out again). Such a job would wait forever. The sweep publishes it again when it has been queued for
`Settings.lost_message_after_s` since it was last published and no waiting message names it; the claim makes
a duplicate harmless (the second delivery finds the job running or ended and does nothing).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import select, update

from store.job_states import record_event
from store.models import Job, utcnow
from store.queues import waiting_job_ids

log = logging.getLogger(__name__)


def republish_lost(
    session_factory,
    queues: list[str] | tuple[str, ...],
    *,
    broker_url: str,
    lost_after_s: float,
    enqueue: Callable[[str, str], None],
    waiting: Callable[[str, list[str]], set[str] | None] = waiting_job_ids,
) -> list:
    """Publish again every job queued on ``queues`` for longer than ``lost_after_s`` (since its row last
    changed) that no waiting broker message names; return their ids. With a broker that cannot be read
    (``waiting`` returns None), nothing is published: a duplicate per sweep would pile up behind a long
    queue."""
    before = utcnow() - timedelta(seconds=lost_after_s)
    with session_factory() as session:
        rows = session.execute(
            select(Job.id, Job.queue, Job.updated_at).where(
                Job.state == "queued", Job.queue.in_(list(queues)), Job.updated_at < before
            )
        ).all()
    if not rows:
        return []
    present = waiting(broker_url, list(queues))
    if present is None:
        return []
    republished = []
    with session_factory() as session:
        for job_id, queue, last in rows:
            if str(job_id) in present:
                continue
            # Conditional on the row as read: of several sweeping workers, one publishes; the next sweep waits
            # another ``lost_after_s`` because updated_at moves on.
            moved = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == "queued", Job.updated_at == last)
                .values(updated_at=utcnow())
            ).rowcount
            if not moved:
                continue
            record_event(
                session, job_id, "queued", "queued", f"no message for this job in queue {queue}; published again"
            )
            session.commit()
            enqueue(job_id, queue)
            republished.append(job_id)
            log.warning("job %s: its broker message was lost; published again on %s", job_id, queue)
    return republished
