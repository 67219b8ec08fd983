"""Resumable uploads, the server side of tus 1.0 (core protocol plus the creation, expiration, termination and
checksum extensions; https://tus.io/protocols/resumable-upload).

An upload is a row (`ResumableUpload`) and a part file ``<data_dir>/tmp/tus-<id>.part``. Each ``PATCH`` appends
at the row's offset, written and hashed in threads while the body is still arriving
(`api.storage.BlockWriter`: constant memory whatever the size), fsynced, and commits the new offset; a dropped
connection keeps the bytes that arrived unless the request carried an ``Upload-Checksum`` (then the whole
request's bytes are unverifiable and are cut off again, as the checksum extension asks). On the last byte
the part file is renamed into place and becomes a checkpoint or dataset through the same `record_upload` as a
plain upload, with the upload's id as its id.

The file's SHA-256 is carried across ``PATCH`` requests in this process (`_HASHERS`); a process that did not
see every byte (a restart, another API process) reads the part file once at the end instead.

Two ``PATCH`` requests on one upload never write at once: each holds an exclusive ``flock`` on the part file
for its duration, and the other gets a 409.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import os
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.auth import Caller
from api.deps import AppContext
from api.errors import Conflict, Gone, PayloadTooLarge, ServiceError, Unprocessable
from api.schemas import CalibrationSpecIn
from api.services import checkpoints, datasets
from api.services.limits import check_quota
from api.services.owned import get_owned
from api.services.uploads import too_large_message
from api.storage import WRITE_BUFFER_BYTES, BlockWriter, StoredFile
from store.models import Checkpoint, Dataset, ResumableUpload, utcnow

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,expiration,termination,checksum"
CHECKSUM_ALGORITHMS = ("sha256",)
KINDS = {"checkpoint": Checkpoint, "dataset": Dataset}
_HASHERS: OrderedDict[str, tuple[int, hashlib._Hash]] = OrderedDict()  # upload id -> (offset, sha256 so far)
_MAX_HASHERS = 256


class BadRequest(ServiceError):
    status_code = 400


class PreconditionFailed(ServiceError):
    status_code = 412


class UnsupportedMediaType(ServiceError):
    status_code = 415


class ChecksumMismatch(ServiceError):
    """tus checksum extension: the request's bytes do not match its ``Upload-Checksum``; they were dropped."""

    status_code = 460


def part_path(ctx: AppContext, upload_id: str) -> Path:
    return ctx.storage.tmp_dir / f"tus-{upload_id}.part"


def check_version(tus_resumable: str | None) -> None:
    if tus_resumable != TUS_VERSION:
        raise PreconditionFailed(
            f"send the header 'Tus-Resumable: {TUS_VERSION}' (got {tus_resumable!r}); this server speaks tus "
            f"{TUS_VERSION}",
            headers={"Tus-Version": TUS_VERSION},
        )


def parse_metadata(header: str | None) -> dict[str, str]:
    """``Upload-Metadata``: comma-separated ``key base64(value)`` pairs."""
    result: dict[str, str] = {}
    for item in (header or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, _, encoded = item.partition(" ")
        try:
            result[key] = base64.b64decode(encoded.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise BadRequest(
                f"Upload-Metadata value of {key!r} is not base64 of UTF-8 text; encode each value with base64"
            ) from exc
    return result


@dataclass(frozen=True)
class NewUpload:
    kind: str
    filename: str
    name: str | None
    spec: CalibrationSpecIn | None


def validate_metadata(meta: dict[str, str]) -> NewUpload:
    """What the upload becomes, checked before any byte is sent (a bad spec fails now, not after 4 GB)."""
    kind = meta.get("kind", "")
    if kind not in KINDS:
        raise Unprocessable(f"Upload-Metadata 'kind' must be one of {sorted(KINDS)} (got {kind!r})")
    filename = meta.get("filename", "")
    if not 1 <= len(filename) <= 255:
        raise Unprocessable(
            "Upload-Metadata 'filename' is required (1-255 characters); its suffix tells the loader the format"
        )
    name = meta.get("name") or None
    if name is not None and len(name) > 200:
        raise Unprocessable("Upload-Metadata 'name' is longer than 200 characters")
    if kind == "checkpoint":
        if name or meta.get("spec"):
            raise Unprocessable("'name' and 'spec' only apply to datasets; leave them out for a checkpoint")
        return NewUpload(kind, filename, None, None)
    return NewUpload(kind, filename, name, datasets.parse_spec(meta.get("spec")))


def create(ctx: AppContext, session: Session, caller: Caller, length: int, new: NewUpload) -> ResumableUpload:
    sweep_expired(ctx, session)
    if length <= 0:
        raise Unprocessable("Upload-Length must be a positive number of bytes")
    if length > ctx.settings.max_upload_bytes:
        raise PayloadTooLarge(too_large_message(ctx.settings.max_upload_bytes, length))
    check_quota(session, caller, ctx.settings, length)
    row = ResumableUpload(
        tenant_id=caller.tenant_id,
        kind=new.kind,
        filename=new.filename,
        name=new.name,
        spec=new.spec.model_dump(mode="json", exclude_unset=True) if new.spec is not None else None,
        length=length,
        offset=0,
        expires_at=utcnow() + timedelta(seconds=ctx.settings.upload_expiry_s),
    )
    session.add(row)
    session.flush()
    ctx.storage.tmp_dir.mkdir(parents=True, exist_ok=True)
    part_path(ctx, row.id).touch()
    session.commit()
    return row


def sweep_expired(ctx: AppContext, session: Session) -> int:
    """Delete every upload (any tenant's) untouched past its expiry: its part file and its row. A finished
    upload's checkpoint or dataset stays; only the record of how it arrived goes."""
    expired = session.execute(select(ResumableUpload).where(ResumableUpload.expires_at < utcnow())).scalars().all()
    for row in expired:
        part_path(ctx, row.id).unlink(missing_ok=True)
        _HASHERS.pop(row.id, None)
    if expired:
        session.execute(delete(ResumableUpload).where(ResumableUpload.id.in_([r.id for r in expired])))
        session.commit()
    return len(expired)


def get(ctx: AppContext, session: Session, caller: Caller, upload_id: str) -> ResumableUpload:
    """The caller's upload; 410 (and deleted) once it has expired."""
    row = get_owned(session, ResumableUpload, caller, upload_id, "upload", "create one with POST /v1/uploads")
    if row.expires_at < utcnow():
        sweep_expired(ctx, session)
        raise Gone(
            f"upload {upload_id!r} expired after {ctx.settings.upload_expiry_s:g} s without activity and "
            "was deleted; start a new upload"
        )
    if row.resource_id is None and row.offset == row.length:
        # Every byte arrived; the process that recorded the checkpoint or dataset may have stopped before it
        # marked the upload complete.
        if session.get(KINDS[row.kind], row.id) is not None:
            row.resource_id = row.id
            session.commit()
    return row


def terminate(ctx: AppContext, session: Session, caller: Caller, upload_id: str) -> None:
    row = get(ctx, session, caller, upload_id)
    with _locked(part_path(ctx, row.id), missing_ok=True):
        part_path(ctx, row.id).unlink(missing_ok=True)
        session.delete(row)
        session.commit()
    _HASHERS.pop(upload_id, None)


def resource_url(row: ResumableUpload) -> str | None:
    return f"/v1/{row.kind}s/{row.resource_id}" if row.resource_id else None


def parse_checksum(header: str | None) -> bytes | None:
    """``Upload-Checksum: sha256 <base64 digest>`` → the digest."""
    if not header:
        return None
    algorithm, _, encoded = header.strip().partition(" ")
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise BadRequest(
            f"checksum algorithm {algorithm!r} is not supported; use one of {', '.join(CHECKSUM_ALGORITHMS)}"
        )
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error as exc:
        raise BadRequest("Upload-Checksum's digest is not base64") from exc
    if len(digest) != hashlib.sha256().digest_size:
        raise BadRequest("Upload-Checksum's sha256 digest must be 32 bytes (base64)")
    return digest


class _locked:
    """An exclusive, non-blocking ``flock`` on an upload's part file for the length of one request."""

    def __init__(self, path: Path, missing_ok: bool = False) -> None:
        self.path, self.missing_ok, self.fd = path, missing_ok, None

    def __enter__(self):
        try:
            self.fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            if self.missing_ok:
                return None
            raise
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(self.fd)
            raise Conflict(
                "another request is writing to this upload right now; wait for it, then HEAD the upload and "
                "resume from its Upload-Offset"
            ) from exc
        return self.fd

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock


async def append(
    ctx: AppContext,
    caller: Caller,
    upload_id: str,
    offset: int,
    checksum: bytes | None,
    chunks: AsyncIterator[bytes],
) -> ResumableUpload:
    """Append the body at ``offset`` (which must be the server's offset); finishes the upload on its last
    byte. Returns the row with its new offset (and ``resource_id`` once finished)."""
    row = await run_in_threadpool(_load, ctx, caller, upload_id)  # the caller's own upload (404 otherwise)
    with _locked(part_path(ctx, row.id), missing_ok=True) as fd:
        # Read again under the lock: a request that held it a moment ago may have moved the offset on.
        row = await run_in_threadpool(_load, ctx, caller, upload_id)
        if row.resource_id is not None:
            raise Conflict(f"upload {upload_id!r} is complete; it became {resource_url(row)}")
        if fd is None:
            raise Gone(f"upload {upload_id!r} lost its received bytes on the server; start a new upload")
        if offset != row.offset:
            raise Conflict(
                f"Upload-Offset {offset} does not match the server's offset {row.offset}; HEAD the upload and "
                "resume from the offset it reports"
            )
        new_offset = await _receive(ctx, row, fd, checksum, chunks)
        row = await run_in_threadpool(_save_offset, ctx, row.id, new_offset)
        if new_offset == row.length:
            row = await _finish(ctx, caller, row)
    return row


def _load(ctx: AppContext, caller: Caller, upload_id: str) -> ResumableUpload:
    with ctx.session_factory() as session:
        return get(ctx, session, caller, upload_id)


def _save_offset(ctx: AppContext, upload_id: str, offset: int) -> ResumableUpload:
    with ctx.session_factory() as session:
        row = session.get(ResumableUpload, upload_id)
        row.offset = offset
        row.expires_at = utcnow() + timedelta(seconds=ctx.settings.upload_expiry_s)
        session.commit()
        return row


async def _receive(ctx, row: ResumableUpload, fd: int, checksum: bytes | None, chunks) -> int:
    """Write the body at the row's offset; returns the new offset. On a checksum mismatch, or a broken
    request that carried a checksum, the file is cut back to where it was."""
    start, room = row.offset, row.length - row.offset
    os.ftruncate(fd, start)  # drop bytes of an earlier request that died before saving its offset
    cached = _HASHERS.get(row.id)
    if start == 0:
        file_hash = hashlib.sha256()  # the first bytes: hash the file on the way instead of reading it at the end
    else:
        file_hash = cached[1].copy() if cached is not None and cached[0] == start else None
    request_hash = hashlib.sha256() if checksum is not None else None
    async with BlockWriter(fd, start, [file_hash, request_hash]) as writer:
        try:
            async for chunk in chunks:
                if writer.received + len(chunk) > row.length:
                    raise Unprocessable(
                        f"the body goes past Upload-Length ({row.length} bytes; {room} left from offset {start}); "
                        "send only the remaining bytes"
                    )
                await writer.add(chunk)
            end = await writer.finish()
        except BaseException:
            await writer.__aexit__()  # the thread is done: `written` is final and nothing writes any more
            # Partial bytes cannot be verified against the request's checksum; without one they are kept.
            end = start if checksum is not None else writer.written
            os.ftruncate(fd, end)
            if end > start:
                _remember(row.id, end, file_hash)
                await run_in_threadpool(_save_offset, ctx, row.id, end)
            raise
    if request_hash is not None and request_hash.digest() != checksum:
        os.ftruncate(fd, start)
        raise ChecksumMismatch(
            f"the {end - start} bytes sent do not match Upload-Checksum (sha256); they were dropped. Resend them "
            f"from offset {start}"
        )
    _remember(row.id, end, file_hash)
    return end


def _remember(upload_id: str, offset: int, file_hash) -> None:
    if file_hash is None:
        _HASHERS.pop(upload_id, None)
        return
    _HASHERS[upload_id] = (offset, file_hash)
    _HASHERS.move_to_end(upload_id)
    while len(_HASHERS) > _MAX_HASHERS:
        _HASHERS.popitem(last=False)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(WRITE_BUFFER_BYTES):
            digest.update(block)
    return digest.hexdigest()


async def _finish(ctx: AppContext, caller: Caller, row: ResumableUpload) -> ResumableUpload:
    """Rename the part file into place and record it as a checkpoint or dataset with the upload's id."""
    part = part_path(ctx, row.id)
    cached = _HASHERS.pop(row.id, None)
    sha256 = cached[1].hexdigest() if cached is not None and cached[0] == row.length else None
    if sha256 is None:
        sha256 = await run_in_threadpool(_sha256_of, part)
    kind = checkpoints.KIND if row.kind == "checkpoint" else datasets.KIND
    path = ctx.storage.adopt(part, kind=kind, tenant_id=caller.tenant_id, object_id=row.id, filename=row.filename)
    stored = StoredFile(path=path, size_bytes=row.length, sha256=sha256)
    if row.kind == "checkpoint":
        await checkpoints.record(ctx, caller, stored, row.id, row.filename)
    else:
        spec = CalibrationSpecIn.model_validate(row.spec or {})
        await datasets.record(ctx, caller, stored, object_id=row.id, name=row.name, filename=row.filename, spec=spec)
    return await run_in_threadpool(_mark_complete, ctx, row.id)


def _mark_complete(ctx: AppContext, upload_id: str) -> ResumableUpload:
    with ctx.session_factory() as session:
        row = session.get(ResumableUpload, upload_id)
        row.resource_id = upload_id
        session.commit()
        return row
