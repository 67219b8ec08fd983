"""Progress of a running job, written to its row: what `GET /v1/jobs/{id}` shows while the optimizer works.

`ProgressWriter` receives every `ProgressEvent` the compressor emits (one per iteration) but writes at most
one row update per ``min_interval_s``, plus one on every phase change (and a `JobEvent` naming the new phase),
so a fast optimizer does not turn into a database benchmark. `Heartbeat` runs beside the job in a thread: it
touches ``updated_at`` so other workers can tell a live attempt from a dead one, and reads
``cancel_requested`` so the compressor's ``should_cancel`` is a memory read, not a query per iteration.

Progress of the whole job (the column ``progress``, 0..1) maps the compressor's fraction into a span of the
pipeline: loading before it, writing and evaluating the artifact after it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError

from compression_core.progress import ProgressEvent
from store.job_states import record_event, still_claimed_by
from store.models import Job, JobLossPoint, utcnow
from store.outbox import emit

log = logging.getLogger(__name__)

# Least seconds between two job.progress webhook events of one job (endpoints get at most one per 5 s too).
PROGRESS_EVENT_INTERVAL_S = 5.0
# The compressor's fraction 0..1 becomes this span of the job's progress.
COMPRESS_SPAN = (0.05, 0.95)
# Below this fraction an ETA extrapolates from too little and jumps around; report none.
_MIN_FRACTION_FOR_ETA = 0.02


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class ProgressWriter:
    """Callable passed to `compress(progress=...)`. Owns no session: each write is a short transaction,
    guarded by the claim (``worker`` and ``attempts``) so a stale attempt cannot overwrite a newer one's
    progress."""

    def __init__(
        self,
        job_id,
        owner: str,
        attempt: int,
        session_factory: Callable,
        *,
        min_interval_s: float = 1.0,
        span: tuple[float, float] = COMPRESS_SPAN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job_id = job_id
        self.owner = owner
        self.attempt = attempt
        self.session_factory = session_factory
        self.min_interval_s = float(min_interval_s)
        self.span = span
        self.clock = clock
        self.started = clock()
        self.phase: str | None = None
        self._last_write = -math.inf
        self._last_progress_event = -math.inf
        self.writes = 0
        self.failed_writes = 0

    def __call__(self, event: ProgressEvent) -> None:
        now = self.clock()
        phase_changed = event.phase != self.phase
        final = event.fraction >= 1.0
        if not (phase_changed or final or now - self._last_write >= self.min_interval_s):
            return
        lo, hi = self.span
        fraction = min(max(float(event.fraction), 0.0), 1.0)
        values = {
            "phase": event.phase,
            "progress": lo + (hi - lo) * fraction,
            "eta_seconds": self.eta_seconds(fraction, now),
            "latest_losses": {
                k: v for k, v in ((k, _finite(v)) for k, v in event.losses.items()) if v is not None
            }
            or None,
            "updated_at": utcnow(),
        }
        if event.estimated_ratio is not None:
            values["estimated_ratio"] = _finite(event.estimated_ratio)
        message = None
        if phase_changed:
            message = event.message or f"phase {event.phase}"
        self.phase = event.phase
        self._last_write = now
        self.write(values, message)

    def eta_seconds(self, fraction: float, now: float) -> float | None:
        """Remaining seconds of the compressor's run, extrapolated linearly from the elapsed time."""
        if fraction < _MIN_FRACTION_FOR_ETA:
            return None
        if fraction >= 1.0:
            return 0.0
        elapsed = now - self.started
        return round(elapsed / fraction * (1.0 - fraction), 1)

    def set_phase(self, phase: str, progress: float, message: str) -> None:
        """A pipeline phase outside the compressor (loading, writing, evaluating): always written."""
        self.phase = phase
        self._last_write = self.clock()
        self.write({"phase": phase, "progress": progress, "updated_at": utcnow()}, message)

    def write(self, values: dict, event_message: str | None) -> None:
        """Best effort: progress is for people watching. A database hiccup must not abort a long compression
        (the heartbeat and the final result write are what matter), so errors are logged and skipped."""
        try:
            self._write(values, event_message)
        except SQLAlchemyError:
            self.failed_writes += 1
            log.warning("progress write of job %s failed; continuing", self.job_id, exc_info=True)

    def _write(self, values: dict, event_message: str | None) -> None:
        with self.session_factory() as session:
            result = session.execute(
                update(Job).where(*still_claimed_by(self.job_id, self.owner, self.attempt)).values(**values)
            )
            if result.rowcount and values.get("latest_losses"):  # the web page's loss curves
                session.add(
                    JobLossPoint(
                        job_id=self.job_id,
                        phase=values.get("phase"),
                        progress=values["progress"],
                        estimated_ratio=values.get("estimated_ratio"),
                        losses=values["latest_losses"],
                    )
                )
            if result.rowcount and event_message:
                record_event(session, self.job_id, "running", values.get("phase"), event_message[:1000])
            if result.rowcount and self.clock() - self._last_progress_event >= PROGRESS_EVENT_INTERVAL_S:
                emit(session, self.job_id, "job.progress")  # webhook event, throttled (store.outbox)
                self._last_progress_event = self.clock()
            session.commit()
        self.writes += 1


class Heartbeat:
    """Background thread of a running attempt: every ``interval_s`` it touches ``updated_at`` (liveness, see
    `worker.claims`) and refreshes the cancellation flag. Use as a context manager around the job's work.

    ``should_cancel`` reads the flag the thread keeps, so the optimizer's per-iteration check costs nothing
    and the database sees at most one query per ``interval_s`` however fast the iterations are. A cancel is
    therefore noticed within about ``interval_s`` plus one iteration.
    """

    def __init__(
        self, job_id, owner: str, attempt: int, session_factory: Callable, interval_s: float = 1.0
    ) -> None:
        self.job_id = job_id
        self.owner = owner
        self.attempt = attempt
        self.session_factory = session_factory
        self.interval_s = interval_s
        self._cancel = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"l2-heartbeat-{job_id}", daemon=True)
        self.lost = False  # another attempt took the job over (our claim no longer matches the row)

    def __enter__(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5 * self.interval_s + 5)

    def should_cancel(self) -> bool:
        return self._cancel.is_set() or self.lost

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
            except Exception:  # a transient database error must not kill the job; the next beat retries
                log.warning("heartbeat of job %s failed", self.job_id, exc_info=True)

    def beat(self) -> None:
        with self.session_factory() as session:
            row = session.execute(
                update(Job)
                .where(*still_claimed_by(self.job_id, self.owner, self.attempt))
                .values(updated_at=utcnow())
                .returning(Job.cancel_requested)
            ).first()
            session.commit()
        if row is None:
            self.lost = True
            log.warning(
                "job %s is no longer claimed by %s (attempt %s); stopping",
                self.job_id,
                self.owner,
                self.attempt,
            )
        elif row[0]:
            self._cancel.set()
