"""The web UI in a real browser (headless chromium through Playwright) against a real stack: uploads, a job
followed live to its end, the per-layer story checked against the API, the download's SHA-256, cancel, login
and tenant isolation. One module-scoped job feeds several tests to keep the whole file near a minute."""

from __future__ import annotations

import hashlib
import json
import re

import httpx
import pytest

expect = pytest.importorskip("playwright.sync_api").expect

pytestmark = pytest.mark.service

# A tiny schedule: the digits CNN compresses in seconds, which is all these tests need to see.
QUICK_OPTIONS = {"rounds": 0}
# Long enough to still be running when the cancel button is pressed.
SLOW_OPTIONS = {"rounds": 50, "transform_iters": 5000, "weight_iters": 5000}


def api(ui_stack, tenant) -> httpx.Client:
    return httpx.Client(base_url=ui_stack.base_url, headers={"Authorization": f"Bearer {tenant.key}"}, timeout=60)


def sign_in(browser, ui_stack, tenant):
    context = browser.new_context(base_url=ui_stack.base_url, accept_downloads=True)
    context.set_default_timeout(120_000)  # generous: the 2-core CI machine is busy with the worker meanwhile
    page = context.new_page()
    page.goto("/ui")
    assert "/ui/login" in page.url, "an anonymous visit must land on the login page"
    page.fill("#api_key", tenant.key)
    page.click("#login-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/ui$"))
    assert page.inner_text("#tenant-name") == tenant.name
    return context, page


def sha256_file(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def upload(page, field: str, path, *, kind: str | None = None, labels: str | None = None) -> str:
    """Upload through the form; returns the SHA-256 the page shows once the server has stored the file."""
    picker = page.locator(f'[data-picker="{field}"]')
    if kind:
        picker.locator('[data-spec="kind"]').select_option(kind)
    if labels:
        picker.locator('[data-spec="labels_key"]').fill(labels)
    picker.locator("input[type=file]").set_input_files(str(path))
    sha = picker.locator(".upload-status code.sha256")
    sha.wait_for(timeout=60_000)
    return sha.inner_text()


@pytest.fixture(scope="module")
def finished_job(browser, ui_stack, ui_digits):
    """Tenant A's digits job, submitted through the form and watched on its page until it succeeded."""
    context, page = sign_in(browser, ui_stack, ui_stack.a)
    problems: list[str] = []  # script errors and CSP violations on any page this tab opens
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.goto("/ui/new")
    assert upload(page, "checkpoint_id", ui_digits.checkpoint) == sha256_file(ui_digits.checkpoint)
    assert upload(page, "dataset_id", ui_digits.calibration, kind="tensors") == sha256_file(ui_digits.calibration)
    assert upload(page, "eval_dataset_id", ui_digits.heldout, kind="tensors", labels="labels") == sha256_file(
        ui_digits.heldout
    )
    page.fill("#architecture", "digits_cnn")
    page.fill("#target_ratio", "10")
    page.fill("#options", json.dumps(QUICK_OPTIONS))
    page.select_option("#device", "cpu")
    page.click("#submit-job")
    page.wait_for_url(re.compile(r".*/ui/jobs/[0-9a-f-]{36}$"), timeout=30_000)
    job_id = page.url.rsplit("/", 1)[1]
    # The page polls and reloads itself when the job ends; nothing here reloads it.
    expect(page.locator("#job-state")).to_have_text("succeeded", timeout=240_000)
    yield {"context": context, "page": page, "id": job_id, "problems": problems}
    context.close()


def test_submitted_job_reaches_succeeded_on_its_live_page(finished_job, ui_stack):
    page = finished_job["page"]
    with api(ui_stack, ui_stack.a) as client:
        job = client.get(f"/v1/jobs/{finished_job['id']}").json()
        events = client.get(f"/v1/jobs/{finished_job['id']}/events").json()["data"]
    assert job["state"] == "succeeded"
    assert job["options"] == QUICK_OPTIONS and job["architecture"] == "digits_cnn"
    assert page.inner_text("#progress-text") == "100.0 %"
    assert page.locator("#events tr").count() == len(events)
    assert f"{job['true_ratio']:.3f}×" in page.inner_text("#true-ratio")
    assert not finished_job["problems"], finished_job["problems"]


def test_per_layer_chart_and_table_match_the_api(finished_job, ui_stack):
    page = finished_job["page"]
    with api(ui_stack, ui_stack.a) as client:
        layers = client.get(f"/v1/jobs/{finished_job['id']}/layers").json()["data"]
    coded = [layer for layer in layers if layer["mode"] == "coded"]
    assert coded, "the digits CNN has coded layers"
    page.locator("#chart-bits .trace.bars .point").first.wait_for()
    assert page.locator("#chart-bits .trace.bars .point").count() == len(coded)
    rows = page.locator("#layers-table tbody tr")
    assert rows.count() == len(layers)
    for i, layer in enumerate(layers):
        cells = rows.nth(i).locator("td").all_inner_texts()
        assert cells[0] == str(layer["position"])
        assert cells[1] == layer["name"]
        assert cells[2] == ("×".join(map(str, layer["shape"])) or "scalar")
        assert cells[3] == layer["mode"]
        assert cells[5] == (str(layer["levels"]) if layer["levels"] is not None else "—")
        assert cells[9] == (str(layer["bytes"]) if layer["bytes"] is not None else "—")
        assert cells[10] == (str(layer["original_bytes"]) if layer["original_bytes"] is not None else "—")


def test_layer_table_sorts_by_a_clicked_column(finished_job):
    page = finished_job["page"]
    page.click("#layers-table th:has-text('bytes') >> nth=0")
    values = [
        int(v) if v != "—" else -1 for v in page.locator("#layers-table tbody tr td:nth-child(10)").all_inner_texts()
    ]
    assert values == sorted(values)


def test_download_has_the_sha256_the_page_and_api_show(finished_job, ui_stack):
    page = finished_job["page"]
    with page.expect_download() as info:
        page.click("#download")
    digest = sha256_file(info.value.path())
    with api(ui_stack, ui_stack.a) as client:
        job = client.get(f"/v1/jobs/{finished_job['id']}").json()
    assert digest == job["artifact"]["sha256"] == page.inner_text("#artifact-sha256")


def test_jobs_and_compare_pages_list_the_job(finished_job):
    page = finished_job["page"]
    page.goto("/ui")
    row = page.locator(f'tr[data-job-id="{finished_job["id"]}"]')
    assert row.locator(".badge").inner_text() == "succeeded"
    page.goto("/ui/compare")
    page.locator("#chart-compare .scatterlayer .point").first.wait_for()
    assert finished_job["id"][:8] in page.inner_text("#compare-table")
    page.locator("#chart-compare .scatterlayer .point").first.click(force=True)
    page.wait_for_url(re.compile(rf".*/ui/jobs/{finished_job['id']}$"))


def test_cancel_a_running_job_from_its_page(browser, ui_stack, finished_job):
    with api(ui_stack, ui_stack.a) as client:
        previous = client.get(f"/v1/jobs/{finished_job['id']}").json()
        body = {
            "checkpoint_id": previous["checkpoint_id"],
            "dataset_id": previous["dataset_id"],
            "architecture": "digits_cnn",
            "target_ratio": 10,
            "device": "cpu",
            "options": SLOW_OPTIONS,
        }
        job = client.post("/v1/jobs", json=body).json()
    page = finished_job["page"]
    page.goto(f"/ui/jobs/{job['id']}")
    expect(page.locator("#job-state")).to_have_text("running", timeout=120_000)
    # the loss curves grow live from the points the worker records
    page.locator("#chart-losses .scatterlayer .trace").first.wait_for(timeout=120_000)
    page.click("#cancel-button")
    expect(page.locator("#job-state")).to_have_text("canceled", timeout=60_000)
    with api(ui_stack, ui_stack.a) as client:
        assert client.get(f"/v1/jobs/{job['id']}").json()["state"] == "canceled"


def test_a_wrong_key_is_refused(browser, ui_stack):
    context = browser.new_context(base_url=ui_stack.base_url)
    context.set_default_timeout(120_000)
    page = context.new_page()
    page.goto("/ui/login")
    page.fill("#api_key", ui_stack.a.key[:-4] + "xxxx")
    page.click("#login-form button[type=submit]")
    assert "not accepted" in page.inner_text("#login-error")
    page.goto("/ui")
    assert "/ui/login" in page.url
    response = page.request.get(f"{ui_stack.base_url}/ui/api/jobs/anything/live")
    assert response.status == 401
    context.close()


def test_tenant_b_never_sees_tenant_a_jobs(browser, ui_stack, finished_job):
    context, page = sign_in(browser, ui_stack, ui_stack.b)
    for path in ("/ui", "/ui/compare", "/ui/new"):
        page.goto(path)
        assert finished_job["id"][:8] not in page.content()
    assert page.goto(f"/ui/jobs/{finished_job['id']}").status == 404
    assert page.request.get(f"{ui_stack.base_url}/ui/jobs/{finished_job['id']}/artifact").status == 404
    context.close()


def test_cancel_without_the_csrf_token_is_refused(finished_job, ui_stack):
    page = finished_job["page"]
    response = page.request.post(f"{ui_stack.base_url}/ui/jobs/{finished_job['id']}/cancel", form={"x": "1"})
    assert response.status == 403
