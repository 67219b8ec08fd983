"""The one task. It takes a job id and nothing else: the job row is the truth, reloaded by the pipeline.

Only transient infrastructure errors are retried (the database went away, a lock timed out); everything about
the job itself (bad checkpoint, impossible target, out of memory) ends the job as ``failed`` inside the
pipeline with a message for the user, and retrying would fail the same way.
"""

from __future__ import annotations

import logging
import os

from celery.exceptions import Reject

from store.db import SessionLocal, is_transient
from store.settings import get_settings
from worker.celery_app import TASK_NAME, celery_app
from worker.claims import STALE_AFTER_S, Outcome, claim_job
from worker.liveness import supervisor_gone
from worker.progress import Heartbeat

log = logging.getLogger(__name__)


@celery_app.task(name=TASK_NAME, bind=True, acks_late=True, max_retries=5)
def run_job(self, job_id) -> str:
    """Run job ``job_id`` to an end state; returns the outcome's name (for logs; results are not stored).

    The claim comes first, before torch is imported: the job shows ``running`` as soon as a worker has it, and
    the sweep for lost messages (`worker.recovery`) never mistakes a delivered job for a lost one while the
    pool child is still importing torch."""
    if supervisor_gone(get_settings().supervisor_pid, os.getppid()):
        # Orphaned (`l2 serve` or `l2 worker` was killed) and shutting down: the message goes back unclaimed,
        # for the worker that replaces this one.
        log.warning("job %s: this worker's supervisor is gone; leaving the job queued", job_id)
        raise Reject("supervisor gone", requeue=True)
    try:
        outcome, claim = claim_job(job_id, SessionLocal, stale_after_s=STALE_AFTER_S)
        if outcome is not Outcome.CLAIMED:
            log.info("job %s: nothing to do (%s)", job_id, outcome.value)
            return outcome.value
        # The claim is only alive while its heartbeat beats (other workers' sweeps requeue a silent attempt),
        # and importing torch takes seconds, on a busy machine a minute: beat meanwhile.
        with Heartbeat(claim.job_id, claim.owner, claim.attempt, SessionLocal, interval_s=1.0):
            # Imported here, not at the top: the pipeline imports torch, and this module is loaded by the Celery
            # main process too, which must stay free of torch (only the pool child that runs a job pays for it).
            from worker.pipeline import run_claimed
        return run_claimed(claim)
    except Exception as exc:
        if is_transient(exc):
            countdown = min(300, 5 * 2**self.request.retries)
            log.warning(
                "job %s: transient error (%s); retry %d in %d s",
                job_id,
                exc,
                self.request.retries + 1,
                countdown,
            )
            raise self.retry(exc=exc, countdown=countdown) from exc
        raise
