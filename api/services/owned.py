"""Reading the caller's own rows (checkpoints, datasets, jobs). Every lookup and listing here filters by the
caller's tenant, so one tenant's key never sees another tenant's rows, and a row of another tenant reads as
not found rather than forbidden (which would confirm that it exists)."""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.auth import Caller
from api.errors import NotFound

Row = TypeVar("Row")


def get_owned(
    session: Session, model: type[Row], caller: Caller, object_id: str, kind: str, hint: str
) -> Row:
    """The caller's row of ``model`` with this id; 404 naming ``kind`` and saying what to do (``hint``)."""
    row = session.execute(
        select(model).where(model.id == object_id, model.tenant_id == caller.tenant_id)
    ).scalar_one_or_none()
    if row is None:
        raise NotFound.of(kind, object_id, hint)
    return row


def owned_by_id(session: Session, model: type[Row], caller: Caller, ids) -> dict[str, Row]:
    """The caller's rows of ``model`` among ``ids`` (None entries ignored), by id, in one query; ids that are
    not the caller's are simply absent."""
    wanted = {object_id for object_id in ids if object_id}
    if not wanted:
        return {}
    rows = session.execute(select(model).where(model.id.in_(wanted), model.tenant_id == caller.tenant_id)).scalars()
    return {row.id: row for row in rows}


def list_owned(
    session: Session, model: type[Row], caller: Caller, *conditions, limit: int, offset: int, load=()
) -> tuple[list[Row], int]:
    """One page of the caller's rows matching ``conditions``, newest first (ties by id, so pages are stable),
    and how many match in all. ``load``: loader options (e.g. `load_only`) for a page that shows a few
    columns."""
    where = (model.tenant_id == caller.tenant_id, *conditions)
    total = session.execute(select(func.count()).select_from(model).where(*where)).scalar_one()
    rows = (
        session.execute(
            select(model)
            .options(*load)
            .where(*where)
            .order_by(model.created_at.desc(), model.id)
            .limit(limit)
            .offset(offset)
        )
        .scalars()
        .all()
    )
    return list(rows), total
