"""Artifact download: whole file with Content-Length, ETag and SHA-256 digest headers; byte ranges (206, 416);
409 until the job has succeeded."""

from __future__ import annotations

import base64
import hashlib

import pytest
from api_helpers import finish_job, set_state, submit_job


@pytest.fixture
def finished(client, tenant_a, db, settings):
    job_id = submit_job(client, tenant_a).json()["id"]
    content = finish_job(db, settings.data_dir, job_id, bytes(range(256)) * 40 + b"tail")
    return job_id, content


def test_artifact_download_has_length_etag_and_digest(client, tenant_a, finished):
    job_id, content = finished
    r = client.get(f"/v1/jobs/{job_id}/artifact", headers=tenant_a.headers)
    assert r.status_code == 200 and r.content == content
    digest = hashlib.sha256(content)
    assert r.headers["content-length"] == str(len(content))
    assert r.headers["etag"] == f'"{digest.hexdigest()}"'
    b64 = base64.b64encode(digest.digest()).decode()
    assert r.headers["repr-digest"] == f"sha-256=:{b64}:" and r.headers["digest"] == f"sha-256={b64}"
    assert r.headers["accept-ranges"] == "bytes"
    assert f"{job_id}.l2" in r.headers["content-disposition"]


def test_range_request_returns_206_with_the_exact_bytes(client, tenant_a, finished):
    job_id, content = finished
    r = client.get(f"/v1/jobs/{job_id}/artifact", headers={**tenant_a.headers, "Range": "bytes=100-1099"})
    assert r.status_code == 206
    assert r.content == content[100:1100]
    assert r.headers["content-range"] == f"bytes 100-1099/{len(content)}"
    assert r.headers["content-length"] == "1000"
    tail = client.get(f"/v1/jobs/{job_id}/artifact", headers={**tenant_a.headers, "Range": "bytes=-4"})
    assert tail.status_code == 206 and tail.content == b"tail"


def test_resuming_a_download_with_if_range_etag(client, tenant_a, finished):
    job_id, content = finished
    etag = client.head(f"/v1/jobs/{job_id}/artifact", headers=tenant_a.headers).headers["etag"]
    r = client.get(
        f"/v1/jobs/{job_id}/artifact", headers={**tenant_a.headers, "Range": "bytes=5000-", "If-Range": etag}
    )
    assert r.status_code == 206 and r.content == content[5000:]
    stale = client.get(
        f"/v1/jobs/{job_id}/artifact",
        headers={**tenant_a.headers, "Range": "bytes=5000-", "If-Range": '"other"'},
    )
    assert stale.status_code == 200 and stale.content == content


def test_unsatisfiable_range_is_416(client, tenant_a, finished):
    job_id, content = finished
    r = client.get(
        f"/v1/jobs/{job_id}/artifact", headers={**tenant_a.headers, "Range": f"bytes={len(content) + 10}-"}
    )
    assert r.status_code == 416


@pytest.mark.parametrize("state", ["queued", "running", "failed", "canceled"])
def test_artifact_of_a_job_that_has_not_succeeded_is_409(client, tenant_a, db, state):
    job_id = submit_job(client, tenant_a).json()["id"]
    if state != "queued":
        set_state(db, job_id, state)
    r = client.get(f"/v1/jobs/{job_id}/artifact", headers=tenant_a.headers)
    assert r.status_code == 409 and state in r.json()["detail"]


def test_artifact_missing_on_disk_is_410(client, tenant_a, finished, settings):
    job_id, _ = finished
    for path in (settings.data_dir / "artifacts").rglob("*.l2"):
        path.unlink()
    assert client.get(f"/v1/jobs/{job_id}/artifact", headers=tenant_a.headers).status_code == 410
