"""Datasets: calibration or evaluation data, uploaded (an archive or tensor file) or registered by a server
path that must resolve inside `Settings.allowed_data_roots` (symlinks and ``..`` are resolved first, so
neither can escape a root)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.auth import Caller
from api.deps import AppContext
from api.errors import Conflict, Forbidden, NotFound, Unprocessable
from api.models import Dataset, Job, new_id
from api.schemas import CalibrationSpecIn, DatasetCreate
from api.services.uploads import receive

KIND = "datasets"
ACTIVE_STATES = ("queued", "running")


def parse_spec(text: str | None) -> CalibrationSpecIn:
    """The ``spec`` query parameter of an upload: a JSON object of calibration settings."""
    if not text:
        return CalibrationSpecIn()
    try:
        return CalibrationSpecIn.model_validate(json.loads(text))
    except json.JSONDecodeError as exc:
        raise Unprocessable(
            f"spec is not valid JSON ({exc.msg} at position {exc.pos}); send a JSON object such "
            'as {"kind": "images", "resize": 256, "crop": 224}'
        ) from exc
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in exc.errors())
        raise Unprocessable(f"invalid calibration spec: {problems}") from exc


def _spec_dict(spec: CalibrationSpecIn) -> dict:
    """Only what the client set: the library's own defaults apply to the rest when the worker reads the data
    (the defaults copied into `CalibrationSpecIn` serve validation only and could drift)."""
    return spec.model_dump(mode="json", exclude_unset=True)


async def upload(
    ctx: AppContext,
    caller: Caller,
    chunks: AsyncIterator[bytes],
    *,
    name: str | None,
    filename: str,
    spec: CalibrationSpecIn,
) -> Dataset:
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
    ctx.metrics.upload_bytes.labels(kind="dataset").inc(stored.size_bytes)

    def save() -> Dataset:
        with ctx.session_factory() as session:
            row = Dataset(
                id=object_id,
                tenant_id=caller.tenant_id,
                name=name or filename,
                source="upload",
                path=stored.path,
                filename=filename,
                size_bytes=stored.size_bytes,
                sha256=stored.sha256,
                spec=_spec_dict(spec),
            )
            session.add(row)
            session.commit()
            return row

    try:
        return await run_in_threadpool(save)
    except BaseException:
        ctx.storage.delete_object(KIND, caller.tenant_id, object_id)
        raise


def resolve_allowed_path(raw: str, roots: list[Path]) -> Path:
    if not roots:
        raise Forbidden(
            "registering server paths is disabled on this server (L2_ALLOWED_DATA_ROOTS is empty); "
            "upload the data with POST /v1/datasets/upload instead"
        )
    path = Path(raw)
    if not path.is_absolute():
        raise Unprocessable(f"path {raw!r} must be absolute (inside one of the allowed data roots)")
    resolved = path.resolve()
    if not any(resolved == root or root in resolved.parents for root in roots):
        raise Forbidden(
            f"path {raw!r} is outside the server's allowed data roots "
            f"({', '.join(map(str, roots))}); move the data there or upload it"
        )
    if not resolved.exists():
        raise Unprocessable(f"path {raw!r} does not exist on the server")
    return resolved


def register(session: Session, caller: Caller, body: DatasetCreate, roots: list[Path]) -> Dataset:
    resolved = resolve_allowed_path(body.path, roots)
    row = Dataset(
        tenant_id=caller.tenant_id,
        name=body.name,
        source="path",
        path=str(resolved),
        filename=resolved.name,
        size_bytes=resolved.stat().st_size if resolved.is_file() else None,
        sha256=None,
        spec=_spec_dict(body.spec),
    )
    session.add(row)
    session.commit()
    return row


def get(session: Session, caller: Caller, dataset_id: str) -> Dataset:
    row = session.execute(
        select(Dataset).where(Dataset.id == dataset_id, Dataset.tenant_id == caller.tenant_id)
    ).scalar_one_or_none()
    if row is None:
        raise NotFound.of("dataset", dataset_id, "list yours with GET /v1/datasets")
    return row


def list_(session: Session, caller: Caller, limit: int, offset: int) -> tuple[list[Dataset], int]:
    where = Dataset.tenant_id == caller.tenant_id
    total = session.execute(select(func.count()).select_from(Dataset).where(where)).scalar_one()
    rows = (
        session.execute(
            select(Dataset)
            .where(where)
            .order_by(Dataset.created_at.desc(), Dataset.id)
            .limit(limit)
            .offset(offset)
        )
        .scalars()
        .all()
    )
    return list(rows), total


def delete(ctx: AppContext, session: Session, caller: Caller, dataset_id: str) -> None:
    """Delete the row, and the file when it was uploaded (registered server data is never touched)."""
    row = get(session, caller, dataset_id)
    active = session.execute(
        select(Job.id)
        .where(or_(Job.dataset_id == row.id, Job.eval_dataset_id == row.id), Job.state.in_(ACTIVE_STATES))
        .limit(1)
    ).scalar_one_or_none()
    if active is not None:
        raise Conflict(
            f"dataset {dataset_id!r} is used by job {active!r}, which has not finished; cancel it or "
            "wait, then delete"
        )
    source = row.source
    session.delete(row)
    session.commit()
    if source == "upload":
        ctx.storage.delete_object(KIND, caller.tenant_id, row.id)
