"""The compare page's reads, done by the database: how many jobs each checkpoint has, which scores its
succeeded jobs carry, and the newest of them with only the columns the chart and table show and the one chosen
score pulled out of the evaluation JSON in SQL (not every job's whole row and evaluation parsed in Python).
Every query is filtered by the caller's tenant, like `api.services.owned`."""

from __future__ import annotations

from sqlalchemy import Float, func, literal, select
from sqlalchemy.orm import Session

from api.auth import Caller
from api.ui.views import SCORES
from store.models import Checkpoint, Job

MAX_CHOICES = 200  # checkpoints offered in the selector (those with the newest jobs)
_PATHS = {key: path for key, _, path in SCORES}


def score_column(key: str | None):
    """One score of `views.SCORES` as a SQL expression on ``jobs.evaluation`` (NULL where absent)."""
    if key is None:
        return literal(None, Float)
    return Job.evaluation[_PATHS[key]].as_float()


def checkpoint_choices(session: Session, caller: Caller) -> list[dict]:
    """The caller's checkpoints that have jobs, newest job first, with their job counts; the counting is one
    grouped scan of the (tenant, checkpoint, …) index."""
    per_checkpoint = (
        select(Job.checkpoint_id, func.count().label("jobs"), func.max(Job.created_at).label("newest"))
        .where(Job.tenant_id == caller.tenant_id, Job.checkpoint_id.is_not(None))
        .group_by(Job.checkpoint_id)
        .subquery()
    )
    rows = session.execute(
        select(Checkpoint.id, Checkpoint.filename, per_checkpoint.c.jobs)
        .join(per_checkpoint, per_checkpoint.c.checkpoint_id == Checkpoint.id)
        .where(Checkpoint.tenant_id == caller.tenant_id)
        .order_by(per_checkpoint.c.newest.desc())
        .limit(MAX_CHOICES)
    ).all()
    return [{"checkpoint": row, "jobs": row.jobs} for row in rows]


def _succeeded_of(caller: Caller, checkpoint_id: str) -> tuple:
    return (Job.tenant_id == caller.tenant_id, Job.checkpoint_id == checkpoint_id, Job.state == "succeeded")


def scores_present(session: Session, caller: Caller, checkpoint_id: str) -> tuple[int, list[tuple[str, str]]]:
    """How many succeeded jobs the checkpoint has, and the (key, label) of every score at least one of them
    carries: one aggregate query."""
    counts = session.execute(
        select(func.count(), *(func.count(score_column(key)) for key, _, _ in SCORES)).where(
            *_succeeded_of(caller, checkpoint_id)
        )
    ).one()
    total, present = counts[0], counts[1:]
    return total, [(key, label) for (key, label, _), found in zip(SCORES, present, strict=True) if found]


def newest_succeeded(session: Session, caller: Caller, checkpoint_id: str, metric: str | None, limit: int) -> list:
    """The newest ``limit`` succeeded jobs of the checkpoint: id, state, target and true ratio, options, age
    and the ``metric`` score (``score``), newest first."""
    return list(
        session.execute(
            select(
                Job.id,
                Job.state,
                Job.target_ratio,
                Job.true_ratio,
                Job.options,
                Job.created_at,
                score_column(metric).label("score"),
            )
            .where(*_succeeded_of(caller, checkpoint_id))
            .order_by(Job.created_at.desc(), Job.id)
            .limit(limit)
        ).all()
    )
