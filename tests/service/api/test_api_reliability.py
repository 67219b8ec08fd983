"""Defects found by fuzzing the API (issue 12): each request here once answered a 5xx, a 2xx it should not
have, or a body its own schema does not allow."""

from __future__ import annotations

import pytest
from api_helpers import submit_job, upload_checkpoint, upload_dataset

from api.schemas import MAX_OFFSET


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/checkpoints", "/v1/datasets"])
def test_an_offset_past_the_databases_integers_is_422_not_500(client, tenant_a, path):
    r = client.get(path, params={"offset": 9223372036854775808}, headers=tenant_a.headers)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"] == ["query", "offset"]
    r = client.get(path, params={"offset": MAX_OFFSET}, headers=tenant_a.headers)
    assert r.status_code == 200 and r.json()["data"] == []


def test_a_valid_bearer_key_with_a_wrong_x_api_key_is_401(client, tenant_a):
    prefix = tenant_a.key.split("_")[1]
    wrong = f"l2_{prefix}_wrongsecret"
    for headers in (
        {"Authorization": f"Bearer {tenant_a.key}", "X-API-Key": wrong},
        {"Authorization": f"Bearer {wrong}", "X-API-Key": tenant_a.key},
        {"Authorization": f"Bearer {tenant_a.key}", "X-API-Key": "garbage"},
    ):
        r = client.get("/v1/jobs", headers=headers)
        assert r.status_code == 401, headers
        assert "X-API-Key" in r.json()["detail"] or "Authorization" in r.json()["detail"]


def test_two_valid_keys_of_different_tenants_are_401(client, tenant_a, tenant_b):
    r = client.get("/v1/jobs", headers={"Authorization": f"Bearer {tenant_a.key}", "X-API-Key": tenant_b.key})
    assert r.status_code == 401 and "different" in r.json()["detail"]


def test_the_same_key_in_both_headers_is_accepted(client, tenant_a):
    r = client.get("/v1/jobs", headers={"Authorization": f"Bearer {tenant_a.key}", "X-API-Key": tenant_a.key})
    assert r.status_code == 200


def test_a_non_bearer_authorization_scheme_is_401(client, tenant_a):
    r = client.get("/v1/jobs", headers={"Authorization": f"Basic {tenant_a.key}", "X-API-Key": tenant_a.key})
    assert r.status_code == 401 and "Bearer" in r.json()["detail"]


def test_another_tenants_upload_cannot_be_registered_by_its_server_path(client, tenant_a, tenant_b, settings, db):
    """The README's demo layout has the data folder inside an allowed root; the service's own files (every
    tenant's uploads and artifacts) must still be off limits to registration by path."""
    from store.models import Dataset

    settings.allowed_data_roots = [settings.data_dir.parent]
    uploaded = upload_dataset(client, tenant_a).json()["id"]
    stored = settings.data_dir / db.get(Dataset, uploaded).path
    assert stored.is_file()
    for path in (stored, settings.data_dir, settings.data_dir / "uploads" / ".." / "datasets"):
        r = client.post(
            "/v1/datasets",
            json={"name": "stolen", "path": str(path), "spec": {"kind": "tensors"}},
            headers=tenant_b.headers,
        )
        assert r.status_code == 403, (path, r.text)
        assert "L2_DATA_DIR" in r.json()["detail"]
    assert client.get("/v1/datasets", headers=tenant_b.headers).json()["total"] == 0


def test_service_raised_422_bodies_carry_the_errors_array(client, tenant_a):
    r = upload_dataset(client, tenant_a, spec="{not json")
    assert r.status_code == 422
    body = r.json()
    assert body["errors"] and body["errors"][0]["msg"] and body["errors"][0]["loc"] == ["query", "spec"]
    assert "spec" in body["detail"]
    r = upload_checkpoint(client, tenant_a, data=b"")
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body"]


def test_options_and_other_unsupported_methods_answer_405_listing_every_allowed_method(client, tenant_a):
    r = client.options("/v1/jobs", headers=tenant_a.headers)
    assert r.status_code == 405
    assert {m.strip() for m in r.headers["allow"].split(",")} == {"GET", "POST"}
    r = client.put("/v1/checkpoints/abc", headers=tenant_a.headers)
    assert r.status_code == 405
    assert {m.strip() for m in r.headers["allow"].split(",")} == {"GET", "DELETE"}
    # a literal route wins over the templated one that also matches (/v1/datasets/{dataset_id})
    r = client.options("/v1/datasets/upload", headers=tenant_a.headers)
    assert r.status_code == 405 and r.headers["allow"] == "POST"


def test_a_tus_patch_without_upload_offset_is_422_before_the_version_check(client, tenant_a):
    r = client.patch("/v1/uploads/x", content=b"abc", headers={**tenant_a.headers,
                     "Content-Type": "application/offset+octet-stream"})
    assert r.status_code == 422 and "upload-offset" in r.text.lower()


@pytest.mark.parametrize("value", ["-5", "-1e9", "1700000000", "yesterday", "2026-01-02"])
def test_created_after_must_be_an_iso_date_time(client, tenant_a, value):
    r = client.get("/v1/jobs", params={"created_after": value}, headers=tenant_a.headers)
    assert r.status_code == 422, r.text
    assert "ISO 8601" in r.json()["detail"]


def test_created_after_accepts_iso_times(client, tenant_a):
    for value in ("2026-01-02T03:04:05Z", "2026-01-02T03:04:05.5+02:00", "2026-01-02 03:04"):
        assert client.get("/v1/jobs", params={"created_after": value}, headers=tenant_a.headers).status_code == 200


@pytest.mark.parametrize("bad", ["a\x00b.pt", "line\nbreak.pt", "tab\there.pt", "del\x7f.pt"])
def test_control_characters_in_file_names_and_names_are_422(client, tenant_a, bad):
    r = upload_checkpoint(client, tenant_a, filename=bad)
    assert r.status_code == 422 and "control character" in r.json()["detail"]
    r = upload_dataset(client, tenant_a, filename="calib.npy", name=bad)
    assert r.status_code == 422 and "control character" in r.json()["detail"]
    r = client.post(
        "/v1/datasets", json={"name": bad, "path": "/nonexistent", "spec": {}}, headers=tenant_a.headers
    )
    assert r.status_code == 422 and "control character" in r.json()["detail"]


def test_a_target_ratio_no_model_can_reach_is_422_naming_the_lowest_reachable_ratio(client, tenant_a, enqueued):
    from api.schemas import MIN_TARGET_RATIO

    for target in (1.0000001, 1.01, 1.5):
        r = submit_job(client, tenant_a, target_ratio=target)
        assert r.status_code == 422, target
        assert f"{MIN_TARGET_RATIO:g}" in r.json()["detail"]
    assert enqueued.calls == []
    assert submit_job(client, tenant_a, target_ratio=MIN_TARGET_RATIO).status_code == 202


def test_the_apis_lowest_target_is_the_ratio_every_model_reaches():
    from api.schemas import MIN_TARGET_RATIO
    from compression_core.recon.budget import MIN_REACHABLE_RATIO

    assert MIN_TARGET_RATIO == MIN_REACHABLE_RATIO


def test_a_body_that_cannot_be_decoded_is_422_with_errors_not_a_bare_400(client, tenant_a):
    r = client.put(
        "/v1/mlflow",
        content=b"\x15\xff`\xfe$\x14\x14\x00r",
        headers={**tenant_a.headers, "Content-Type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"] == ["body"] and "JSON" in r.json()["detail"]
