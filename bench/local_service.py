"""Starting the service's processes on this machine and waiting until they answer: shared by the benchmarks,
the end-to-end tests and scripts/, which all run the API (uvicorn) or ``l2 serve`` as subprocesses, each in a
session of its own so that a signal to its process group reaches the whole service and nothing else.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
# The ``l2`` script, without relying on the virtualenv's bin/ being on PATH.
L2_MAIN = "import sys; from compression_core.cli import main; sys.exit(main())"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without its ``L2_*`` settings (a developer's own must not leak into a run),
    plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("L2_")}
    env.update(settings)
    return env


def l2_command(*args: str) -> list[str]:
    return [sys.executable, "-c", L2_MAIN, *args]


def api_command(port: int, *extra: str, log_level: str = "warning") -> list[str]:
    """The API alone, as deployed: ``uvicorn --factory api.app:create_app`` on 127.0.0.1:``port``."""
    command = [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app", "--host", "127.0.0.1"]
    return [*command, "--port", str(port), "--log-level", log_level, *extra]


def start(command: list[str], env: dict[str, str], log: Path | None = None, cwd: Path = ROOT) -> subprocess.Popen:
    """Run ``command`` from the checkout (or ``cwd``, e.g. an export of an older commit) in a new session, its
    output appended to ``log`` (or inherited)."""
    out = open(log, "ab") if log is not None else None
    try:
        return subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            start_new_session=True,
        )
    finally:
        if out is not None:
            out.close()  # the child holds its own copy


def wait_answering(
    url: str, proc: subprocess.Popen, *, timeout_s: float = 120, log: Path | None = None, status: int = 200
) -> None:
    """Poll ``url`` until it answers ``status``. Fails at once, with the end of ``log``, if ``proc`` exits
    first; the timeout is a bound for a busy machine, not a timing."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=5).status_code == status:
                return
        except httpx.TransportError:
            pass
        tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:4]} exited with {proc.returncode} before {url} answered\n{tail}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer {status} within {timeout_s:.0f} s\n{tail}")
        time.sleep(0.2)


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 30) -> None:
    """Send ``sig`` to the process group ``proc`` leads, then SIGKILL it if it is still there after
    ``timeout_s``."""
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=timeout_s)
    except ProcessLookupError:
        proc.wait()
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
