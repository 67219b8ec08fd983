"""Checkpoint and dataset uploads: streamed to disk with their SHA-256, refused over the size limit with
nothing left behind, listed, fetched and deleted per tenant; server-path registration only inside the allowed
roots."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import pytest
from api_helpers import files_under, upload_checkpoint, upload_dataset
from conftest import MAX_UPLOAD


def test_checkpoint_upload_stores_the_bytes_and_returns_their_sha256(client, tenant_a, settings):
    data = bytes(range(256)) * 200
    r = upload_checkpoint(client, tenant_a, data, filename="resnet.safetensors")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["size_bytes"] == len(data) and body["filename"] == "resnet.safetensors"
    assert r.headers["location"] == f"/v1/checkpoints/{body['id']}"
    stored = files_under(settings.data_dir / "checkpoints")
    assert len(stored) == 1 and stored[0].read_bytes() == data and stored[0].name == "resnet.safetensors"
    assert files_under(settings.data_dir / "tmp") == []


def test_chunked_upload_without_content_length_is_streamed(client, tenant_a):
    chunks = [b"a" * 10_000, b"b" * 10_000, b"c" * 5]
    r = client.post("/v1/checkpoints", params={"filename": "m.pt"}, content=iter(chunks), headers=tenant_a.headers)
    assert r.status_code == 201, r.text
    assert r.json()["sha256"] == hashlib.sha256(b"".join(chunks)).hexdigest()


def test_a_body_of_many_blocks_and_tiny_chunks_is_stored_whole(client, tenant_a, settings):
    """The writer thread takes blocks of received chunks: a large body whose blocks hold more chunks than one
    pwritev takes (a trickling client) is stored byte for byte, with its SHA-256."""
    from api.storage import WRITE_BUFFER_BYTES

    settings.max_upload_bytes = 4 * WRITE_BUFFER_BYTES
    big = [bytes([i]) * 65_536 for i in range(40)]  # 2.5 MiB in 64 KiB chunks
    tiny = [bytes([i % 251]) * 97 for i in range(12_000)]  # ~1.1 MiB in 97-byte chunks
    chunks = big + tiny + [b"end"]
    r = client.post("/v1/checkpoints", params={"filename": "m.pt"}, content=iter(chunks), headers=tenant_a.headers)
    assert r.status_code == 201, r.text
    data = b"".join(chunks)
    assert r.json()["sha256"] == hashlib.sha256(data).hexdigest() and r.json()["size_bytes"] == len(data)
    stored = files_under(settings.data_dir / "checkpoints")
    assert len(stored) == 1 and stored[0].read_bytes() == data


def test_upload_over_the_size_limit_is_413_and_leaves_no_file(client, tenant_a, settings):
    r = upload_checkpoint(client, tenant_a, b"x" * (MAX_UPLOAD + 1))
    assert r.status_code == 413
    assert "L2_MAX_UPLOAD_BYTES" in r.json()["detail"]
    assert files_under(settings.data_dir) == []
    assert client.get("/v1/checkpoints", headers=tenant_a.headers).json()["total"] == 0


def test_streamed_upload_that_grows_past_the_limit_is_413_and_leaves_no_file(client, tenant_a, settings):
    chunks = iter([b"y" * 40_000, b"y" * 40_000])  # no Content-Length: the limit is found while reading
    r = client.post("/v1/datasets/upload", params={"filename": "d.npy"}, content=chunks, headers=tenant_a.headers)
    assert r.status_code == 413
    assert files_under(settings.data_dir) == []


def test_empty_upload_is_422(client, tenant_a):
    r = upload_checkpoint(client, tenant_a, b"")
    assert r.status_code == 422 and "empty" in r.json()["detail"]


def test_upload_without_filename_is_422_naming_it(client, tenant_a):
    r = client.post("/v1/checkpoints", content=b"abc", headers=tenant_a.headers)
    assert r.status_code == 422 and "filename" in r.json()["detail"]


def test_filename_with_folders_is_reduced_to_its_base_name(client, tenant_a, settings):
    r = upload_checkpoint(client, tenant_a, b"abc", filename="../../etc/passwd.pt")
    assert r.status_code == 201
    (stored,) = files_under(settings.data_dir)
    assert stored.name == "passwd.pt" and settings.data_dir in stored.parents


def test_checkpoints_are_listed_fetched_and_deleted(client, tenant_a, settings):
    ids = [upload_checkpoint(client, tenant_a, f"model {i}".encode()).json()["id"] for i in range(3)]
    listing = client.get("/v1/checkpoints", params={"limit": 2}, headers=tenant_a.headers).json()
    assert listing["total"] == 3 and len(listing["data"]) == 2
    assert client.get(f"/v1/checkpoints/{ids[0]}", headers=tenant_a.headers).json()["id"] == ids[0]
    assert client.delete(f"/v1/checkpoints/{ids[0]}", headers=tenant_a.headers).status_code == 204
    assert client.get(f"/v1/checkpoints/{ids[0]}", headers=tenant_a.headers).status_code == 404
    assert len(files_under(settings.data_dir / "checkpoints")) == 2


def test_unknown_checkpoint_and_dataset_ids_are_404(client, tenant_a):
    for path in ("/v1/checkpoints/nope", "/v1/datasets/nope"):
        r = client.get(path, headers=tenant_a.headers)
        assert r.status_code == 404 and "not found" in r.json()["detail"]
        assert client.delete(path, headers=tenant_a.headers).status_code == 404


def test_dataset_upload_keeps_its_validated_calibration_spec(client, tenant_a):
    spec = {"kind": "images", "resize": 32, "crop": 28, "channels": 1, "mean": [0.5], "std": [0.25]}
    r = upload_dataset(client, tenant_a, b"PK\x03\x04zip", filename="digits.zip", name="digits", spec=json.dumps(spec))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["source"] == "upload" and body["name"] == "digits"
    assert {k: body["spec"][k] for k in spec} == spec


def test_dataset_upload_with_a_bad_spec_is_422_saying_which_setting(client, tenant_a, settings):
    r = upload_dataset(client, tenant_a, spec=json.dumps({"kind": "audio"}))
    assert r.status_code == 422 and "kind" in r.json()["detail"]
    r = upload_dataset(client, tenant_a, spec=json.dumps({"colour": 3}))
    assert r.status_code == 422 and "colour" in r.json()["detail"]
    r = upload_dataset(client, tenant_a, spec="{not json")
    assert r.status_code == 422 and "JSON" in r.json()["detail"]
    assert files_under(settings.data_dir) == []


def test_registering_a_path_inside_an_allowed_root_records_it(client, tenant_a, settings):
    folder = settings.allowed_data_roots[0] / "imagenet-calib"
    folder.mkdir()
    r = client.post(
        "/v1/datasets",
        json={"name": "calib", "path": str(folder), "spec": {"kind": "images"}},
        headers=tenant_a.headers,
    )
    assert r.status_code == 201, r.text
    assert r.json()["source"] == "path" and r.json()["spec"]["kind"] == "images"


def test_registering_a_path_outside_the_allowed_roots_is_refused(client, tenant_a, settings, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    root = settings.allowed_data_roots[0]
    escape = root / ".." / "elsewhere"
    link = root / "link"
    link.symlink_to(outside)
    for path in (str(outside), str(escape), str(link), "/etc"):
        r = client.post("/v1/datasets", json={"name": "x", "path": path}, headers=tenant_a.headers)
        assert r.status_code == 403, (path, r.text)
        assert "allowed data roots" in r.json()["detail"]
    r = client.post("/v1/datasets", json={"name": "x", "path": "relative/dir"}, headers=tenant_a.headers)
    assert r.status_code == 422 and "absolute" in r.json()["detail"]
    r = client.post("/v1/datasets", json={"name": "x", "path": str(root / "missing")}, headers=tenant_a.headers)
    assert r.status_code == 422 and "does not exist" in r.json()["detail"]
    assert client.get("/v1/datasets", headers=tenant_a.headers).json()["total"] == 0


def test_path_registration_is_forbidden_when_no_roots_are_configured(client, tenant_a, settings, tmp_path):
    settings.allowed_data_roots = []
    r = client.post("/v1/datasets", json={"name": "x", "path": str(tmp_path)}, headers=tenant_a.headers)
    assert r.status_code == 403 and "upload" in r.json()["detail"]


def test_deleting_an_uploaded_dataset_removes_its_file_but_never_registered_data(client, tenant_a, settings):
    uploaded = upload_dataset(client, tenant_a).json()["id"]
    folder = settings.allowed_data_roots[0] / "keep"
    folder.mkdir()
    (folder / "x.npy").write_bytes(b"123")
    registered = client.post("/v1/datasets", json={"name": "k", "path": str(folder)}, headers=tenant_a.headers)
    for dataset_id in (uploaded, registered.json()["id"]):
        assert client.delete(f"/v1/datasets/{dataset_id}", headers=tenant_a.headers).status_code == 204
    assert files_under(settings.data_dir / "datasets") == []
    assert (folder / "x.npy").read_bytes() == b"123"


def test_upload_bytes_are_counted_in_metrics(client, tenant_a):
    upload_checkpoint(client, tenant_a, b"z" * 1000)
    text = client.get("/metrics").text
    assert 'l2_upload_bytes_total{kind="checkpoint"} 1000.0' in text


def test_the_writer_hashes_beside_writing_and_its_digests_end_where_the_file_does(tmp_path):
    """Each digest is fed in a thread of its own, a block behind the write (a tus PATCH's two SHA-256 and the
    write side by side, issue 10). When a body breaks mid-way, leaving the writer waits for the hashing of
    every written block: each digest has seen exactly the bytes up to ``written``, which is what a resumed
    tus upload's file SHA-256 carries on from."""
    import asyncio
    import os
    import threading
    import time

    from api.storage import WRITE_BUFFER_BYTES, BlockWriter

    class SlowDigest:
        """sha256 that takes its time (hashing slower than writing) and notes the threads that fed it."""

        def __init__(self) -> None:
            self.inner, self.threads = hashlib.sha256(), set()

        def update(self, data) -> None:
            self.threads.add((threading.current_thread().name, threading.get_ident()))
            time.sleep(0.002)
            self.inner.update(data)

    blocks = [bytes([i + 1]) * WRITE_BUFFER_BYTES for i in range(4)]
    chunks = [block[start : start + 65_536] for block in blocks for start in range(0, len(block), 65_536)]
    first, second = SlowDigest(), SlowDigest()
    path = tmp_path / "body.part"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)

    async def body_that_breaks() -> BlockWriter:
        async with BlockWriter(fd, 0, [first, None, second]) as writer:
            try:
                for chunk in chunks:
                    await writer.add(chunk)
                raise ConnectionResetError("client went away")
            except ConnectionResetError:
                await writer.__aexit__()
        return writer

    try:
        writer = asyncio.run(body_that_breaks())
    finally:
        os.close(fd)
    assert writer.written > 0 and writer.written % WRITE_BUFFER_BYTES == 0
    on_disk = path.read_bytes()[: writer.written]
    assert on_disk == b"".join(blocks)[: writer.written]
    for digest in (first, second):
        assert digest.inner.hexdigest() == hashlib.sha256(on_disk).hexdigest()
    assert len(first.threads) == len(second.threads) == 1 and first.threads != second.threads
    assert all(name.startswith("l2-upload-hash") for name, _ in first.threads | second.threads)


@pytest.mark.skipif(shutil.which("fincore") is None, reason="needs fincore (util-linux) to see the page cache")
def test_an_uploaded_file_leaves_the_page_cache_once_on_disk(client, tenant_a, settings):
    """The writer drops the pages it wrote from the page cache once they are on disk (issue 10: filling the
    cache with GB of upload pages cost the server more CPU than writing them), so a stored upload occupies
    no memory afterwards."""
    from api.storage import WRITE_BUFFER_BYTES

    settings.max_upload_bytes = 32 * WRITE_BUFFER_BYTES
    data = hashlib.sha256(b"cached?").digest() * (24 * WRITE_BUFFER_BYTES // 32)
    r = upload_checkpoint(client, tenant_a, data, filename="big.safetensors")
    assert r.status_code == 201, r.text
    (stored,) = files_under(settings.data_dir / "checkpoints")
    resident = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(stored)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert stored.stat().st_size == len(data) and int(resident) < WRITE_BUFFER_BYTES
