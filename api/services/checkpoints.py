"""Checkpoints: stored uploads of model files, owned by one tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.auth import Caller
from api.deps import AppContext
from api.errors import Conflict, NotFound
from api.models import Checkpoint, Job, new_id
from api.services.uploads import receive

KIND = "checkpoints"
ACTIVE_STATES = ("queued", "running")


async def upload(ctx: AppContext, caller: Caller, chunks: AsyncIterator[bytes], filename: str) -> Checkpoint:
    object_id = new_id()
    stored = await receive(
        ctx.storage,
        chunks,
        kind=KIND,
        tenant_id=caller.tenant_id,
        object_id=object_id,
        filename=filename,
        limit=ctx.settings.max_upload_bytes,
    )
    ctx.metrics.upload_bytes.labels(kind="checkpoint").inc(stored.size_bytes)

    def save() -> Checkpoint:
        with ctx.session_factory() as session:
            row = Checkpoint(
                id=object_id,
                tenant_id=caller.tenant_id,
                filename=filename,
                path=stored.path,
                size_bytes=stored.size_bytes,
                sha256=stored.sha256,
            )
            session.add(row)
            session.commit()
            return row

    try:
        return await run_in_threadpool(save)
    except BaseException:
        ctx.storage.delete_object(KIND, caller.tenant_id, object_id)
        raise


def get(session: Session, caller: Caller, checkpoint_id: str) -> Checkpoint:
    row = session.execute(
        select(Checkpoint).where(Checkpoint.id == checkpoint_id, Checkpoint.tenant_id == caller.tenant_id)
    ).scalar_one_or_none()
    if row is None:
        raise NotFound.of("checkpoint", checkpoint_id, "list yours with GET /v1/checkpoints")
    return row


def list_(session: Session, caller: Caller, limit: int, offset: int) -> tuple[list[Checkpoint], int]:
    where = Checkpoint.tenant_id == caller.tenant_id
    total = session.execute(select(func.count()).select_from(Checkpoint).where(where)).scalar_one()
    rows = (
        session.execute(
            select(Checkpoint)
            .where(where)
            .order_by(Checkpoint.created_at.desc(), Checkpoint.id)
            .limit(limit)
            .offset(offset)
        )
        .scalars()
        .all()
    )
    return list(rows), total


def delete(ctx: AppContext, session: Session, caller: Caller, checkpoint_id: str) -> None:
    row = get(session, caller, checkpoint_id)
    active = session.execute(
        select(Job.id).where(Job.checkpoint_id == row.id, Job.state.in_(ACTIVE_STATES)).limit(1)
    ).scalar_one_or_none()
    if active is not None:
        raise Conflict(
            f"checkpoint {checkpoint_id!r} is used by job {active!r}, which has not finished; cancel "
            "it (POST /v1/jobs/{id}/cancel) or wait, then delete"
        )
    session.delete(row)
    session.commit()
    ctx.storage.delete_object(KIND, caller.tenant_id, row.id)
