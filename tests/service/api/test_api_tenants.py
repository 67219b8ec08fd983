"""Authentication and tenant isolation: a key only ever sees its own tenant's resources; another tenant's ids
answer 404, exactly like ids that do not exist."""

from __future__ import annotations

from api_helpers import finish_job, submit_job, upload_checkpoint, upload_dataset

from api.auth import revoke_key


def test_requests_without_a_key_are_401_saying_how_to_get_one(client):
    r = client.get("/v1/jobs")
    assert r.status_code == 401 and "l2 keys create" in r.json()["detail"]
    assert r.headers["www-authenticate"] == "Bearer"


def test_a_wrong_or_malformed_key_is_401(client, tenant_a):
    prefix = tenant_a.key.split("_")[1]
    for key in (f"l2_{prefix}_wrongsecret", "l2_nope_secret", "garbage"):
        assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 401


def test_the_key_is_accepted_in_x_api_key_too(client, tenant_a):
    assert client.get("/v1/jobs", headers={"X-API-Key": tenant_a.key}).status_code == 200


def test_a_revoked_key_is_401(client, tenant_a, db):
    assert revoke_key(db, tenant_a.key.split("_")[1])
    assert client.get("/v1/jobs", headers=tenant_a.headers).status_code == 401


def test_auth_off_uses_the_default_tenant(client, settings):
    settings.auth_enabled = False
    r = upload_checkpoint(client, type("Anon", (), {"headers": {}})())
    assert r.status_code == 201
    assert client.get("/v1/checkpoints").json()["total"] == 1


def test_another_tenants_resources_are_404_and_absent_from_lists(client, tenant_a, tenant_b, db, settings):
    checkpoint = upload_checkpoint(client, tenant_a).json()["id"]
    dataset = upload_dataset(client, tenant_a).json()["id"]
    job = submit_job(client, tenant_a, checkpoint_id=checkpoint, dataset_id=dataset).json()["id"]
    finish_job(db, settings.data_dir, job)
    b = tenant_b.headers
    for path in (
        f"/v1/checkpoints/{checkpoint}",
        f"/v1/datasets/{dataset}",
        f"/v1/jobs/{job}",
        f"/v1/jobs/{job}/artifact",
        f"/v1/jobs/{job}/events",
        f"/v1/jobs/{job}/layers",
    ):
        r = client.get(path, headers=b)
        assert r.status_code == 404, path
        assert "not found" in r.json()["detail"]
    assert client.post(f"/v1/jobs/{job}/cancel", headers=b).status_code == 404
    assert client.delete(f"/v1/checkpoints/{checkpoint}", headers=b).status_code == 404
    assert client.delete(f"/v1/datasets/{dataset}", headers=b).status_code == 404
    for path in ("/v1/checkpoints", "/v1/datasets", "/v1/jobs"):
        listing = client.get(path, headers=b).json()
        assert listing["total"] == 0 and listing["data"] == [], path
    # B cannot build a job on A's inputs either
    r = client.post(
        "/v1/jobs", json={"checkpoint_id": checkpoint, "dataset_id": dataset, "target_ratio": 5}, headers=b
    )
    assert r.status_code == 404
    # and A still sees everything
    assert client.get(f"/v1/jobs/{job}/artifact", headers=tenant_a.headers).status_code == 200
