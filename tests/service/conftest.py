"""Shared by the API and worker service tests: a real local webhook receiver (`webhook_receiver.Receiver`)."""

from __future__ import annotations

import pytest
from webhook_receiver import Receiver


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()
