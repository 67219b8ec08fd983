"""Keeping one Celery worker running: ``l2 serve`` and ``l2 worker`` start it as a child process and start it
again whenever it dies, so a killed worker (SIGKILL, out of memory) never needs a person to restart it.

The child runs in its own session (a terminal's Ctrl+C reaches only the supervisor, which then stops the
child on purpose) and learns the supervisor's pid (``L2_SUPERVISOR_PID``): if the supervisor itself is killed,
the worker notices within a second and stops (`worker.liveness`) instead of consuming the queue as an orphan.
A worker that dies soon after starting is restarted after a growing pause (1, 2, 4 … 30 s), so a broken
configuration does not spin; one that ran for a while is restarted at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable

# A worker that ran at least this long before it died is restarted without a pause.
HEALTHY_UPTIME_S = 60.0
MAX_PAUSE_S = 30.0


def stop_process_group(proc: subprocess.Popen, timeout: float | None = 20.0) -> None:
    """Stop a Celery worker started in its own session.

    With a ``timeout``: SIGTERM to the whole process group (the main process stops taking jobs and the pool
    child stops too, so the running job's attempt is abandoned and requeued by the next worker's sweep),
    then SIGKILL after ``timeout`` seconds. Without one (None): SIGTERM to the main process only, Celery's warm
    shutdown, which lets the running job finish, however long that takes."""
    if proc.poll() is not None:
        return
    try:
        if timeout is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait()
            return
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


class WorkerSupervisor:
    """Runs ``command`` and restarts it when it exits unless `stop` was called. ``say`` reports restarts (the
    terminal of ``l2 serve`` / ``l2 worker``)."""

    def __init__(
        self,
        command: list[str],
        *,
        env: dict[str, str] | None = None,
        stop_timeout_s: float | None = 20.0,
        say: Callable[[str], None] = print,
    ) -> None:
        self.command = command
        self.env = {**(os.environ if env is None else env), "L2_SUPERVISOR_PID": str(os.getpid())}
        self.stop_timeout_s = stop_timeout_s
        self.say = say
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="l2-worker-supervisor", daemon=True)

    def start(self) -> WorkerSupervisor:
        self._spawn()
        self._thread.start()
        return self

    def _spawn(self) -> None:
        with self._lock:
            if not self._stopping.is_set():
                self.proc = subprocess.Popen(self.command, env=self.env, start_new_session=True)

    def _run(self) -> None:
        pause = 1.0
        while not self._stopping.is_set():
            started = time.monotonic()
            code = self.proc.wait()
            if self._stopping.is_set():
                return
            uptime = time.monotonic() - started
            if uptime >= HEALTHY_UPTIME_S:
                pause = 0.0
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            self.say(f"l2: the worker (pid {self.proc.pid}) stopped ({how}) after {uptime:.0f} s; restarting it")
            if pause and self._stopping.wait(pause):
                return
            pause = min(MAX_PAUSE_S, max(1.0, pause * 2))
            self.restarts += 1
            self._spawn()

    def stop(self) -> None:
        """Stop the worker (see `stop_process_group` for what ``stop_timeout_s`` means) and do not restart it."""
        with self._lock:
            self._stopping.set()
            proc = self.proc
        if proc is not None:
            stop_process_group(proc, self.stop_timeout_s)
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def wait(self) -> None:
        """Block until `stop` has been called and the worker is gone."""
        while self._thread.is_alive():
            self._thread.join(timeout=1.0)
