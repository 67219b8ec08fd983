"""Async variants for asyncio code: `AsyncClient` and `AsyncJob` have the methods of `Client` and `Job` as
coroutines. Each call runs the synchronous implementation in a worker thread (``asyncio.to_thread``), so the
retries, resumable uploads and verified downloads are the same code, and the event loop never blocks on the
network or the disk. A call in flight is not interrupted by cancelling its task (the thread finishes it)."""

from __future__ import annotations

import asyncio
import os

from l2_client.client import Client, Job
from l2_client.models import Checkpoint, Dataset, JobEvent, JobInfo, LayerResult


class AsyncJob:
    def __init__(self, job: Job) -> None:
        self.sync = job

    @property
    def id(self) -> str:
        return self.sync.id

    @property
    def state(self) -> str:
        return self.sync.state

    @property
    def info(self) -> JobInfo:
        return self.sync.info

    def __repr__(self) -> str:
        return f"Async{self.sync!r}"

    async def refresh(self) -> AsyncJob:
        await asyncio.to_thread(self.sync.refresh)
        return self

    async def wait(self, timeout: float | None = None, **kwargs) -> AsyncJob:
        await asyncio.to_thread(self.sync.wait, timeout, **kwargs)
        return self

    async def cancel(self) -> AsyncJob:
        await asyncio.to_thread(self.sync.cancel)
        return self

    async def layers(self) -> list[LayerResult]:
        return await asyncio.to_thread(self.sync.layers)

    async def events(self) -> list[JobEvent]:
        return await asyncio.to_thread(self.sync.events)

    async def download(self, path: str | os.PathLike, **kwargs):
        return await asyncio.to_thread(self.sync.download, path, **kwargs)


class AsyncClient:
    """``AsyncClient(url, api_key, ...)``: the arguments of `Client`."""

    def __init__(self, *args, **kwargs) -> None:
        self.sync = Client(*args, **kwargs)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await asyncio.to_thread(self.sync.close)

    async def upload_checkpoint(self, path: str | os.PathLike) -> Checkpoint:
        return await asyncio.to_thread(self.sync.upload_checkpoint, path)

    async def upload_dataset(self, path: str | os.PathLike, spec: dict | None = None, **kwargs) -> Dataset:
        return await asyncio.to_thread(self.sync.upload_dataset, path, spec, **kwargs)

    async def register_dataset(self, server_path: str, spec: dict | None = None, **kwargs) -> Dataset:
        return await asyncio.to_thread(self.sync.register_dataset, server_path, spec, **kwargs)

    async def submit(self, checkpoint, dataset, target_ratio: float, **kwargs) -> AsyncJob:
        return AsyncJob(await asyncio.to_thread(self.sync.submit, checkpoint, dataset, target_ratio, **kwargs))

    async def job(self, job_id: str) -> AsyncJob:
        return AsyncJob(await asyncio.to_thread(self.sync.job, job_id))

    async def jobs(self, **kwargs) -> list[AsyncJob]:
        return [AsyncJob(j) for j in await asyncio.to_thread(self.sync.jobs, **kwargs)]
