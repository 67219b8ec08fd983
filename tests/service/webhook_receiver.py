"""A real HTTP receiver for webhook tests: a threaded server on a free loopback port that records every
request (headers, raw body, arrival time) and answers what the test says (status per attempt, or hold the
answer until the test opens a gate)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() of arrival

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def event(self) -> dict:
        return json.loads(self.body)

    @property
    def type(self) -> str:
        return self.event["type"]


class Receiver:
    """``answer(received, n)`` returns the status for the ``n``-th request (1-based) carrying that webhook-id
    (default 200). While ``gate`` is cleared every answer waits for it (a slow receiver)."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.answered = 0
        self.lock = threading.Lock()
        self.answer: Callable[[Received, int], int] = lambda received, n: 200
        self.gate = threading.Event()
        self.gate.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length") or 0)
                item = Received({k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length), time.time())
                with receiver.lock:
                    receiver.received.append(item)
                    n = sum(
                        1 for r in receiver.received if r.headers.get("webhook-id") == item.headers.get("webhook-id")
                    )
                receiver.gate.wait(120)
                status = receiver.answer(item, n)
                body = b'{"ok": true}' if status < 300 else b"receiver says no"
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                with receiver.lock:
                    receiver.answered += 1

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/l2"

    def of_type(self, event_type: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.type == event_type]

    def with_id(self, webhook_id: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.id == webhook_id]

    def wait_for(
        self, predicate: Callable[[], bool], timeout_s: float, what: str, step: Callable[[], object] | None = None
    ):
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"receiver: {what} did not happen in {timeout_s:.0f} s; got {self.summary()}")
            if step is not None:
                step()
            else:
                time.sleep(0.05)

    def summary(self) -> list[tuple[str, str]]:
        with self.lock:
            return [(r.type, r.id) for r in self.received]

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()
