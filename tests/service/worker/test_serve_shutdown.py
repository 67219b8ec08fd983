"""Stopping ``l2 serve`` the normal way (Ctrl+C, ``kill -TERM``, docker stop) is quiet and successful: exit
status 0, so ``make serve`` does not end in ``Error 143``, and no ERROR line or traceback, so a user is not
told that something went wrong when nothing did."""

from __future__ import annotations

import signal

import pytest

from bench.local_service import clean_env, free_port, l2_command, start, wait_answering

pytestmark = [pytest.mark.service, pytest.mark.timeout(600)]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_normal_stop_of_l2_serve_exits_0_without_an_error(tmp_path, signum):
    port, log = free_port(), tmp_path / "serve.log"
    env = clean_env(L2_DATA_DIR=str(tmp_path / "data"), PYTHONUNBUFFERED="1")
    serve = start(l2_command("serve", "--port", str(port)), env, log)
    try:
        # Ready means the worker has reported itself too: its pool child exists and is idle.
        wait_answering(f"http://127.0.0.1:{port}/readyz", serve, timeout_s=300, log=log)
        serve.send_signal(signum)  # to l2 serve alone, as `kill` or Ctrl+C do (its worker has a session of its own)
        code = serve.wait(timeout=120)
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
    output = log.read_text(errors="replace")
    assert code == 0, output[-4000:]
    assert "ERROR" not in output and "Traceback" not in output, output[-4000:]
    assert "Warm shutdown" in output  # the worker was stopped, not left behind
