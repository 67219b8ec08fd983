"""Streaming an upload to storage with the size limit enforced before and while reading."""

from __future__ import annotations

from collections.abc import AsyncIterator

from api.errors import PayloadTooLarge, Unprocessable
from api.storage import EmptyUpload, LocalStorage, StoredFile, UploadTooLarge


def check_declared_length(content_length: str | None, limit: int) -> None:
    """Refuse at once when the declared body is already over the limit (nothing is read or written)."""
    if content_length is None:
        return
    try:
        declared = int(content_length)
    except ValueError as exc:
        raise Unprocessable(f"Content-Length {content_length!r} is not a number") from exc
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
) -> StoredFile:
    try:
        return await storage.save_stream(
            chunks, kind=kind, tenant_id=tenant_id, object_id=object_id, filename=filename, max_bytes=limit
        )
    except UploadTooLarge as exc:
        raise PayloadTooLarge(too_large_message(limit)) from exc
    except EmptyUpload as exc:
        raise Unprocessable(str(exc)) from exc
