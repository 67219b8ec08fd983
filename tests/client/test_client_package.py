"""The client package stands alone: it imports (and its ``l2 remote`` command registers) with torch, the
service and the library all unimportable, and maps error bodies to typed errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from l2_client import errors

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("torch", "numpy", "compression_core", "api", "store", "worker", "fastapi", "sqlalchemy", "celery")

IMPORT_WITH_BLOCKER = f"""
import importlib.abc, sys
BLOCKED = {BLOCKED!r}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked in this test: {{name}}")
sys.meta_path.insert(0, Blocker())
import argparse
import l2_client, l2_client.cli
from l2_client import Client
sub = argparse.ArgumentParser().add_subparsers()
l2_client.cli.register(sub)
Client("http://127.0.0.1:9").close()
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print("LOADED", loaded)
"""


def test_the_client_imports_without_torch_or_the_service():
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_WITH_BLOCKER], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "LOADED []" in out.stdout


def _response(status: int, body: dict | str, headers: dict | None = None) -> httpx.Response:
    kwargs = {"json": body} if isinstance(body, dict) else {"text": body}
    return httpx.Response(status, headers=headers, request=httpx.Request("GET", "http://x/v1/jobs"), **kwargs)


def test_error_bodies_become_typed_errors_with_the_services_detail():
    err = errors.error_from_response(_response(404, {"detail": "job 'x' not found; list yours"}))
    assert isinstance(err, errors.NotFound) and err.detail == "job 'x' not found; list yours"
    limited = errors.error_from_response(_response(429, {"detail": "rate limit reached"}, {"Retry-After": "7"}))
    assert isinstance(limited, errors.RateLimited) and limited.retry_after == 7.0
    invalid = errors.error_from_response(
        _response(422, {"detail": "target_ratio: too big", "errors": [{"loc": ["target_ratio"], "msg": "too big"}]})
    )
    assert isinstance(invalid, errors.ValidationError) and invalid.errors[0]["loc"] == ["target_ratio"]
    assert isinstance(errors.error_from_response(_response(503, "<html>bad gateway</html>")), errors.ServiceUnavailable)
    assert isinstance(errors.error_from_response(_response(418, {"detail": "teapot"})), errors.APIError)


def test_transport_retries_503_then_succeeds_and_never_retries_a_plain_post_after_sending():
    from l2_client.transport import Transport

    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        if request.method == "GET" and len(calls) < 3:
            return httpx.Response(503, json={"detail": "busy"}, headers={"Retry-After": "0"})
        if request.method == "POST":
            raise httpx.ReadError("connection reset", request=request)
        return httpx.Response(200, json={"ok": True})

    transport = Transport("http://l2.test", None, sleep=lambda s: None)
    transport.http = httpx.Client(base_url="http://l2.test", transport=httpx.MockTransport(handler))
    assert transport.request("GET", "/v1/jobs").json() == {"ok": True} and calls == ["GET"] * 3
    calls.clear()
    try:
        transport.request("POST", "/v1/checkpoints", content=b"x")
        raise AssertionError("expected ConnectionFailed")
    except errors.ConnectionFailed:
        pass
    assert calls == ["POST"]  # sent once: a blind retry could store the upload twice
    calls.clear()
    try:
        transport.request("POST", "/v1/jobs", json={}, headers={"Idempotency-Key": "k"})
    except errors.ConnectionFailed:
        pass
    assert calls == ["POST"] * 6  # with an Idempotency-Key a retry is safe: 1 try + 5 retries


def test_a_resumable_upload_reads_each_chunk_once_and_resends_from_the_servers_offset(tmp_path, monkeypatch):
    """Each chunk is read from disk once (hashed and sent from memory) with the SHA-256 of exactly the bytes
    sent; a chunk the server refuses (460: damaged on the way) is read again and resent from the server's
    offset, and the upload ends with the file whole on the server."""
    import base64
    import hashlib

    from l2_client import tus
    from l2_client.transport import Transport

    source = tmp_path / "model.safetensors"
    data = bytes(range(256)) * 8960  # 2.19 MiB: 4 chunks of 640 KiB, the last one half
    source.write_bytes(data)
    read = []
    real_read_range = tus._read_range

    def counting_read_range(path, start, length):
        read.append((start, length))
        return real_read_range(path, start, length)

    monkeypatch.setattr(tus, "_read_range", counting_read_range)
    chunk = 640 * 1024
    received, patches = bytearray(), []

    def server(request: httpx.Request) -> httpx.Response:
        tus_headers = {"Tus-Resumable": "1.0.0", "Upload-Offset": str(len(received))}
        if request.method == "POST":
            return httpx.Response(201, headers={**tus_headers, "Location": "/v1/uploads/u1"})
        if request.method == "HEAD":
            return httpx.Response(200, headers=tus_headers)
        body, offset = request.read(), int(request.headers["Upload-Offset"])
        patches.append(offset)
        algorithm, digest = request.headers["Upload-Checksum"].split(" ")
        assert algorithm == "sha256" and base64.b64decode(digest) == hashlib.sha256(body).digest()
        if len(patches) == 2:  # the second chunk "arrives damaged": dropped, resent from offset `chunk`
            return httpx.Response(460, json={"detail": "checksum mismatch"}, headers=tus_headers)
        assert offset == len(received)
        received.extend(body)
        headers = {**tus_headers, "Upload-Offset": str(len(received))}
        if len(received) == len(data):
            headers["L2-Resource"] = "/v1/checkpoints/u1"
        return httpx.Response(204, headers=headers)

    transport = Transport("http://l2.test", None, sleep=lambda s: None)
    transport.http = httpx.Client(base_url="http://l2.test", transport=httpx.MockTransport(server))
    upload = tus.ResumableUpload(transport, source, kind="checkpoint", chunk_bytes=chunk)
    transport.delay = lambda *a: 0
    assert upload.upload() == "/v1/checkpoints/u1" and bytes(received) == data
    assert patches == [0, chunk, chunk, 2 * chunk, 3 * chunk] and upload.resumes == 1
    # Each chunk read once, but for the refused one, read again, and the one after it, which had been read
    # ahead while the refused one was on its way.
    last = (3 * chunk, len(data) - 3 * chunk)
    assert read == [(0, chunk), (chunk, chunk), (2 * chunk, chunk), (chunk, chunk), (2 * chunk, chunk), last]
