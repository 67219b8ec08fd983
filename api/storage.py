"""Local folder storage under ``data_dir``: uploads are streamed to a temporary file in chunks (never the
whole body in memory), hashed with SHA-256 on the way, cut off at a size limit, and moved to their final name
with an atomic rename, so a reader (the worker) never sees half a file and a refused upload leaves nothing
behind.

Layout (paths stored in the rows are relative to ``data_dir``, so the folder can be mounted elsewhere)::

    <data_dir>/checkpoints/<tenant>/<id>/<filename>
    <data_dir>/datasets/<tenant>/<id>/<filename>
    <data_dir>/artifacts/<tenant>/<job>.l2          (written by the worker)
    <data_dir>/tmp/                                 (uploads in progress)

The original file name is kept (sanitised) because the loaders infer the format from its suffix.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from starlette.concurrency import run_in_threadpool

WRITE_BUFFER_BYTES = 1 << 20
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class UploadTooLarge(Exception):
    """The body exceeded the size limit; nothing was kept."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"upload exceeds the limit of {limit} bytes")
        self.limit = limit


class EmptyUpload(Exception):
    """The body had no bytes."""


@dataclass(frozen=True)
class StoredFile:
    path: str  # relative to data_dir
    size_bytes: int
    sha256: str


def safe_filename(name: str | None, default: str = "upload.bin") -> str:
    """A file name without folders or odd characters that keeps the suffix(es) the loaders look at."""
    base = os.path.basename((name or "").replace("\\", "/")).strip()
    base = _UNSAFE.sub("_", base).lstrip(".")[:200]
    return base or default


def _component(value: str) -> str:
    if not value or value in (".", "..") or "/" in value or "\\" in value or "\x00" in value:
        raise ValueError(f"{value!r} cannot be used as a path component")
    return value


class LocalStorage:
    def __init__(self, data_dir: str | Path) -> None:
        self.root = Path(data_dir)

    def absolute(self, relative: str) -> Path:
        """The file a row's stored path names (absolute paths, i.e. registered data, pass through)."""
        path = Path(relative)
        return path if path.is_absolute() else self.root / path

    def folder_for(self, kind: str, tenant_id: str, object_id: str) -> Path:
        return self.root / _component(kind) / _component(tenant_id) / _component(object_id)

    async def save_stream(
        self,
        chunks: AsyncIterator[bytes],
        *,
        kind: str,
        tenant_id: str,
        object_id: str,
        filename: str,
        max_bytes: int,
    ) -> StoredFile:
        """Write ``chunks`` to ``<kind>/<tenant>/<id>/<filename>``; raises `UploadTooLarge` past ``max_bytes``
        or `EmptyUpload` for no bytes, in both cases leaving no file. Disk writes run in a thread in ~1 MiB
        blocks so the event loop keeps serving other requests."""
        tmp_dir = self.tmp_dir
        tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f"{kind}-", suffix=".part", dir=tmp_dir)
        tmp = Path(tmp_name)
        digest = hashlib.sha256()
        size = 0
        buffer = bytearray()
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in chunks:
                    if not chunk:
                        continue
                    size += len(chunk)
                    if size > max_bytes:
                        raise UploadTooLarge(max_bytes)
                    digest.update(chunk)
                    buffer += chunk
                    if len(buffer) >= WRITE_BUFFER_BYTES:
                        data, buffer = bytes(buffer), bytearray()
                        await run_in_threadpool(out.write, data)
                if buffer:
                    await run_in_threadpool(out.write, bytes(buffer))
                await run_in_threadpool(_flush_and_sync, out)
            if size == 0:
                raise EmptyUpload("the request body is empty; send the file's bytes as the body")
            folder = self.folder_for(kind, tenant_id, object_id)
            folder.mkdir(parents=True, exist_ok=True)
            final = folder / safe_filename(filename)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return StoredFile(path=str(final.relative_to(self.root)), size_bytes=size, sha256=digest.hexdigest())

    @property
    def tmp_dir(self) -> Path:
        """Where uploads in progress live (the same file system as their final place, so a rename is atomic)."""
        return self.root / "tmp"

    def adopt(self, part: Path, *, kind: str, tenant_id: str, object_id: str, filename: str) -> str:
        """Move a finished upload's part file to ``<kind>/<tenant>/<id>/<filename>`` with an atomic rename;
        returns the path relative to data_dir (what the row stores)."""
        folder = self.folder_for(kind, tenant_id, object_id)
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / safe_filename(filename)
        os.replace(part, final)
        return str(final.relative_to(self.root))

    def delete_object(self, kind: str, tenant_id: str, object_id: str) -> None:
        """Remove an upload's folder (missing is fine: deletion is idempotent)."""
        shutil.rmtree(self.folder_for(kind, tenant_id, object_id), ignore_errors=True)

    def delete_file(self, relative: str) -> None:
        """Remove a file under data_dir (e.g. a job's artifact); never touches paths outside it."""
        path = self.absolute(relative).resolve()
        if self.root.resolve() in path.parents:
            path.unlink(missing_ok=True)


def _flush_and_sync(out) -> None:
    out.flush()
    os.fsync(out.fileno())
