"""What a status poll costs: once a client's key is known, ``GET /v1/jobs/{id}`` is one primary-key read, and
the remembered answers of `api.caller_cache` expire and stay bounded. (Throughput itself is measured by
bench/bench_polling.py, never in tests.)"""

from __future__ import annotations

from contextlib import contextmanager

from api_helpers import finish_job, submit_job
from sqlalchemy import event

from api.auth import revoke_key
from api.caller_cache import CallerCache
from store.models import MlflowExport


@contextmanager
def statements(session_factory):
    """The SQL statements sent through ``session_factory``'s engine inside the block."""
    seen: list[str] = []
    engine = session_factory.kw["bind"]

    def count(conn, cursor, statement, *args) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", count)


def test_polling_a_job_with_a_key_reads_only_the_job_row(client, tenant_a, session_factory):
    job_id = submit_job(client, tenant_a).json()["id"]
    assert client.get(f"/v1/jobs/{job_id}", headers=tenant_a.headers).status_code == 200  # the key is looked up
    with statements(session_factory) as seen:
        for _ in range(5):
            assert client.get(f"/v1/jobs/{job_id}", headers=tenant_a.headers).status_code == 200
    assert len(seen) == 5, seen
    assert all("FROM jobs" in s and "api_keys" not in s for s in seen), seen


def test_polling_a_job_with_auth_off_reads_only_the_job_row(client, settings, session_factory):
    settings.auth_enabled = False
    job_id = client.post(
        "/v1/jobs",
        json={
            "checkpoint_id": client.post("/v1/checkpoints", params={"filename": "m.pt"}, content=b"x" * 64).json()[
                "id"
            ],
            "dataset_id": client.post("/v1/datasets/upload", params={"filename": "c.npy"}, content=b"y" * 64).json()[
                "id"
            ],
            "target_ratio": 10.0,
        },
    ).json()["id"]
    with statements(session_factory) as seen:
        for _ in range(5):
            assert client.get(f"/v1/jobs/{job_id}").status_code == 200
    assert len(seen) == 5 and all("tenants" not in s for s in seen), seen


def test_the_polled_read_answers_what_the_job_list_shows(client, tenant_a, tenant_b, settings, db):
    """``GET /v1/jobs/{id}`` reads its row with SQLAlchemy Core, the list through the ORM: the same job must
    read the same in both, queued and succeeded (artifact, webhook URL, MLflow block and export state)."""
    settings.webhook_allow = ["127.0.0.1"]
    mlflow = {"tracking_uri": "http://127.0.0.1:5000", "registered_model": "digits"}
    job_id = submit_job(client, tenant_a, webhook_url="http://127.0.0.1:9/hook", mlflow=mlflow).json()["id"]

    def polled_and_listed() -> tuple[dict, dict]:
        polled = client.get(f"/v1/jobs/{job_id}", headers=tenant_a.headers)
        assert polled.status_code == 200, polled.text
        listed = client.get("/v1/jobs", headers=tenant_a.headers).json()["data"]
        return polled.json(), next(j for j in listed if j["id"] == job_id)

    polled, listed = polled_and_listed()
    assert polled == listed and polled["state"] == "queued" and polled["artifact"] is None
    content = finish_job(db, settings.data_dir, job_id)
    db.add(
        MlflowExport(
            tenant_id=tenant_a.tenant_id, job_id=job_id, config=mlflow, status="logged", attempts=2, run_id="run-1"
        )
    )
    db.commit()
    polled, listed = polled_and_listed()
    assert polled == listed
    assert polled["state"] == "succeeded" and polled["artifact"]["bytes"] == len(content)
    assert polled["webhook_url"] == "http://127.0.0.1:9/hook" and polled["webhook_secret"] is None
    assert polled["mlflow"]["status"] == "logged" and polled["mlflow"]["run_id"] == "run-1"
    other = client.get(f"/v1/jobs/{job_id}", headers=tenant_b.headers)
    assert other.status_code == 404 and "GET /v1/jobs" in other.json()["detail"]


def test_a_revoked_key_is_refused_once_its_remembered_answer_expires(client, tenant_a, db, app):
    clock = [0.0]
    app.state.ctx.callers = CallerCache(ttl_s=5.0, clock=lambda: clock[0])
    assert client.get("/v1/jobs", headers=tenant_a.headers).status_code == 200
    assert revoke_key(db, tenant_a.key.split("_")[1])
    clock[0] = 4.9
    assert client.get("/v1/jobs", headers=tenant_a.headers).status_code == 200  # within the documented 5 s
    clock[0] = 5.1
    assert client.get("/v1/jobs", headers=tenant_a.headers).status_code == 401


def test_the_caller_cache_keeps_at_most_its_bound_and_remembers_refusals():
    calls = []
    cache = CallerCache(ttl_s=60, max_entries=3)
    for key in "abcd":
        cache.get(key, lambda key=key: calls.append(key) or None)
    assert len(cache._entries) == 3 and "a" not in cache._entries  # the oldest went first
    cache.get("d", lambda: calls.append("d again"))
    assert calls == ["a", "b", "c", "d"]  # a remembered "not valid" costs no lookup
