"""The client side of the server's tus 1.0 uploads: create, then ``PATCH`` the file in chunks, each with its
SHA-256 (``Upload-Checksum``); after a dropped connection, ``HEAD`` asks the server for its offset and the
upload goes on from there. Each chunk is read from disk once, into memory, hashed there and sent from there
(reading it twice, to hash then to stream it, cost a second read of every byte on the 2-core machine of
issue 10). The next chunk is read and hashed in a thread while the current one is on its way, so memory use is
two chunks (128 MiB at the default `CHUNK_BYTES`), never the file."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from l2_client.errors import APIError, ConnectionFailed, L2Error, error_from_response
from l2_client.transport import Transport

TUS_VERSION = "1.0.0"
CHUNK_BYTES = 64 * 1024**2
READ_BYTES = 1024**2
TUS_HEADERS = {"Tus-Resumable": TUS_VERSION}
# Answers to a PATCH after which the upload goes on from the server's offset: another request still holds the
# upload (409), the chunk was damaged on the way (460), a limit or an unavailable server asks to wait.
RESUMABLE_STATUSES = (409, 429, 460, 502, 503, 504)


def encode_metadata(values: dict[str, str]) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items() if v is not None)


def _read_range(path: Path, start: int, length: int) -> Iterator[bytes]:
    with open(path, "rb") as f:
        f.seek(start)
        left = length
        while left > 0:
            block = f.read(min(READ_BYTES, left))
            if not block:
                raise L2Error(f"{path} shrank while it was being uploaded")
            left -= len(block)
            yield block


@dataclass(frozen=True)
class _Chunk:
    """One PATCH body, read: its blocks (sent as they are, no joined copy) and their ``Upload-Checksum``."""

    blocks: list[bytes]
    checksum: str


def _read_chunk(path: Path, start: int, length: int) -> _Chunk:
    digest, blocks = hashlib.sha256(), []
    for block in _read_range(path, start, length):
        digest.update(block)
        blocks.append(block)
    return _Chunk(blocks, "sha256 " + base64.b64encode(digest.digest()).decode())


class ResumableUpload:
    """One file sent through ``/v1/uploads``. ``on_progress(sent, total)`` is called after each chunk."""

    def __init__(
        self,
        transport: Transport,
        path: str | os.PathLike,
        *,
        kind: str,
        name: str | None = None,
        spec: dict | None = None,
        chunk_bytes: int = CHUNK_BYTES,
        max_resumes: int = 20,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.transport, self.path = transport, Path(path)
        self.kind, self.name, self.spec = kind, name, spec
        self.chunk_bytes, self.max_resumes, self.on_progress = chunk_bytes, max_resumes, on_progress
        self.size = self.path.stat().st_size
        self.url: str | None = None
        self.resumes = 0

    def create(self) -> str:
        meta = {"kind": self.kind, "filename": self.path.name}
        if self.name:
            meta["name"] = self.name
        if self.spec:
            meta["spec"] = json.dumps(self.spec)
        response = self.transport.request(
            "POST",
            "/v1/uploads",
            headers={**TUS_HEADERS, "Upload-Length": str(self.size), "Upload-Metadata": encode_metadata(meta)},
        )
        self.url = response.headers["Location"]
        return self.url

    def offset(self) -> tuple[int, str | None]:
        """The server's offset (where to resume) and, once complete, the resource the upload became."""
        response = self.transport.request("HEAD", self.url, headers=TUS_HEADERS)
        return int(response.headers["Upload-Offset"]), response.headers.get("L2-Resource")

    def _patch(self, offset: int, chunk: _Chunk) -> httpx.Response:
        headers = {
            **TUS_HEADERS,
            "Content-Type": "application/offset+octet-stream",
            "Upload-Offset": str(offset),
            "Upload-Checksum": chunk.checksum,
            "Content-Length": str(sum(len(block) for block in chunk.blocks)),
        }
        # No automatic retry here: after a failure the server's offset decides what to send next.
        response = self.transport.http.request("PATCH", self.url, headers=headers, content=iter(chunk.blocks))
        if response.status_code >= 400:
            raise error_from_response(response)
        return response

    def upload(self) -> str:
        """Send the whole file (resuming after dropped connections); returns the URL of the checkpoint or
        dataset it became (``/v1/checkpoints/<id>``). Called again after a failure, it goes on from the
        server's offset."""
        if self.url is None:
            self.create()
            offset, resource = 0, None
        else:
            offset, resource = self.offset()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="l2-tus-reader") as reader:
            chunks: dict[int, Future[_Chunk]] = {}  # the chunk at this offset, being read and hashed

            def chunk_at(start: int) -> Future[_Chunk]:
                if start not in chunks:
                    chunks.clear()  # only the newest is kept (the one being sent is held by the loop below)
                    length = min(self.chunk_bytes, self.size - start)
                    chunks[start] = reader.submit(_read_chunk, self.path, start, length)
                return chunks[start]

            while resource is None:
                try:
                    chunk = chunk_at(offset).result()
                    following = offset + min(self.chunk_bytes, self.size - offset)
                    if following < self.size:
                        chunk_at(following)  # read and hashed while this chunk is on its way
                    response = self._patch(offset, chunk)
                    offset = int(response.headers["Upload-Offset"])
                    resource = response.headers.get("L2-Resource")
                    if self.on_progress:
                        self.on_progress(offset, self.size)
                    if offset >= self.size and resource is None:
                        raise L2Error(f"the server received all {self.size} bytes but named no resource")
                except (httpx.TransportError, APIError, ConnectionFailed) as exc:
                    # Conflict: the server may still be finishing the request that broke (it holds the upload).
                    if isinstance(exc, APIError) and exc.status_code not in RESUMABLE_STATUSES:
                        raise
                    self.resumes += 1
                    if self.resumes > self.max_resumes:
                        raise ConnectionFailed(
                            f"upload of {self.path} stopped at byte {offset} of {self.size} after "
                            f"{self.resumes - 1} resumes ({type(exc).__name__}: {exc}); call upload() again to "
                            f"resume from the server's offset ({self.url})"
                        ) from exc
                    response = exc.response if isinstance(exc, APIError) else None
                    time.sleep(self.transport.delay(min(self.resumes, 5), response))
                    offset, resource = self.offset()
        return resource
