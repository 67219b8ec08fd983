"""The one task. It takes a job id and nothing else: the job row is the truth, reloaded by the pipeline.

Only transient infrastructure errors are retried (the database went away, a lock timed out); everything about
the job itself (bad checkpoint, impossible target, out of memory) ends the job as ``failed`` inside the
pipeline with a message for the user, and retrying would fail the same way.
"""

from __future__ import annotations

import logging

from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError

from worker.celery_app import TASK_NAME, celery_app

log = logging.getLogger(__name__)

TRANSIENT_ERRORS = (OperationalError, DisconnectionError)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


@celery_app.task(name=TASK_NAME, bind=True, acks_late=True, max_retries=5)
def run_job(self, job_id) -> str:
    """Run job ``job_id`` to an end state; returns the outcome's name (for logs; results are not stored)."""
    from worker.pipeline import run_pipeline  # imports torch: only in the pool child that runs the job

    try:
        return run_pipeline(job_id)
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
