"""Webhooks through the API and the dispatcher, with a real local HTTP receiver, on PostgreSQL and SQLite.

The dispatcher (`worker.events.dispatcher.Dispatcher`) runs in the test's process here, stepped by the test;
the state changes go through `store.job_states`, exactly the functions the API and the workers call, so the
outbox rows are the ones production writes. The end-to-end version with real worker processes is
tests/service/worker/test_worker_webhooks.py."""

from __future__ import annotations

import time

import pytest
from api_helpers import submit_job
from sqlalchemy import select

from l2_client.webhooks import WebhookVerificationError, verify_webhook
from store import job_states
from store.job_states import still_claimed_by
from store.models import Job, OutboxEvent, WebhookDelivery, WebhookEndpoint
from store.outbox import emit
from worker.events.dispatcher import Dispatcher

pytestmark = pytest.mark.service

ALLOW = ["127.0.0.1"]


@pytest.fixture
def hook_settings(settings):
    return settings.model_copy(
        update={
            "webhook_allow": ALLOW,
            "webhook_retry_base_s": 0.05,
            "webhook_retry_max_s": 0.2,
            "webhook_timeout_s": 5.0,
        }
    )


@pytest.fixture
def hook_app(hook_settings, session_factory, enqueued, db):
    from api.app import create_app

    return create_app(hook_settings, session_factory=session_factory, enqueue=enqueued)


@pytest.fixture
def hook_client(hook_app):
    from fastapi.testclient import TestClient

    with TestClient(hook_app) as c:
        yield c


@pytest.fixture
def dispatcher(hook_settings, session_factory):
    d = Dispatcher(session_factory, hook_settings)
    yield d
    d.close()


def pump(dispatcher: Dispatcher, until, timeout_s: float = 20.0, what: str = "condition") -> None:
    """Step the dispatcher until ``until()`` holds, then settle what is still in flight."""
    deadline = time.monotonic() + timeout_s
    while not until():
        assert time.monotonic() < deadline, f"{what} did not happen in {timeout_s} s"
        dispatcher.step(wait_s=0.02)
    dispatcher.drain_in_flight()


def register(client, tenant, url: str, **body) -> dict:
    response = client.post("/v1/webhooks", json={"url": url, **body}, headers=tenant.headers)
    assert response.status_code == 201, response.text
    return response.json()


def run_job_to_success(session_factory, job_id: str, progress_events: int = 1) -> None:
    """What a worker does to the row: claim, report progress, succeed (each with its outbox event)."""
    with session_factory() as s:
        queued = (Job.id == job_id, Job.state == "queued")
        assert job_states.start_attempt(s, job_id, queued, owner="w:1", attempt=1, first=True, message="go")
        s.commit()
    for _ in range(progress_events):
        with session_factory() as s:
            emit(s, job_id, "job.progress")
            s.commit()
    with session_factory() as s:
        assert job_states.succeed(
            s,
            job_id,
            still_claimed_by(job_id, "w:1", 1),
            "done",
            artifact_path=f"artifacts/x/{job_id}.l2",
            artifact_bytes=1234,
            artifact_sha256="ab" * 32,
            true_ratio=10.02,
            original_bytes=12365,
            evaluation={"holdout": {"top1_agreement": 0.99}},
        )
        s.commit()


# -- registration and SSRF ----
PRIVATE = [
    ("http://10.1.2.3/hook", "private"),
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ("http://[::1]:8080/hook", "loopback"),
    ("http://localhost:9/hook", "loopback"),
    ("http://192.168.0.10/hook", "private"),
]


def test_a_private_address_is_refused_with_a_clear_422(client, tenant_a):
    for url, kind in PRIVATE:
        response = client.post("/v1/webhooks", json={"url": url}, headers=tenant_a.headers)
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert f"{kind} address" in detail and "L2_WEBHOOK_ALLOW" in detail, detail


def test_a_per_job_webhook_url_to_a_private_address_is_refused(client, tenant_a):
    response = submit_job(client, tenant_a, webhook_url="http://127.0.0.1:9/hook")
    assert response.status_code == 422
    assert "webhook_url" in response.json()["detail"] and "loopback" in response.json()["detail"]


def test_only_http_urls_without_credentials_are_accepted(hook_client, tenant_a):
    for url in ("ftp://127.0.0.1/x", "file:///etc/passwd", "http://user:pw@127.0.0.1/x"):
        response = hook_client.post("/v1/webhooks", json={"url": url}, headers=tenant_a.headers)
        assert response.status_code == 422, url


def test_the_secret_is_shown_once_and_rotation_keeps_the_old_one_signing(hook_client, tenant_a, tenant_b, receiver):
    created = register(hook_client, tenant_a, receiver.url, events=["job.succeeded"], description="ci")
    assert created["secret"].startswith("whsec_") and created["events"] == ["job.succeeded"]
    shown = hook_client.get(f"/v1/webhooks/{created['id']}", headers=tenant_a.headers).json()
    assert shown["secret"] is None and shown["status"] == "active"
    assert hook_client.get(f"/v1/webhooks/{created['id']}", headers=tenant_b.headers).status_code == 404
    listed = hook_client.get("/v1/webhooks", headers=tenant_a.headers).json()
    assert [w["id"] for w in listed["data"]] == [created["id"]]
    assert all(w["secret"] is None for w in listed["data"])

    rotated = hook_client.post(f"/v1/webhooks/{created['id']}/rotate-secret", headers=tenant_a.headers).json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != created["secret"]
    assert rotated["previous_secret_expires_at"] is not None

    assert hook_client.delete(f"/v1/webhooks/{created['id']}", headers=tenant_a.headers).status_code == 204
    assert hook_client.get(f"/v1/webhooks/{created['id']}", headers=tenant_a.headers).status_code == 404


# -- delivery ----
def test_every_event_of_a_job_arrives_signed_in_order(hook_client, tenant_a, receiver, dispatcher, session_factory):
    secret = register(hook_client, tenant_a, receiver.url)["secret"]
    job = submit_job(hook_client, tenant_a).json()
    run_job_to_success(session_factory, job["id"])
    pump(dispatcher, lambda: len(receiver.received) >= 4, what="4 deliveries")

    types = [r.type for r in receiver.received]
    assert types == ["job.queued", "job.started", "job.progress", "job.succeeded"]
    for item in receiver.received:
        event = verify_webhook(item.headers, item.body, secret)
        assert event["data"]["id"] == job["id"]
        with pytest.raises(WebhookVerificationError):
            verify_webhook(item.headers, item.body.replace(b"job", b"jab"), secret)
    assert len({r.id for r in receiver.received}) == 4
    succeeded = receiver.received[-1].event["data"]
    assert succeeded["true_ratio"] == pytest.approx(10.02)
    assert succeeded["artifact"] == {
        "url": f"/v1/jobs/{job['id']}/artifact",
        "bytes": 1234,
        "sha256": "ab" * 32,
    }
    assert succeeded["evaluation"] == {"holdout": {"top1_agreement": 0.99}}


def test_500_three_times_then_200_delivers_exactly_once_more_with_the_same_id(
    hook_client, tenant_a, receiver, dispatcher, session_factory
):
    endpoint = register(hook_client, tenant_a, receiver.url, events=["job.queued"])
    receiver.answer = lambda received, n: 500 if n <= 3 else 200
    job = submit_job(hook_client, tenant_a).json()
    pump(dispatcher, lambda: receiver.answered >= 4, what="4 answers")
    for _ in range(10):  # more rounds: nothing else may be sent
        dispatcher.step(wait_s=0.05)
    dispatcher.drain_in_flight()

    assert len(receiver.received) == 4 and len({r.id for r in receiver.received}) == 1
    log = hook_client.get(f"/v1/webhooks/{endpoint['id']}/deliveries", headers=tenant_a.headers).json()
    assert log["total"] == 1
    delivery = log["data"][0]
    assert delivery["status"] == "succeeded" and delivery["attempts"] == 4
    assert delivery["event_id"] == receiver.received[0].id and delivery["job_id"] == job["id"]
    assert [a["status_code"] for a in delivery["log"]] == [200, 500, 500, 500]
    assert all(a["latency_ms"] is not None for a in delivery["log"])
    assert delivery["log"][1]["response_snippet"] == "receiver says no"


def test_after_the_retry_window_the_endpoint_is_failing_and_redelivery_recovers_it(
    hook_client, tenant_a, receiver, session_factory, hook_settings
):
    endpoint = register(hook_client, tenant_a, receiver.url, events=["job.queued"])
    receiver.answer = lambda received, n: 503
    submit_job(hook_client, tenant_a)
    short = Dispatcher(session_factory, hook_settings.model_copy(update={"webhook_retry_window_s": 0.3}))
    try:
        pump(short, lambda: _delivery(session_factory, endpoint["id"]).status == "failed", what="giving up")
        shown = hook_client.get(f"/v1/webhooks/{endpoint['id']}", headers=tenant_a.headers).json()
        assert shown["status"] == "failing" and shown["failing_since"] is not None
        sent = len(receiver.received)
        assert sent >= 1

        receiver.answer = lambda received, n: 200
        delivery_id = _delivery(session_factory, endpoint["id"]).id
        again = hook_client.post(
            f"/v1/webhooks/{endpoint['id']}/deliveries/{delivery_id}/redeliver", headers=tenant_a.headers
        )
        assert again.status_code == 202 and again.json()["status"] == "pending"
        pump(short, lambda: _delivery(session_factory, endpoint["id"]).status == "succeeded", what="redelivery")
    finally:
        short.close()
    assert len(receiver.received) == sent + 1 and receiver.received[-1].id == receiver.received[0].id
    shown = hook_client.get(f"/v1/webhooks/{endpoint['id']}", headers=tenant_a.headers).json()
    assert shown["status"] == "active" and shown["failing_since"] is None


def _delivery(session_factory, endpoint_id: str) -> WebhookDelivery:
    """The endpoint's one delivery (an empty one until the event has been fanned out)."""
    with session_factory() as s:
        found = s.execute(
            select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
        ).scalar_one_or_none()
    return found or WebhookDelivery(status=None, attempts=0)


def test_progress_reaches_an_endpoint_at_most_once_per_interval(
    hook_client, tenant_a, receiver, dispatcher, session_factory
):
    register(hook_client, tenant_a, receiver.url, events=["job.progress", "job.succeeded"])
    job = submit_job(hook_client, tenant_a).json()
    run_job_to_success(session_factory, job["id"], progress_events=6)
    pump(dispatcher, lambda: bool(receiver.of_type("job.succeeded")), what="job.succeeded")
    assert [r.type for r in receiver.received] == ["job.progress", "job.succeeded"]
    with session_factory() as s:  # all six are in the outbox; the throttle is per endpoint
        progress = s.execute(select(OutboxEvent).where(OutboxEvent.type == "job.progress")).scalars().all()
    assert len(progress) == 6


def test_a_per_job_webhook_url_gets_only_that_jobs_events(hook_client, tenant_a, receiver, dispatcher, session_factory):
    first = submit_job(hook_client, tenant_a, webhook_url=receiver.url, webhook_events=["job.queued"])
    assert first.status_code == 202
    job = first.json()
    assert job["webhook_url"] == receiver.url and job["webhook_secret"].startswith("whsec_")
    assert hook_client.get(f"/v1/jobs/{job['id']}", headers=tenant_a.headers).json()["webhook_secret"] is None
    submit_job(hook_client, tenant_a)  # another job of the tenant: not sent to this URL
    pump(dispatcher, lambda: len(receiver.received) >= 1, what="the job's event")
    for _ in range(5):
        dispatcher.step(wait_s=0.05)
    dispatcher.drain_in_flight()
    assert [r.type for r in receiver.received] == ["job.queued"]
    assert (
        verify_webhook(receiver.received[0].headers, receiver.received[0].body, job["webhook_secret"])["data"]["id"]
        == job["id"]
    )


def test_a_redirect_is_not_followed(hook_client, tenant_a, receiver, dispatcher, session_factory):
    endpoint = register(hook_client, tenant_a, receiver.url, events=["job.queued"])
    receiver.answer = lambda received, n: 302
    submit_job(hook_client, tenant_a)
    pump(dispatcher, lambda: _delivery(session_factory, endpoint["id"]).attempts >= 1, what="one attempt")
    delivery = _delivery(session_factory, endpoint["id"])
    assert delivery.status == "pending" and delivery.last_status_code == 302
    assert "redirects are not followed" in delivery.last_error


def test_the_dispatcher_checks_the_address_again_before_sending(
    hook_client, tenant_a, receiver, session_factory, hook_settings
):
    endpoint = register(hook_client, tenant_a, receiver.url, events=["job.queued"])
    submit_job(hook_client, tenant_a)
    strict = Dispatcher(session_factory, hook_settings.model_copy(update={"webhook_allow": []}))
    try:
        pump(strict, lambda: _delivery(session_factory, endpoint["id"]).attempts >= 1, what="one attempt")
    finally:
        strict.close()
    assert receiver.received == []
    assert "loopback address" in _delivery(session_factory, endpoint["id"]).last_error


def test_a_job_event_is_written_with_its_state_change_or_not_at_all(hook_client, tenant_a, session_factory):
    job = submit_job(hook_client, tenant_a).json()
    with session_factory() as s:
        queued = (Job.id == job["id"], Job.state == "queued")
        job_states.start_attempt(s, job["id"], queued, owner="w:1", attempt=1, first=True, message="go")
        s.rollback()  # the change did not happen: neither did its event
    with session_factory() as s:
        types = s.execute(select(OutboxEvent.type).where(OutboxEvent.job_id == job["id"])).scalars().all()
        assert types == ["job.queued"]
        assert s.execute(select(WebhookEndpoint)).first() is None


def test_a_delivery_whose_dispatcher_died_mid_attempt_is_sent_again_with_the_same_id(
    hook_client, tenant_a, receiver, session_factory, hook_settings, monkeypatch
):
    from worker.events import dispatcher as dispatcher_module

    monkeypatch.setattr(dispatcher_module, "LEASE_MARGIN_S", 0.0)
    quick = hook_settings.model_copy(update={"webhook_timeout_s": 0.5})
    register(hook_client, tenant_a, receiver.url, events=["job.queued"])
    job = submit_job(hook_client, tenant_a).json()
    dead, alive = Dispatcher(session_factory, quick), Dispatcher(session_factory, quick)
    try:
        dead.fan_out()
        assert len(dead.lease(10)) == 1  # ... and then this dispatcher dies: no request, no result
        assert alive.lease(10) == []  # leased: nobody else sends it meanwhile
        pump(alive, lambda: len(receiver.received) == 1, what="the redelivery after the lease ran out")
    finally:
        dead.close()
        alive.close()
    with session_factory() as s:
        event_id = s.execute(select(OutboxEvent.id).where(OutboxEvent.job_id == job["id"])).scalar_one()
    assert receiver.received[0].id == event_id


def test_settled_events_past_the_retention_are_pruned_with_their_log(
    hook_client, tenant_a, receiver, dispatcher, session_factory, hook_settings
):
    endpoint = register(hook_client, tenant_a, receiver.url, events=["job.queued"])
    submit_job(hook_client, tenant_a)
    pump(dispatcher, lambda: _delivery(session_factory, endpoint["id"]).status == "succeeded", what="delivery")
    assert dispatcher.prune() == 0  # younger than the retention
    expired = Dispatcher(session_factory, hook_settings.model_copy(update={"webhook_retention_days": 1e-9}))
    try:
        assert expired.prune() == 1
    finally:
        expired.close()
    with session_factory() as s:
        assert s.execute(select(WebhookDelivery)).first() is None
        assert s.execute(select(OutboxEvent)).first() is None
