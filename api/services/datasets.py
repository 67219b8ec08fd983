"""Datasets: calibration or evaluation data, uploaded (an archive or tensor file) or registered by a server
path that must resolve inside `Settings.allowed_data_roots` (symlinks and ``..`` are resolved first, so
neither can escape a root)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy import or_
from sqlalchemy.orm import Session

from api.auth import Caller
from api.deps import AppContext
from api.errors import Conflict, Forbidden, Unprocessable
from api.schemas import CalibrationSpecIn, DatasetCreate
from api.services.jobs import unfinished_job_using
from api.services.owned import get_owned, list_owned
from api.services.uploads import record_upload, store_upload
from api.storage import StoredFile
from store.models import Dataset, Job

KIND = "datasets"


def parse_spec(text: str | None) -> CalibrationSpecIn:
    """The ``spec`` query parameter of an upload: a JSON object of calibration settings."""
    if not text:
        return CalibrationSpecIn()
    try:
        return CalibrationSpecIn.model_validate(json.loads(text))
    except json.JSONDecodeError as exc:
        raise Unprocessable(
            f"spec is not valid JSON ({exc.msg} at position {exc.pos}); send a JSON object such "
            'as {"kind": "images", "resize": 256, "crop": 224}',
            loc=("query", "spec"),
        ) from exc
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in exc.errors())
        raise Unprocessable(f"invalid calibration spec: {problems}", loc=("query", "spec")) from exc


def _spec_dict(spec: CalibrationSpecIn) -> dict:
    """Only what the client set: the library's own defaults apply to the rest when the worker reads the data
    (the defaults copied into `CalibrationSpecIn` serve validation only and could drift)."""
    return spec.model_dump(mode="json", exclude_unset=True)


def _with_tokenizer_checked(spec: CalibrationSpecIn, roots: list[Path]) -> CalibrationSpecIn:
    """A text dataset's tokenizer folder is a server path the worker reads: it obeys the same allowed data
    roots as registered data, and is stored resolved."""
    if spec.tokenizer is None:
        return spec
    folder = resolve_allowed_path(spec.tokenizer, roots)
    if not folder.is_dir():
        raise Unprocessable(f"tokenizer {spec.tokenizer!r} is not a folder; give the folder the tokenizer was saved to")
    return spec.model_copy(update={"tokenizer": str(folder)})


async def upload(
    ctx: AppContext,
    caller: Caller,
    chunks: AsyncIterator[bytes],
    *,
    name: str | None,
    filename: str,
    spec: CalibrationSpecIn,
) -> Dataset:
    spec = _with_tokenizer_checked(spec, ctx.settings.allowed_data_roots)
    return await store_upload(
        ctx,
        caller,
        chunks,
        kind=KIND,
        model=Dataset,
        filename=filename,
        metric_kind="dataset",
        name=name or filename,
        source="upload",
        spec=_spec_dict(spec),
    )


async def record(
    ctx: AppContext,
    caller: Caller,
    stored: StoredFile,
    *,
    object_id: str,
    name: str | None,
    filename: str,
    spec: CalibrationSpecIn,
) -> Dataset:
    """The dataset row of a file already in place (a finished resumable upload)."""
    return await record_upload(
        ctx,
        caller,
        stored,
        object_id=object_id,
        kind=KIND,
        model=Dataset,
        filename=filename,
        metric_kind="dataset",
        name=name or filename,
        source="upload",
        spec=_spec_dict(spec),
    )


def resolve_allowed_path(raw: str, roots: list[Path], data_dir: Path | None = None) -> Path:
    """``raw`` resolved, when it lies inside one of ``roots`` and outside ``data_dir``: the service's own
    folder holds every tenant's uploads and artifacts, so a root that contains it (the README's demo layout)
    must not let one tenant register another's files by path."""
    if not roots:
        raise Forbidden(
            "registering server paths is disabled on this server (L2_ALLOWED_DATA_ROOTS is empty); "
            "upload the data with POST /v1/datasets/upload instead"
        )
    path = Path(raw)
    if not path.is_absolute():
        raise Unprocessable(
            f"path {raw!r} must be absolute (inside one of the allowed data roots)", loc=("body", "path")
        )
    resolved = path.resolve()
    if not any(resolved == root or root in resolved.parents for root in roots):
        raise Forbidden(
            f"path {raw!r} is outside the server's allowed data roots "
            f"({', '.join(map(str, roots))}); move the data there or upload it"
        )
    if data_dir is not None:
        own = data_dir.resolve()
        if resolved == own or own in resolved.parents or resolved in own.parents:
            raise Forbidden(
                f"path {raw!r} is (or contains) the service's own data folder (L2_DATA_DIR, {own}), which holds "
                "every tenant's uploads and artifacts; register data kept outside it, or upload it"
            )
    if not resolved.exists():
        raise Unprocessable(f"path {raw!r} does not exist on the server", loc=("body", "path"))
    return resolved


def register(
    session: Session, caller: Caller, body: DatasetCreate, roots: list[Path], data_dir: Path | None = None
) -> Dataset:
    resolved = resolve_allowed_path(body.path, roots, data_dir)
    row = Dataset(
        tenant_id=caller.tenant_id,
        name=body.name,
        source="path",
        path=str(resolved),
        filename=resolved.name,
        size_bytes=resolved.stat().st_size if resolved.is_file() else None,
        sha256=None,
        spec=_spec_dict(_with_tokenizer_checked(body.spec, roots)),
    )
    session.add(row)
    session.commit()
    return row


def get(session: Session, caller: Caller, dataset_id: str) -> Dataset:
    return get_owned(session, Dataset, caller, dataset_id, "dataset", "list yours with GET /v1/datasets")


def list_(session: Session, caller: Caller, limit: int, offset: int) -> tuple[list[Dataset], int]:
    return list_owned(session, Dataset, caller, limit=limit, offset=offset)


def delete(ctx: AppContext, session: Session, caller: Caller, dataset_id: str) -> None:
    """Delete the row, and the file when it was uploaded (registered server data is never touched)."""
    row = get(session, caller, dataset_id)
    active = unfinished_job_using(session, or_(Job.dataset_id == row.id, Job.eval_dataset_id == row.id))
    if active is not None:
        raise Conflict(
            f"dataset {dataset_id!r} is used by job {active!r}, which has not finished; cancel it or wait, then delete"
        )
    source = row.source
    session.delete(row)
    session.commit()
    if source == "upload":
        ctx.storage.delete_object(KIND, caller.tenant_id, row.id)
