"""Job submission, reading, listing, cancelling, events and per-layer results."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from api_helpers import finish_job, set_state, submit_job, upload_checkpoint, upload_dataset

from store.models import Job


def test_submitting_a_job_answers_202_with_location_and_enqueues_it_after_commit(
    client, tenant_a, enqueued, db
):
    r = submit_job(client, tenant_a, target_ratio=12.5, options={"rounds": 1, "transform": "linear"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] == "queued" and job["progress"] == 0 and job["target_ratio"] == 12.5
    assert job["options"] == {"rounds": 1, "transform": "linear"}
    assert enqueued.calls == [(job["id"], "cpu")]
    assert db.get(Job, job["id"]).state == "queued"  # the row was committed before the message was sent


def test_a_preset_travels_in_the_options_the_worker_builds_its_config_from(client, tenant_a, enqueued):
    r = submit_job(client, tenant_a, preset="fast", options={"rounds": 2})
    assert r.status_code == 202, r.text
    assert r.json()["options"] == {"rounds": 2, "preset": "fast"}
    r = submit_job(client, tenant_a, preset="turbo")
    assert r.status_code == 422 and "preset" in r.json()["detail"]


@pytest.mark.parametrize(
    ("device", "gpu_workers", "queue"),
    [("cuda", False, "gpu"), ("cpu", True, "cpu"), ("auto", False, "cpu"), ("auto", True, "gpu")],
)
def test_device_preference_picks_the_queue(client, tenant_a, enqueued, settings, device, gpu_workers, queue):
    settings.gpu_workers = gpu_workers
    r = submit_job(client, tenant_a, device=device)
    assert r.status_code == 202 and r.json()["queue"] == queue
    assert enqueued.calls[-1][1] == queue


def test_unknown_options_are_422_naming_them(client, tenant_a, enqueued):
    r = submit_job(client, tenant_a, options={"rounds": 2, "learning_rate": 1, "warp": True})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert "learning_rate" in detail and "warp" in detail and "allowed" in detail
    assert enqueued.calls == []


@pytest.mark.parametrize(
    ("field", "value", "word"),
    [
        ("target_ratio", 1.0, "target_ratio"),
        ("target_ratio", 101, "target_ratio"),
        ("target_ratio", "ten", "target_ratio"),
        ("device", "tpu", "device"),
        ("options", {"batch_size": 0}, "batch_size"),
        ("options", {"transform": "magic"}, "transform"),
        ("unexpected", 1, "unexpected"),
    ],
)
def test_invalid_job_fields_are_422_saying_which(client, tenant_a, enqueued, field, value, word):
    r = submit_job(client, tenant_a, **{field: value})
    assert r.status_code == 422, r.text
    assert word in r.json()["detail"]
    assert enqueued.calls == []


def test_malformed_json_body_is_422_with_a_message(client, tenant_a):
    r = client.post(
        "/v1/jobs", content=b"{not json", headers={**tenant_a.headers, "Content-Type": "application/json"}
    )
    assert r.status_code == 422 and "JSON" in r.json()["detail"]


def test_missing_required_fields_are_422_naming_them(client, tenant_a):
    r = client.post("/v1/jobs", json={"target_ratio": 5}, headers=tenant_a.headers)
    assert r.status_code == 422
    assert "checkpoint_id" in r.json()["detail"] and "dataset_id" in r.json()["detail"]


def test_job_referring_to_unknown_inputs_is_404_naming_the_field(client, tenant_a, enqueued):
    dataset = upload_dataset(client, tenant_a).json()["id"]
    r = submit_job(client, tenant_a, checkpoint_id="missing", dataset_id=dataset)
    assert r.status_code == 404 and "checkpoint_id" in r.json()["detail"]
    checkpoint = upload_checkpoint(client, tenant_a).json()["id"]
    r = submit_job(client, tenant_a, checkpoint_id=checkpoint, dataset_id=dataset, eval_dataset_id="gone")
    assert r.status_code == 404 and "eval_dataset_id" in r.json()["detail"]
    assert enqueued.calls == []


def test_unknown_job_id_is_404_everywhere(client, tenant_a):
    for method, path in (
        ("get", ""),
        ("post", "/cancel"),
        ("get", "/events"),
        ("get", "/layers"),
        ("get", "/artifact"),
    ):
        r = getattr(client, method)(f"/v1/jobs/no-such-job{path}", headers=tenant_a.headers)
        assert r.status_code == 404, path


def test_same_idempotency_key_and_body_returns_the_same_job_once(client, tenant_a, enqueued):
    checkpoint = upload_checkpoint(client, tenant_a).json()["id"]
    dataset = upload_dataset(client, tenant_a).json()["id"]
    body = dict(checkpoint_id=checkpoint, dataset_id=dataset, target_ratio=8)
    first = submit_job(client, tenant_a, headers={"Idempotency-Key": "k-1"}, **body)
    again = submit_job(client, tenant_a, headers={"Idempotency-Key": "k-1"}, **body)
    assert first.status_code == 202 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    assert len(enqueued.calls) == 1
    assert client.get("/v1/jobs", headers=tenant_a.headers).json()["total"] == 1


def test_same_idempotency_key_with_a_different_body_is_409(client, tenant_a, enqueued):
    checkpoint = upload_checkpoint(client, tenant_a).json()["id"]
    dataset = upload_dataset(client, tenant_a).json()["id"]
    submit_job(
        client, tenant_a, headers={"Idempotency-Key": "k-2"}, checkpoint_id=checkpoint, dataset_id=dataset
    )
    r = submit_job(
        client,
        tenant_a,
        headers={"Idempotency-Key": "k-2"},
        checkpoint_id=checkpoint,
        dataset_id=dataset,
        target_ratio=20,
    )
    assert r.status_code == 409 and "Idempotency-Key" in r.json()["detail"]
    assert len(enqueued.calls) == 1


def test_idempotency_keys_are_per_tenant(client, tenant_a, tenant_b):
    a = submit_job(client, tenant_a, headers={"Idempotency-Key": "shared"})
    b = submit_job(client, tenant_b, headers={"Idempotency-Key": "shared"})
    assert a.status_code == b.status_code == 202 and a.json()["id"] != b.json()["id"]


def test_broker_failure_marks_the_job_failed_and_answers_503(client, tenant_a, enqueued, db):
    enqueued.fail = True
    r = submit_job(client, tenant_a)
    assert r.status_code == 503 and "broker" in r.json()["detail"]
    (job,) = db.query(Job).all()
    assert job.state == "failed" and "resubmit" in job.error


def test_job_body_shows_progress_eta_losses_and_timestamps(client, tenant_a, db):
    job_id = submit_job(client, tenant_a).json()["id"]
    set_state(db, job_id, "running")
    row = db.get(Job, job_id)
    row.phase, row.progress, row.eta_seconds = "weights", 0.5, 12.0
    row.latest_losses, row.estimated_ratio = {"distill": 0.1, "rate": 0.02}, 9.5
    db.commit()
    body = client.get(f"/v1/jobs/{job_id}", headers=tenant_a.headers).json()
    assert body["state"] == "running" and body["phase"] == "weights"
    assert body["progress_percent"] == 50.0 and body["eta_seconds"] == 12.0
    assert body["latest_losses"] == {"distill": 0.1, "rate": 0.02} and body["estimated_ratio"] == 9.5
    assert body["started_at"] is not None and body["artifact"] is None
    assert datetime.fromisoformat(body["created_at"]).tzinfo is not None


def test_jobs_are_listed_newest_first_with_filters_and_pagination(client, tenant_a, db):
    ids = [submit_job(client, tenant_a).json()["id"] for _ in range(3)]
    set_state(db, ids[0], "running")
    listing = client.get("/v1/jobs", params={"limit": 2}, headers=tenant_a.headers).json()
    assert listing["total"] == 3 and [j["id"] for j in listing["data"]] == ids[::-1][:2]
    page2 = client.get("/v1/jobs", params={"limit": 2, "offset": 2}, headers=tenant_a.headers).json()
    assert [j["id"] for j in page2["data"]] == [ids[0]]
    running = client.get("/v1/jobs", params={"state": "running"}, headers=tenant_a.headers).json()
    assert running["total"] == 1 and running["data"][0]["id"] == ids[0]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert (
        client.get("/v1/jobs", params={"created_after": future}, headers=tenant_a.headers).json()["total"]
        == 0
    )
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    assert (
        client.get("/v1/jobs", params={"created_after": past}, headers=tenant_a.headers).json()["total"] == 3
    )
    bad = client.get("/v1/jobs", params={"state": "sleeping"}, headers=tenant_a.headers)
    assert bad.status_code == 422 and "state" in bad.json()["detail"]


def test_cancelling_a_queued_job_cancels_it_at_once(client, tenant_a):
    job_id = submit_job(client, tenant_a).json()["id"]
    r = client.post(f"/v1/jobs/{job_id}/cancel", headers=tenant_a.headers)
    assert r.status_code == 200 and r.json()["state"] == "canceled" and r.json()["finished_at"]
    events = client.get(f"/v1/jobs/{job_id}/events", headers=tenant_a.headers).json()["data"]
    assert [e["state"] for e in events] == ["queued", "canceled"]


def test_cancelling_a_running_job_asks_the_worker_to_stop(client, tenant_a, db):
    job_id = submit_job(client, tenant_a).json()["id"]
    set_state(db, job_id, "running")
    r = client.post(f"/v1/jobs/{job_id}/cancel", headers=tenant_a.headers)
    assert r.status_code == 200
    assert r.json()["state"] == "running" and r.json()["cancel_requested"] is True
    db.expire_all()
    assert db.get(Job, job_id).cancel_requested is True


@pytest.mark.parametrize("state", ["succeeded", "failed", "canceled"])
def test_cancelling_a_finished_job_is_409(client, tenant_a, db, state):
    job_id = submit_job(client, tenant_a).json()["id"]
    set_state(db, job_id, state)
    r = client.post(f"/v1/jobs/{job_id}/cancel", headers=tenant_a.headers)
    assert r.status_code == 409 and state in r.json()["detail"]


def test_finished_job_shows_its_results_layers_and_artifact(client, tenant_a, db, settings):
    job_id = submit_job(client, tenant_a).json()["id"]
    content = finish_job(db, settings.data_dir, job_id)
    body = client.get(f"/v1/jobs/{job_id}", headers=tenant_a.headers).json()
    assert body["state"] == "succeeded" and body["true_ratio"] == 10.0 and body["progress_percent"] == 100.0
    assert body["artifact"]["bytes"] == len(content) and body["artifact"]["url"].endswith("/artifact")
    assert body["evaluation"]["holdout"]["top1_agreement"] == 0.99
    layers = client.get(f"/v1/jobs/{job_id}/layers", headers=tenant_a.headers).json()["data"]
    assert (
        layers[0]["name"] == "conv.weight"
        and layers[0]["shape"] == [8, 3, 3, 3]
        and layers[0]["levels"] == 17
    )


def test_inputs_in_use_by_an_active_job_cannot_be_deleted(client, tenant_a, db, settings):
    job = submit_job(client, tenant_a).json()
    r = client.delete(f"/v1/checkpoints/{job['checkpoint_id']}", headers=tenant_a.headers)
    assert r.status_code == 409 and job["id"] in r.json()["detail"]
    assert client.delete(f"/v1/datasets/{job['dataset_id']}", headers=tenant_a.headers).status_code == 409
    finish_job(db, settings.data_dir, job["id"])
    assert (
        client.delete(f"/v1/checkpoints/{job['checkpoint_id']}", headers=tenant_a.headers).status_code == 204
    )
    assert client.get(f"/v1/jobs/{job['id']}", headers=tenant_a.headers).json()["checkpoint_id"] is None
