"""Fixtures of the web UI's browser tests: a real service stack as ``l2 serve`` runs it (the embedded SQLite
database and broker, the API as a uvicorn process, one Celery worker process), here with authentication on and
two tenants; Debian's chromium driven headless by Playwright; and a small digits CNN to compress.

The stack and its helpers come from the worker's end-to-end tests (`tests/service/worker/worker_stack.py`).
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service" / "worker"))
from worker_stack import Stack, make_stack  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


@dataclass
class Tenant:
    name: str
    key: str


@dataclass
class UiStack:
    stack: Stack
    a: Tenant
    b: Tenant

    @property
    def base_url(self) -> str:
        return self.stack.base_url


@dataclass
class DigitsUpload:
    checkpoint: Path
    calibration: Path
    heldout: Path


@pytest.fixture(scope="session")
def ui_digits(tmp_path_factory) -> DigitsUpload:
    """The digits CNN after one epoch (seconds, where the worker tests' fully trained model takes up to minutes
    on a busy 2-core machine; the UI's story needs a real model and real data, not a good score)."""
    from compression_core import zoo

    folder = tmp_path_factory.mktemp("ui-digits")
    model, split = zoo.train_digits_cnn(seed=0, epochs=1)
    files = DigitsUpload(folder / "digits_cnn.pt", folder / "calibration.pt", folder / "heldout.pt")
    torch.save(model.state_dict(), files.checkpoint)
    torch.save(split.train_x[:128].clone(), files.calibration)
    torch.save({"images": split.test_x[:200].clone(), "labels": split.test_y[:200].clone()}, files.heldout)
    return files


@pytest.fixture(scope="session")
def ui_stack(tmp_path_factory) -> UiStack:
    """``l2 serve``'s embedded stack with authentication on, keys for tenants ``ui-a`` and ``ui-b``."""
    from api.auth import create_key
    from store.db import make_engine, make_session_factory

    tmp = tmp_path_factory.mktemp("ui-stack")
    data = tmp / "data"
    stack = make_stack(tmp, f"sqlite:///{data / 'l2.db'}", f"sqla+sqlite:///{data / 'broker.db'}")
    stack.env["L2_AUTH_ENABLED"] = "true"
    stack.env["L2_PROGRESS_MIN_INTERVAL_S"] = "0.2"
    stack.migrate()
    engine = make_engine(stack.env["L2_DATABASE_URL"])
    with make_session_factory(engine)() as session:
        a = Tenant("ui-a", create_key(session, "ui-a").key)
        b = Tenant("ui-b", create_key(session, "ui-b").key)
    engine.dispose()
    stack.start_api()
    stack.start_worker("ui")
    yield UiStack(stack, a, b)
    stack.stop()


@pytest.fixture(scope="session")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed; run scripts/ensure_browser.sh (make test does)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
            headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage"],  # root in a container has no user namespaces
        )
        yield browser
        browser.close()
