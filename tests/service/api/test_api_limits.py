"""Per-tenant limits: requests per window (429 + Retry-After), concurrent jobs (429) and stored bytes (413),
each refusal naming the limit and the setting that raises it; other tenants are not affected."""

from __future__ import annotations

import pytest
from api_helpers import submit_job, upload_checkpoint
from fastapi.testclient import TestClient

from api.app import create_app
from api.errors import TooManyRequests
from api.services.limits import MemoryWindows, RateLimiter


def limited_client(settings, session_factory, enqueued, **limits) -> TestClient:
    app = create_app(settings.model_copy(update=limits), session_factory=session_factory, enqueue=enqueued)
    return TestClient(app)


def test_requests_past_the_rate_limit_get_429_with_retry_after(settings, session_factory, enqueued, tenant_a, tenant_b):
    with limited_client(settings, session_factory, enqueued, rate_limit_per_window=3, rate_limit_window_s=60) as c:
        for _ in range(3):
            assert c.get("/v1/jobs", headers=tenant_a.headers).status_code == 200
        r = c.get("/v1/jobs", headers=tenant_a.headers)
        assert r.status_code == 429
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        assert "rate limit" in r.json()["detail"] and "L2_RATE_LIMIT_PER_WINDOW" in r.json()["detail"]
        assert c.get("/v1/jobs", headers=tenant_b.headers).status_code == 200  # per tenant
        assert c.get("/healthz").status_code == 200  # health is never limited


def test_the_window_resets(settings):
    now = [1000.0]
    limiter = RateLimiter(settings.model_copy(update={"rate_limit_per_window": 1, "rate_limit_window_s": 10}))
    limiter.clock = lambda: now[0]
    assert isinstance(limiter.windows, MemoryWindows)
    limiter.check("t")
    with pytest.raises(TooManyRequests) as refused:
        limiter.check("t")
    assert refused.value.headers["Retry-After"] == "10"
    now[0] = 1010.0
    limiter.check("t")


def test_a_job_past_the_concurrent_job_limit_gets_429(settings, session_factory, enqueued, tenant_a):
    with limited_client(settings, session_factory, enqueued, max_concurrent_jobs=1) as c:
        assert submit_job(c, tenant_a).status_code == 202
        r = submit_job(c, tenant_a)
        assert r.status_code == 429 and "Retry-After" in r.headers
        assert "concurrent job limit" in r.json()["detail"] and "L2_MAX_CONCURRENT_JOBS" in r.json()["detail"]
        assert len(enqueued.calls) == 1


def test_a_plain_upload_past_the_stored_bytes_quota_gets_413(settings, session_factory, enqueued, tenant_a, tenant_b):
    with limited_client(settings, session_factory, enqueued, max_stored_bytes=5000) as c:
        assert upload_checkpoint(c, tenant_a, b"x" * 3000).status_code == 201
        r = upload_checkpoint(c, tenant_a, b"x" * 3000)
        assert r.status_code == 413
        assert "stored-bytes quota" in r.json()["detail"] and "L2_MAX_STORED_BYTES" in r.json()["detail"]
        assert c.get("/v1/checkpoints", headers=tenant_a.headers).json()["total"] == 1
        assert upload_checkpoint(c, tenant_b, b"x" * 3000).status_code == 201
