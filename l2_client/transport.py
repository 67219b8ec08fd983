"""HTTP with retries: connection errors, 502/503/504 and 429 are retried with exponential backoff (honouring
``Retry-After`` when the server sends one); any other 4xx/5xx becomes a typed `l2_client.errors` error.

A request whose body may already have reached the server is only retried when repeating it is harmless: reads,
``PUT``/``DELETE``, and ``POST`` with an ``Idempotency-Key`` (job submission). Other ``POST`` requests (plain
uploads) are retried only when the connection failed before anything was sent.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import httpx

from l2_client.errors import ConnectionFailed, error_from_response, retry_after_seconds

RETRY_STATUSES = (429, 502, 503, 504)
SAFE_METHODS = ("GET", "HEAD", "OPTIONS", "PUT", "DELETE")


class Transport:
    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        headers = {"User-Agent": "l2-client/0.1"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)
        self.max_retries, self.backoff_s, self.max_backoff_s, self.sleep = max_retries, backoff_s, max_backoff_s, sleep

    def close(self) -> None:
        self.http.close()

    def delay(self, attempt: int, response: httpx.Response | None = None) -> float:
        """Seconds to wait before retry ``attempt`` (1-based): the server's Retry-After, or jittered backoff."""
        if response is not None:
            server = retry_after_seconds(response)
            if server is not None:
                return min(server, 300.0)
        return min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)

    def request(self, method: str, path: str, *, body: Callable[[], object] | None = None, **kwargs) -> httpx.Response:
        """Send, retrying as the module says. ``body`` (optional) makes a fresh request body for each attempt
        (a file must be reopened after a failed try). Returns a 2xx/3xx response; raises a typed error."""
        method = method.upper()
        headers = kwargs.get("headers") or {}
        repeatable = method in SAFE_METHODS or any(k.lower() == "idempotency-key" for k in headers)
        attempt = 0
        while True:
            attempt += 1
            if body is not None:
                kwargs["content"] = body()
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if attempt > self.max_retries or (sent and not repeatable):
                    raise ConnectionFailed(
                        f"{method} {self.http.base_url}{path} failed after {attempt} attempt(s): "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                self.sleep(self.delay(attempt))
                continue
            if response.status_code in RETRY_STATUSES and attempt <= self.max_retries:
                self.sleep(self.delay(attempt, response))
                continue
            if response.status_code >= 400:
                raise error_from_response(response)
            return response

    def stream(self, method: str, path: str, **kwargs):
        """``httpx.Client.stream`` (the caller handles retries: a download resumes with Range instead)."""
        return self.http.stream(method, path, **kwargs)
