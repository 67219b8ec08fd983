"""The web UI's server side without a browser (FastAPI's TestClient on a migrated SQLite database): sessions and
their cookie flags, CSRF on every POST, the login's redirect target, the banner when authentication is off, the
form's 422 shape, and the served plotly bundle."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import create_key, revoke_key
from store.db import make_engine, make_session_factory
from store.migrate import upgrade_database
from store.settings import Settings


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ui-pages")
    url = f"sqlite:///{folder / 'l2.db'}"
    upgrade_database(url)
    engine = make_engine(url)
    yield folder, url, make_session_factory(engine)
    engine.dispose()


def app_client(database, *, auth: bool, ui: bool = True) -> TestClient:
    folder, url, _ = database
    settings = Settings(data_dir=folder, database_url=url, auth_enabled=auth, ui_enabled=ui)
    return TestClient(create_app(settings, enqueue=lambda job_id, queue: None))


def new_key(database, tenant: str) -> str:
    with database[2]() as session:
        return create_key(session, tenant).key


def login_token(client: TestClient) -> str:
    page = client.get("/ui/login")
    return re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)


def signed_in(database, tenant: str = "pages-a") -> tuple[TestClient, str]:
    client = app_client(database, auth=True)
    key = new_key(database, tenant)
    answer = client.post("/ui/login", data={"csrf_token": login_token(client), "api_key": key}, follow_redirects=False)
    assert answer.status_code == 303
    return client, key


def page_csrf(client: TestClient, path: str = "/ui/new") -> str:
    return re.search(r'name="csrf-token" content="([^"]+)"', client.get(path).text).group(1)


def test_root_redirects_to_the_ui_and_not_when_it_is_off(database):
    assert app_client(database, auth=False).get("/", follow_redirects=False).headers["location"] == "/ui"
    off = app_client(database, auth=False, ui=False)
    assert off.get("/ui").status_code == 404
    assert off.get("/", follow_redirects=False).status_code == 404


def test_every_page_says_when_authentication_is_off(database):
    client = app_client(database, auth=False)
    for path in ("/ui", "/ui/new", "/ui/compare"):
        page = client.get(path)
        assert page.status_code == 200
        assert 'id="auth-off-banner"' in page.text and "Authentication is off" in page.text
    signed, _ = signed_in(database)
    assert "auth-off-banner" not in signed.get("/ui").text


def test_session_cookie_is_httponly_samesite_strict_and_pages_send_a_csp(database):
    client = app_client(database, auth=True)
    key = new_key(database, "pages-cookie")
    answer = client.post("/ui/login", data={"csrf_token": login_token(client), "api_key": key}, follow_redirects=False)
    cookie = answer.headers["set-cookie"].lower()
    assert "l2_ui_session=" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    assert "path=/ui" in cookie
    secret = key.split("_", 2)[2]  # token_urlsafe may itself hold "_", so split only twice
    assert secret.lower() not in cookie, "the cookie must not carry the key's secret"
    page = client.get("/ui")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"


def test_a_tampered_or_revoked_session_goes_back_to_login(database):
    client, key = signed_in(database, "pages-revoke")
    assert client.get("/ui", follow_redirects=False).status_code == 200
    original = client.cookies.get("l2_ui_session")
    payload, signature = original.split(".")
    fresh = app_client(database, auth=True)  # no cookie jar of its own: each request names its cookie
    for cookie in (original, payload + "." + signature[::-1], payload[:-2] + "." + signature):
        answer = fresh.get("/ui", headers={"Cookie": f"l2_ui_session={cookie}"}, follow_redirects=False)
        assert answer.status_code == (200 if cookie == original else 303)
    with database[2]() as session:
        assert revoke_key(session, key.split("_")[1])
    assert client.get("/ui", follow_redirects=False).headers["location"].startswith("/ui/login")
    assert client.get("/ui/api/jobs/x/live").status_code == 401


def test_login_needs_its_csrf_token_and_never_redirects_off_site(database):
    client = app_client(database, auth=True)
    key = new_key(database, "pages-login")
    client.get("/ui/login")
    assert client.post("/ui/login", data={"api_key": key}).status_code == 403
    answer = client.post(
        "/ui/login",
        data={"csrf_token": login_token(client), "api_key": key, "next": "https://evil.example/"},
        follow_redirects=False,
    )
    assert answer.headers["location"] == "/ui"


def test_uploads_need_the_csrf_token_and_land_in_the_sessions_tenant(database):
    client, key = signed_in(database, "pages-upload")
    refused = client.post("/ui/api/checkpoints", params={"filename": "m.pt"}, content=b"weights")
    assert refused.status_code == 403
    forged = client.post(
        "/ui/api/checkpoints", params={"filename": "m.pt"}, content=b"weights", headers={"X-CSRF-Token": "guess"}
    )
    assert forged.status_code == 403
    stored = client.post(
        "/ui/api/checkpoints",
        params={"filename": "m.pt"},
        content=b"weights",
        headers={"X-CSRF-Token": page_csrf(client)},
    )
    assert stored.status_code == 201
    assert stored.json()["sha256"] == hashlib.sha256(b"weights").hexdigest()
    listed = client.get("/v1/checkpoints", headers={"Authorization": f"Bearer {key}"}).json()["data"]
    assert [c["id"] for c in listed] == [stored.json()["id"]]
    other = new_key(database, "pages-other")
    assert client.get("/v1/checkpoints", headers={"Authorization": f"Bearer {other}"}).json()["data"] == []


def test_an_empty_picker_says_to_upload_and_an_upload_replaces_that(database):
    client, _ = signed_in(database, "pages-empty")
    placeholder = "nothing uploaded yet: upload a file below"
    assert client.get("/ui/new").text.count(placeholder) == 2  # checkpoint and calibration data
    client.post(
        "/ui/api/checkpoints", params={"filename": "m.pt"}, content=b"w", headers={"X-CSRF-Token": page_csrf(client)}
    )
    page = client.get("/ui/new").text
    assert page.count(placeholder) == 1 and "m.pt" in page


def test_a_bad_job_comes_back_as_the_apis_422_with_one_entry_per_field(database):
    client, _ = signed_in(database, "pages-422")
    answer = client.post(
        "/ui/api/jobs",
        json={"checkpoint_id": "c", "dataset_id": "d", "target_ratio": 0.5, "options": {"nope": 1}},
        headers={"X-CSRF-Token": page_csrf(client)},
    )
    assert answer.status_code == 422
    fields = {tuple(e["loc"][:2]) for e in answer.json()["errors"]}
    assert ("body", "target_ratio") in fields and ("body", "options") in fields


def test_cancel_form_without_the_token_is_refused(database):
    client, _ = signed_in(database, "pages-cancel")
    assert client.post("/ui/jobs/any/cancel", data={"csrf_token": "wrong"}).status_code == 403


def test_the_plotly_bundle_comes_from_the_installed_wheel(database):
    client = app_client(database, auth=False)
    bundle = client.get("/ui/vendor/plotly.min.js")
    assert bundle.status_code == 200 and bundle.headers["content-type"].startswith("text/javascript")
    assert b"plotly" in bundle.content[:2000].lower() and len(bundle.content) > 1_000_000


def test_loss_points_reach_the_job_page_and_only_its_tenant(database):
    from store.models import Checkpoint, Dataset, Job, JobLossPoint, Tenant

    client, _ = signed_in(database, "pages-losses")
    stranger, _ = signed_in(database, "pages-stranger")
    with database[2]() as session:
        tenant_id = session.query(Tenant).filter_by(name="pages-losses").one().id
        checkpoint = Checkpoint(tenant_id=tenant_id, filename="m.pt", path="x", size_bytes=1, sha256="0" * 64)
        dataset = Dataset(tenant_id=tenant_id, name="d", source="upload", path="x", spec={})
        session.add_all([checkpoint, dataset])
        session.flush()
        job = Job(
            tenant_id=tenant_id,
            checkpoint_id=checkpoint.id,
            dataset_id=dataset.id,
            target_ratio=10.0,
            state="running",
            phase="weights",
            progress=0.5,
        )
        session.add(job)
        session.flush()
        for i in range(3):
            session.add(
                JobLossPoint(
                    job_id=job.id,
                    phase="weights",
                    progress=0.1 * i,
                    estimated_ratio=9.5,
                    losses={
                        "distortion": 1.0 / (i + 1),
                        "rate_bits_per_weight": 3.0,
                        "budget_bits_per_weight": 2.9,
                        "total": float("nan"),
                    },
                )
            )
        session.commit()
        job_id = job.id
    page = client.get(f"/ui/jobs/{job_id}").text
    embedded = json.loads(re.search(r'id="loss-points">(.*?)</script>', page, re.S).group(1))
    assert [p["distortion"] for p in embedded] == [1.0, 0.5, 1.0 / 3]
    assert all("total" not in p for p in embedded), "non-finite losses are left out"
    live = client.get(f"/ui/api/jobs/{job_id}/live", params={"after": embedded[0]["seq"]}).json()
    assert [p["seq"] for p in live["loss_points"]] == [p["seq"] for p in embedded[1:]]
    assert stranger.get(f"/ui/api/jobs/{job_id}/live").status_code == 404
    assert stranger.get(f"/ui/jobs/{job_id}").status_code == 404


def test_reproduce_commands_send_the_same_request_again():
    from api.ui.views import reproduce_commands
    from store.models import Job

    job = Job(
        checkpoint_id="ck",
        dataset_id="ds",
        architecture="digits_cnn",
        arch_kwargs={},
        target_ratio=12.0,
        options={"preset": "fast", "rounds": 1},
        device="cpu",
    )
    commands = reproduce_commands(job, "http://127.0.0.1:8000/", auth_enabled=True)
    sent = json.loads(re.search(r"-d '(.*)'", commands["curl"]).group(1))
    assert sent == {
        "checkpoint_id": "ck",
        "dataset_id": "ds",
        "architecture": "digits_cnn",
        "target_ratio": 12.0,
        "preset": "fast",
        "options": {"rounds": 1},
        "device": "cpu",
    }
    assert "Bearer $L2_API_KEY" in commands["curl"] and "http://127.0.0.1:8000/v1/jobs" in commands["curl"]
    assert '"preset": "fast"' in commands["python"] and "L2_API_KEY" in commands["python"]
    assert "Authorization" not in reproduce_commands(job, "http://h/", auth_enabled=False)["curl"]


def test_compare_page_charts_the_chosen_score_of_succeeded_jobs_only(database):
    """The compare page's numbers come out of SQL (counts, the score inside the evaluation JSON): the chart gets
    one point per succeeded job of the tenant's checkpoint that has the chosen score, the selector only the
    scores some job has, and the jobs list (which loads only its columns) shows the same jobs."""
    from store.models import Checkpoint, Job, Tenant

    client, _ = signed_in(database, "pages-compare")
    stranger, _ = signed_in(database, "pages-compare-other")
    with database[2]() as session:
        tenant_id = session.query(Tenant).filter_by(name="pages-compare").one().id
        checkpoint = Checkpoint(tenant_id=tenant_id, filename="m.pt", path="x", size_bytes=1, sha256="0" * 64)
        session.add(checkpoint)
        session.flush()
        evaluations = [
            {"holdout": {"top1_agreement": 0.9, "sqnr_db": 20.0}},
            {"holdout": {"top1_agreement": 0.8, "sqnr_db": 18.0}},
            {"holdout": {"sqnr_db": 15.0}},  # no agreement: not on the agreement chart
        ]
        for ratio, evaluation in zip((8.0, 12.0, 16.0), evaluations, strict=True):
            session.add(
                Job(
                    tenant_id=tenant_id,
                    checkpoint_id=checkpoint.id,
                    target_ratio=ratio,
                    true_ratio=ratio + 0.01,
                    state="succeeded",
                    options={"rounds": 1},
                    evaluation=evaluation,
                )
            )
        session.add(Job(tenant_id=tenant_id, checkpoint_id=checkpoint.id, target_ratio=4.0, state="failed"))
        session.commit()

    def chart(answer) -> dict:
        assert answer.status_code == 200
        return json.loads(re.search(r'id="compare-data">(.*?)</script>', answer.text, re.S).group(1))

    page = client.get("/ui/compare")
    data = chart(page)
    assert data["metric"] == "holdout_agreement"  # the first score of views.SCORES some job has
    assert sorted((p["true_ratio"], p["score"]) for p in data["points"]) == [(8.01, 0.9), (12.01, 0.8)]
    assert all(p["options"] == {"rounds": 1} for p in data["points"])
    options = re.findall(r'<option value="(\w+)" (?:selected)?>', page.text)
    assert options == ["holdout_agreement", "holdout_sqnr_db"]
    assert page.text.count('<tr><td><a class="mono" href="/ui/jobs/') == 3  # succeeded only
    sqnr = chart(client.get("/ui/compare", params={"metric": "holdout_sqnr_db"}))
    assert sorted(p["score"] for p in sqnr["points"]) == [15.0, 18.0, 20.0]
    jobs = client.get("/ui")
    assert jobs.status_code == 200 and jobs.text.count('class="job-row') == 4
    assert "18.0 dB" not in jobs.text and "90.00 %" in jobs.text  # the headline score of each row
    assert "No jobs yet" in stranger.get("/ui/compare").text
