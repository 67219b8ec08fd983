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

import asyncio
import hashlib
import os
import re
import shutil
import tempfile
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

WRITE_BUFFER_BYTES = 1 << 20  # received chunks are handed to the writer thread in blocks of about this size
WRITE_QUEUE_BLOCKS = 8  # blocks waiting for the writer thread at most: bounds an upload's memory (~8 MiB)
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 16  # buffers one pwritev takes at most
DROP_BEHIND_BYTES = 8 << 20  # written bytes this far behind the newest block leave the page cache
_DONTNEED = getattr(os, "POSIX_FADV_DONTNEED", None)
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
        or `EmptyUpload` for no bytes, in both cases leaving no file. Writing and hashing run in threads
        (`BlockWriter`) so the event loop keeps receiving and serving other requests."""
        tmp_dir = self.tmp_dir
        tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f"{kind}-", suffix=".part", dir=tmp_dir)
        tmp = Path(tmp_name)
        digest = hashlib.sha256()
        try:
            try:
                async with BlockWriter(fd, 0, [digest]) as writer:
                    async for chunk in chunks:
                        if writer.received + len(chunk) > max_bytes:
                            raise UploadTooLarge(max_bytes)
                        await writer.add(chunk)
                    size = await writer.finish()
            finally:
                os.close(fd)
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


class BlockWriter:
    """Writes an upload's bytes to ``fd`` from ``offset`` on and feeds them to ``digests`` (hashlib objects), in
    threads of its own, while the event loop goes on receiving: receiving and writing overlap instead of
    taking turns (issue 10). Received chunks are handed over in blocks of about `WRITE_BUFFER_BYTES`, each
    written with one ``pwritev`` and never joined into one buffer; at most `WRITE_QUEUE_BLOCKS` blocks wait,
    so memory stays bounded whatever the size.

    Each digest has a thread too: a block is hashed once it is written, while the writer writes the next, so a
    tus PATCH's two SHA-256 (the request's checksum, the file's) and the write run side by side instead of one
    after the other on one thread (the longest of the three, not their sum, paces an upload). A digest never
    sees a block that was not written, and is at most one block behind the file.

    ``received`` counts the bytes given to `add`; ``written`` is how far the file is. Leaving the ``async
    with`` block waits for the block being written and the hashing of every written block, and drops the
    blocks still waiting, so afterwards the digests have seen exactly the bytes up to ``written`` and the
    caller may cut the file back to ``written`` without racing the threads."""

    def __init__(self, fd: int, offset: int, digests, depth: int = WRITE_QUEUE_BLOCKS) -> None:
        self.fd, self.digests, self.depth = fd, [d for d in digests if d is not None], depth
        self.received = self.written = self._queued = self._start = self._dropped = offset
        self._block: list[bytes] = []
        self._pending: deque[asyncio.Future] = deque()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="l2-upload-writer")
        self._hashers = {
            digest: ThreadPoolExecutor(max_workers=1, thread_name_prefix="l2-upload-hash") for digest in self.digests
        }
        self._hashing: list[Future] = []  # the last written block's digest updates (touched by the writer only)

    async def __aenter__(self) -> BlockWriter:
        return self

    async def __aexit__(self, *exc) -> None:
        # Blocks the event loop for one block's write and hashing at most (nothing at all after `finish`).
        self._thread.shutdown(wait=True, cancel_futures=True)
        for hasher in self._hashers.values():
            hasher.shutdown(wait=True)  # every written block is hashed: the digests end at `written`
        for future in self._pending:
            if future.done() and not future.cancelled():
                future.exception()  # retrieved, so asyncio does not log it as never retrieved
        self._pending.clear()

    async def add(self, chunk: bytes) -> None:
        """Take ``chunk``; waits only while `depth` blocks are already waiting. Raises a failed write's error."""
        if not chunk:
            return
        self._block.append(chunk)
        self.received += len(chunk)
        if self.received - self._queued >= WRITE_BUFFER_BYTES:
            await self._queue_block()

    async def finish(self) -> int:
        """Write what is left, wait until every byte is written and on disk (fsync); returns the end offset."""
        if self._block:
            await self._queue_block()
        while self._pending:
            await self._pending.popleft()
        await asyncio.get_running_loop().run_in_executor(self._thread, self._sync)
        return self.written

    async def _queue_block(self) -> None:
        block, at, self._block, self._queued = self._block, self._queued, [], self.received
        self._pending.append(asyncio.get_running_loop().run_in_executor(self._thread, self._write, block, at))
        while len(self._pending) > self.depth or self._pending[0].done():
            await self._pending.popleft()
            if not self._pending:
                break

    def _write(self, block: list[bytes], at: int) -> None:
        if len(block) > _IOV_MAX:  # a trickling client's many small chunks: one buffer instead
            block = [b"".join(block)]
        views, size, done = [memoryview(chunk) for chunk in block], sum(len(chunk) for chunk in block), 0
        while done < size:  # pwritev may write less than asked
            done += os.pwritev(self.fd, _skip(views, done), at + done)
        if _DONTNEED is not None:
            # Start writing these pages to disk now (Linux: DONTNEED starts writeback of dirty pages without
            # waiting), so `finish`'s fsync waits for the last blocks only, not the whole body.
            os.posix_fadvise(self.fd, at, size, _DONTNEED)
            self._drop_behind(at + size - DROP_BEHIND_BYTES)
        self.written = at + size
        self._wait_hashing()
        self._hashing = [hasher.submit(_feed, digest, block) for digest, hasher in self._hashers.items()]

    def _wait_hashing(self) -> None:
        for future in self._hashing:
            future.result()

    def _drop_behind(self, end: int) -> None:
        """Drop the pages written before ``end`` from the page cache (those already on disk: DONTNEED leaves
        dirty pages), so an upload of many GB reuses the same few MiB of memory instead of filling the cache
        with pages nobody reads soon: allocating fresh pages and reclaiming old ones cost more CPU than the
        copy itself (issue 10, on the 2-core machine: 4 GiB in 1 MiB blocks took 2.9-7.2 CPU s with the pages
        left in the cache, 1.1-1.3 s with them dropped behind)."""
        if end > self._dropped:
            os.posix_fadvise(self.fd, self._dropped, end - self._dropped, _DONTNEED)
            self._dropped = end

    def _sync(self) -> None:
        self._wait_hashing()
        os.fsync(self.fd)
        if _DONTNEED is not None:  # all on disk now: none of this body's pages stays behind
            self._dropped = self._start
            self._drop_behind(self.written)


def _feed(digest, block: list[bytes]) -> None:
    for chunk in block:
        digest.update(chunk)


def _skip(views: list[memoryview], count: int) -> list[memoryview]:
    """``views`` without their first ``count`` bytes."""
    rest = []
    for view in views:
        if count >= len(view):
            count -= len(view)
            continue
        rest.append(view[count:])
        count = 0
    return rest
