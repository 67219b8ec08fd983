"""Checkpoints: stored uploads of model files, owned by one tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sqlalchemy.orm import Session

from api.auth import Caller
from api.deps import AppContext
from api.errors import Conflict
from api.services.jobs import unfinished_job_using
from api.services.owned import get_owned, list_owned
from api.services.uploads import record_upload, store_upload
from api.storage import StoredFile
from store.models import Checkpoint, Job

KIND = "checkpoints"


async def upload(ctx: AppContext, caller: Caller, chunks: AsyncIterator[bytes], filename: str) -> Checkpoint:
    return await store_upload(
        ctx, caller, chunks, kind=KIND, model=Checkpoint, filename=filename, metric_kind="checkpoint"
    )


async def record(ctx: AppContext, caller: Caller, stored: StoredFile, object_id: str, filename: str) -> Checkpoint:
    """The checkpoint row of a file already in place (a finished resumable upload)."""
    return await record_upload(
        ctx,
        caller,
        stored,
        object_id=object_id,
        kind=KIND,
        model=Checkpoint,
        filename=filename,
        metric_kind="checkpoint",
    )


def get(session: Session, caller: Caller, checkpoint_id: str) -> Checkpoint:
    return get_owned(session, Checkpoint, caller, checkpoint_id, "checkpoint", "list yours with GET /v1/checkpoints")


def list_(session: Session, caller: Caller, limit: int, offset: int) -> tuple[list[Checkpoint], int]:
    return list_owned(session, Checkpoint, caller, limit=limit, offset=offset)


def delete(ctx: AppContext, session: Session, caller: Caller, checkpoint_id: str) -> None:
    row = get(session, caller, checkpoint_id)
    active = unfinished_job_using(session, Job.checkpoint_id == row.id)
    if active is not None:
        raise Conflict(
            f"checkpoint {checkpoint_id!r} is used by job {active!r}, which has not finished; cancel "
            "it (POST /v1/jobs/{id}/cancel) or wait, then delete"
        )
    session.delete(row)
    session.commit()
    ctx.storage.delete_object(KIND, caller.tenant_id, row.id)
