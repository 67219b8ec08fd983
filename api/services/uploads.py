"""Streaming an upload to storage with the size limit enforced before and while reading, then saving the row
that records it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeVar

from starlette.concurrency import run_in_threadpool

from api.auth import Caller
from api.deps import AppContext
from api.errors import PayloadTooLarge, Unprocessable
from api.services.limits import quota_left, quota_message
from api.storage import EmptyUpload, LocalStorage, StoredFile, UploadTooLarge
from store.models import new_id

Row = TypeVar("Row")


def check_declared_length(content_length: str | None, limit: int) -> None:
    """Refuse at once when the declared body is already over the limit (nothing is read or written)."""
    if content_length is None:
        return
    try:
        declared = int(content_length)
    except ValueError as exc:
        raise Unprocessable(
            f"Content-Length {content_length!r} is not a number", loc=("header", "content-length")
        ) from exc
    if declared > limit:
        raise PayloadTooLarge(too_large_message(limit, declared))


def too_large_message(limit: int, size: int | None = None) -> str:
    got = f" ({size} bytes declared)" if size is not None else ""
    return (
        f"upload is larger than the server's limit of {limit} bytes{got}; nothing was stored. Use a smaller "
        "file, or ask the operator to raise L2_MAX_UPLOAD_BYTES"
    )


async def receive(
    storage: LocalStorage,
    chunks: AsyncIterator[bytes],
    *,
    kind: str,
    tenant_id: str,
    object_id: str,
    filename: str,
    limit: int,
    too_large: str | None = None,
) -> StoredFile:
    try:
        return await storage.save_stream(
            chunks, kind=kind, tenant_id=tenant_id, object_id=object_id, filename=filename, max_bytes=limit
        )
    except UploadTooLarge as exc:
        raise PayloadTooLarge(too_large or too_large_message(limit)) from exc
    except EmptyUpload as exc:
        raise Unprocessable(str(exc), loc=("body",)) from exc


async def store_upload(
    ctx: AppContext,
    caller: Caller,
    chunks: AsyncIterator[bytes],
    *,
    kind: str,
    model: type[Row],
    filename: str,
    metric_kind: str,
    **columns,
) -> Row:
    """Store the upload under a new id (cut off at the size limit or the tenant's remaining stored-bytes
    quota, whichever is smaller), then save the row that records it (`record_upload`)."""
    object_id = new_id()
    limit, too_large = ctx.settings.max_upload_bytes, None
    left = await run_in_threadpool(_quota_left, ctx, caller)
    if left is not None and left < limit:
        limit, too_large = left, quota_message(ctx.settings, left)
    stored = await receive(
        ctx.storage,
        chunks,
        kind=kind,
        tenant_id=caller.tenant_id,
        object_id=object_id,
        filename=filename,
        limit=limit,
        too_large=too_large,
    )
    return await record_upload(
        ctx,
        caller,
        stored,
        object_id=object_id,
        kind=kind,
        model=model,
        filename=filename,
        metric_kind=metric_kind,
        **columns,
    )


def _quota_left(ctx: AppContext, caller: Caller) -> int | None:
    with ctx.session_factory() as session:
        return quota_left(session, caller, ctx.settings)


async def record_upload(
    ctx: AppContext,
    caller: Caller,
    stored: StoredFile,
    *,
    object_id: str,
    kind: str,
    model: type[Row],
    filename: str,
    metric_kind: str,
    **columns,
) -> Row:
    """Save the caller's row of ``model`` that records a stored file (its id, name, path, size and SHA-256)
    with ``columns`` besides; plain and resumable uploads both end here. If the row cannot be saved (or the
    request is cancelled meanwhile) the file is deleted again, so no file is left on disk without a row."""
    ctx.metrics.upload_bytes.labels(kind=metric_kind).inc(stored.size_bytes)

    def save() -> Row:
        with ctx.session_factory() as session:
            row = model(
                id=object_id,
                tenant_id=caller.tenant_id,
                filename=filename,
                path=stored.path,
                size_bytes=stored.size_bytes,
                sha256=stored.sha256,
                **columns,
            )
            session.add(row)
            session.commit()
            return row

    try:
        return await run_in_threadpool(save)
    except BaseException:
        ctx.storage.delete_object(kind, caller.tenant_id, object_id)
        raise
