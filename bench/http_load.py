"""A lean HTTP/1.1 load generator for GET requests: keep-alive connections on asyncio streams, each sending its
next request when the previous answer is in (back-to-back) or at its own pace.

Why not httpx: its per-request cost (about 0.5 ms of Python on these cores) made the client, which shares the
machine's two cores with the server, the bottleneck of a 1,000 req/s measurement. This client only writes a
fixed request and reads the status line, the headers and ``Content-Length`` bytes of body.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from urllib.parse import urlsplit


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> None:
        self.reader, self.writer, self.request = reader, writer, request

    @classmethod
    async def open(cls, base_url: str, path: str, headers: dict[str, str] | None = None) -> Connection:
        url = urlsplit(base_url)
        reader, writer = await asyncio.open_connection(url.hostname, url.port or 80)
        lines = [f"GET {path} HTTP/1.1", f"Host: {url.hostname}:{url.port}", "Connection: keep-alive"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        return cls(reader, writer, ("\r\n".join(lines) + "\r\n\r\n").encode())

    async def get(self) -> int:
        """Send the request, read the whole answer; returns the status code."""
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
                break
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


async def load(
    base_url: str,
    path: str,
    *,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    interval_s: float = 0.0,
    headers: dict[str, str] | None = None,
) -> dict:
    """``concurrency`` connections; each asks every ``interval_s`` (0: as soon as its previous answer is in),
    started staggered over one interval as independent clients would. Latency is measured in this client."""
    conns = [await Connection.open(base_url, path, headers) for _ in range(concurrency)]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    issued = 0
    stop_at = time.monotonic() + max_seconds

    async def run(index: int, conn: Connection) -> None:
        nonlocal issued
        due = time.monotonic() + interval_s * index / concurrency
        while issued < max_requests:
            if interval_s:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                due += interval_s
            if time.monotonic() >= stop_at or issued >= max_requests:
                return
            issued += 1
            started = time.perf_counter()
            try:
                status = await conn.get()
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return
            if status == 200:
                latencies.append(time.perf_counter() - started)
            else:
                errors[str(status)] = errors.get(str(status), 0) + 1

    wall = time.perf_counter()
    try:
        await asyncio.gather(*(run(i, c) for i, c in enumerate(conns)))
    finally:
        for conn in conns:
            conn.close()
    wall = time.perf_counter() - wall
    return summarize(latencies, errors, wall, interval_s)


def summarize(latencies: list[float], errors: dict[str, int], wall: float, interval_s: float) -> dict:
    ms = sorted(1000 * x for x in latencies)

    def pct(q: float) -> float:
        return ms[min(len(ms) - 1, int(round(q * (len(ms) - 1))))] if ms else float("nan")

    return {
        "mode": f"every {interval_s:g} s per poller" if interval_s else "back-to-back (saturation)",
        "interval_s": interval_s,
        "requests": len(ms),
        "errors": errors,
        "seconds": round(wall, 2),
        "throughput_rps": round(len(ms) / wall, 1) if wall else None,
        "p50_ms": round(pct(0.50), 2),
        "p90_ms": round(pct(0.90), 2),
        "p99_ms": round(pct(0.99), 2),
        "max_ms": round(ms[-1], 2) if ms else None,
        "mean_ms": round(statistics.fmean(ms), 2) if ms else None,
    }
