"""Resumable uploads (tus 1.0): creation, offset HEAD, PATCH append with sha256 checksums, expiration,
termination, tenant ownership and the quota; a finished upload becomes a checkpoint or dataset with its
SHA-256, like a plain upload."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import timedelta

from api_helpers import files_under
from conftest import MAX_UPLOAD

from store.models import ResumableUpload, utcnow

TUS = {"Tus-Resumable": "1.0.0"}


def meta(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def create(client, tenant, length: int, **values) -> str:
    values = values or {"kind": "checkpoint", "filename": "model.pt"}
    r = client.post(
        "/v1/uploads",
        headers={**tenant.headers, **TUS, "Upload-Length": str(length), "Upload-Metadata": meta(**values)},
    )
    assert r.status_code == 201, r.text
    assert r.headers["Tus-Resumable"] == "1.0.0" and "Upload-Expires" in r.headers
    return r.headers["Location"]


def patch(client, tenant, url: str, offset: int, data: bytes, checksum: bytes | None = None):
    headers = {
        **tenant.headers,
        **TUS,
        "Content-Type": "application/offset+octet-stream",
        "Upload-Offset": str(offset),
    }
    if checksum is not None:
        headers["Upload-Checksum"] = "sha256 " + base64.b64encode(checksum).decode()
    return client.patch(url, content=data, headers=headers)


def head_offset(client, tenant, url: str) -> int:
    r = client.head(url, headers={**tenant.headers, **TUS})
    assert r.status_code == 200, r.text
    return int(r.headers["Upload-Offset"])


def test_options_advertises_the_tus_version_and_extensions(client, tenant_a):
    r = client.options("/v1/uploads", headers=tenant_a.headers)
    assert r.status_code == 204
    assert r.headers["Tus-Version"] == "1.0.0"
    assert set(r.headers["Tus-Extension"].split(",")) == {"creation", "expiration", "termination", "checksum"}
    assert r.headers["Tus-Checksum-Algorithm"] == "sha256" and int(r.headers["Tus-Max-Size"]) == MAX_UPLOAD


def test_upload_in_chunks_with_checksums_becomes_a_checkpoint_with_the_files_sha256(client, tenant_a, settings):
    data = bytes(range(256)) * 150
    url = create(client, tenant_a, len(data))
    assert head_offset(client, tenant_a, url) == 0
    for start in range(0, len(data), 10_000):
        piece = data[start : start + 10_000]
        r = patch(client, tenant_a, url, start, piece, hashlib.sha256(piece).digest())
        assert r.status_code == 204, r.text
        assert int(r.headers["Upload-Offset"]) == start + len(piece)
    resource = r.headers["L2-Resource"]
    checkpoint = client.get(resource, headers=tenant_a.headers).json()
    assert checkpoint["sha256"] == hashlib.sha256(data).hexdigest() and checkpoint["size_bytes"] == len(data)
    assert checkpoint["id"] == url.rsplit("/", 1)[1] and checkpoint["filename"] == "model.pt"
    stored = files_under(settings.data_dir / "checkpoints")
    assert len(stored) == 1 and stored[0].read_bytes() == data
    assert files_under(settings.data_dir / "tmp") == []
    status = client.get(url, headers=tenant_a.headers).json()
    assert status["complete"] and status["resource"] == resource and status["offset"] == len(data)


def test_dataset_upload_keeps_its_name_and_spec(client, tenant_a):
    data = b"t" * 3000
    url = create(
        client, tenant_a, len(data), kind="dataset", filename="calib.pt", name="calib", spec='{"kind": "tensors"}'
    )
    r = patch(client, tenant_a, url, 0, data)
    assert r.status_code == 204, r.text
    dataset = client.get(r.headers["L2-Resource"], headers=tenant_a.headers).json()
    assert dataset["name"] == "calib" and dataset["spec"] == {"kind": "tensors"} and dataset["source"] == "upload"
    assert dataset["sha256"] == hashlib.sha256(data).hexdigest()


def test_a_wrong_checksum_is_460_and_the_bytes_are_dropped(client, tenant_a, settings):
    url = create(client, tenant_a, 2000)
    assert patch(client, tenant_a, url, 0, b"a" * 1000, hashlib.sha256(b"a" * 1000).digest()).status_code == 204
    r = patch(client, tenant_a, url, 1000, b"b" * 500, hashlib.sha256(b"c" * 500).digest())
    assert r.status_code == 460 and "Upload-Checksum" in r.json()["detail"]
    assert head_offset(client, tenant_a, url) == 1000
    (part,) = files_under(settings.data_dir / "tmp")
    assert part.stat().st_size == 1000


def test_patch_at_the_wrong_offset_is_409_telling_the_servers_offset(client, tenant_a):
    url = create(client, tenant_a, 100)
    assert patch(client, tenant_a, url, 0, b"x" * 40).status_code == 204
    r = patch(client, tenant_a, url, 10, b"x" * 10)
    assert r.status_code == 409 and "server's offset 40" in r.json()["detail"]


def test_bytes_past_the_declared_length_are_refused(client, tenant_a):
    url = create(client, tenant_a, 10)
    r = patch(client, tenant_a, url, 0, b"x" * 11)
    assert r.status_code == 422 and "Upload-Length" in r.json()["detail"]
    assert head_offset(client, tenant_a, url) == 0


def test_protocol_errors_say_what_to_send(client, tenant_a):
    no_version = client.post("/v1/uploads", headers={**tenant_a.headers, "Upload-Length": "5"})
    assert no_version.status_code == 412 and "Tus-Resumable" in no_version.json()["detail"]
    url = create(client, tenant_a, 5)
    wrong_type = client.patch(
        url, content=b"abcde", headers={**tenant_a.headers, **TUS, "Upload-Offset": "0", "Content-Type": "text/plain"}
    )
    assert wrong_type.status_code == 415
    bad_kind = client.post(
        "/v1/uploads",
        headers={**tenant_a.headers, **TUS, "Upload-Length": "5", "Upload-Metadata": meta(kind="x", filename="a")},
    )
    assert bad_kind.status_code == 422 and "kind" in bad_kind.json()["detail"]
    bad_spec = client.post(
        "/v1/uploads",
        headers={
            **tenant_a.headers,
            **TUS,
            "Upload-Length": "5",
            "Upload-Metadata": meta(kind="dataset", filename="d.pt", spec=json.dumps({"crop": -1})),
        },
    )
    assert bad_spec.status_code == 422 and "spec" in bad_spec.json()["detail"]


def test_an_upload_over_the_size_limit_is_refused_at_creation(client, tenant_a):
    r = client.post(
        "/v1/uploads",
        headers={
            **tenant_a.headers,
            **TUS,
            "Upload-Length": str(MAX_UPLOAD + 1),
            "Upload-Metadata": meta(kind="checkpoint", filename="m.pt"),
        },
    )
    assert r.status_code == 413 and "L2_MAX_UPLOAD_BYTES" in r.json()["detail"]


def test_another_tenant_cannot_see_or_write_an_upload(client, tenant_a, tenant_b):
    url = create(client, tenant_a, 10)
    assert client.head(url, headers={**tenant_b.headers, **TUS}).status_code == 404
    assert patch(client, tenant_b, url, 0, b"x" * 10).status_code == 404
    assert client.delete(url, headers={**tenant_b.headers, **TUS}).status_code == 404
    assert head_offset(client, tenant_a, url) == 0


def test_termination_deletes_the_received_bytes(client, tenant_a, settings):
    url = create(client, tenant_a, 100)
    patch(client, tenant_a, url, 0, b"x" * 50)
    r = client.delete(url, headers={**tenant_a.headers, **TUS})
    assert r.status_code == 204
    assert files_under(settings.data_dir / "tmp") == []
    assert client.head(url, headers={**tenant_a.headers, **TUS}).status_code == 404


def test_an_expired_upload_is_gone_and_swept(client, tenant_a, settings, db):
    url = create(client, tenant_a, 100)
    patch(client, tenant_a, url, 0, b"x" * 50)
    upload_id = url.rsplit("/", 1)[1]
    row = db.get(ResumableUpload, upload_id)
    row.expires_at = utcnow() - timedelta(seconds=1)
    db.commit()
    r = patch(client, tenant_a, url, 50, b"x" * 50)
    assert r.status_code == 410 and "expired" in r.json()["detail"]
    assert files_under(settings.data_dir / "tmp") == []
    db.expire_all()
    assert db.get(ResumableUpload, upload_id) is None


def test_unfinished_uploads_count_against_the_stored_bytes_quota(client, tenant_a, app):
    app.state.ctx.settings = app.state.ctx.settings.model_copy(update={"max_stored_bytes": 1000})
    create(client, tenant_a, 600)
    r = client.post(
        "/v1/uploads",
        headers={
            **tenant_a.headers,
            **TUS,
            "Upload-Length": "600",
            "Upload-Metadata": meta(kind="checkpoint", filename="m.pt"),
        },
    )
    assert r.status_code == 413
    detail = r.json()["detail"]
    assert "stored-bytes quota" in detail and "L2_MAX_STORED_BYTES" in detail and "400" in detail


def test_a_complete_upload_refuses_more_bytes_and_names_what_it_became(client, tenant_a):
    url = create(client, tenant_a, 10)
    resource = patch(client, tenant_a, url, 0, b"x" * 10).headers["L2-Resource"]
    r = patch(client, tenant_a, url, 10, b"y")
    assert r.status_code == 409 and resource in r.json()["detail"]


def test_an_upload_whose_completion_was_not_recorded_is_recognised_as_complete(client, tenant_a, db):
    """The process stopped after the checkpoint row was saved but before the upload was marked complete."""
    url = create(client, tenant_a, 10)
    resource = patch(client, tenant_a, url, 0, b"x" * 10).headers["L2-Resource"]
    row = db.get(ResumableUpload, url.rsplit("/", 1)[1])
    row.resource_id = None
    db.commit()
    r = client.head(url, headers={**tenant_a.headers, **TUS})
    assert r.status_code == 200 and r.headers["L2-Resource"] == resource


def test_a_body_that_breaks_after_several_blocks_keeps_what_was_written_and_resumes(client, tenant_a, settings, app):
    """A PATCH without a checksum whose body stops mid-way (a dropped connection) keeps the bytes its writer
    thread had written, saves that offset, and the upload resumes from it to the file's SHA-256."""
    import asyncio

    from api.auth import Caller
    from api.services import resumable
    from api.storage import WRITE_BUFFER_BYTES

    settings.max_upload_bytes = 8 * WRITE_BUFFER_BYTES
    data = hashlib.sha256(b"seed").digest() * (6 * WRITE_BUFFER_BYTES // 32)
    url = create(client, tenant_a, len(data))
    upload_id = url.rsplit("/", 1)[1]
    broke_at = 3 * WRITE_BUFFER_BYTES + 12_345

    async def body_that_breaks():
        for start in range(0, broke_at, 40_000):
            yield data[start : min(start + 40_000, broke_at)]
        raise ConnectionResetError("client went away")

    caller = Caller(tenant_id=tenant_a.tenant_id, tenant_name=tenant_a.name, key_prefix=None)
    try:
        asyncio.run(resumable.append(app.state.ctx, caller, upload_id, 0, None, body_that_breaks()))
    except ConnectionResetError:
        pass
    else:
        raise AssertionError("the broken body did not surface")
    kept = head_offset(client, tenant_a, url)
    assert 0 < kept <= broke_at  # whole blocks reached the file before the break
    part = settings.data_dir / "tmp" / f"tus-{upload_id}.part"
    assert part.read_bytes() == data[:kept]
    r = patch(client, tenant_a, url, kept, data[kept:], hashlib.sha256(data[kept:]).digest())
    assert r.status_code == 204, r.text
    checkpoint = client.get(r.headers["L2-Resource"], headers=tenant_a.headers).json()
    assert checkpoint["sha256"] == hashlib.sha256(data).hexdigest() and checkpoint["size_bytes"] == len(data)


def test_a_multi_block_body_with_a_wrong_checksum_is_dropped_whole(client, tenant_a, settings):
    from api.storage import WRITE_BUFFER_BYTES

    settings.max_upload_bytes = 8 * WRITE_BUFFER_BYTES
    data = b"\x01\x02" * (5 * WRITE_BUFFER_BYTES // 2)
    url = create(client, tenant_a, len(data))
    r = patch(client, tenant_a, url, 0, data, hashlib.sha256(data[:-1]).digest())
    assert r.status_code == 460, r.text
    assert head_offset(client, tenant_a, url) == 0
    r = patch(client, tenant_a, url, 0, data, hashlib.sha256(data).digest())
    assert r.status_code == 204 and int(r.headers["Upload-Offset"]) == len(data)
