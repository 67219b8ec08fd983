"""One webhook HTTP request, with the limits a service calling tenants' URLs needs.

* It connects only to the addresses `store.url_guard.check_url` has just checked (the URL's host goes in the
  ``Host`` header and, for HTTPS, in SNI and certificate checking), so DNS cannot change under it.
* Redirects are not followed: a 3xx is a failed attempt (a redirect could point anywhere).
* ``timeout_s`` bounds connecting, each read and the whole answer; at most ``max_response_bytes`` of the answer
  are read, then the connection is dropped.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

from store.url_guard import Target

SNIPPET_CHARS = 1000
USER_AGENT = "l2-webhooks/1"


@dataclass(frozen=True)
class AttemptResult:
    status_code: int | None
    latency_ms: float
    snippet: str | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def _netloc(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ipaddress.ip_address(address.split("%", 1)[0]).version == 6 else f"{address}:{port}"


def _host_header(target: Target) -> str:
    default = 443 if target.scheme == "https" else 80
    host = f"[{target.host}]" if ":" in target.host else target.host
    return host if target.port == default else f"{host}:{target.port}"


def post(
    client: httpx.Client,
    target: Target,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout_s: float,
    max_response_bytes: int,
) -> AttemptResult:
    """POST ``body`` to ``target``; never raises for network trouble (it is the attempt's result)."""
    parts = urlsplit(target.url)
    started = time.monotonic()
    error = None
    for address in target.addresses:
        url = urlunsplit((target.scheme, _netloc(address, target.port), parts.path or "/", parts.query, ""))
        request = client.build_request(
            "POST",
            url,
            content=body,
            headers={
                **headers,
                "Host": _host_header(target),
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
            },
            extensions={"sni_hostname": target.host, "timeout": httpx.Timeout(timeout_s).as_dict()},
        )
        try:
            response = client.send(request, stream=True, follow_redirects=False)
        except httpx.ConnectError as exc:  # try the host's next address
            error = f"could not connect to {address}: {exc}"
            continue
        except httpx.HTTPError as exc:
            return AttemptResult(None, _ms(started), None, f"{type(exc).__name__}: {exc}"[:SNIPPET_CHARS])
        try:
            data, error = _read_capped(response, started, timeout_s, max_response_bytes)
        finally:
            response.close()
        if response.is_redirect:
            error = f"answered {response.status_code} (redirects are not followed; give the final URL)"
        text = data.decode("utf-8", errors="replace")[:SNIPPET_CHARS] if data else None
        return AttemptResult(response.status_code, _ms(started), text, error)
    return AttemptResult(None, _ms(started), None, (error or "no address to connect to")[:SNIPPET_CHARS])


def _read_capped(response: httpx.Response, started: float, timeout_s: float, cap: int) -> tuple[bytes, str | None]:
    data = bytearray()
    try:
        for chunk in response.iter_raw():
            data += chunk
            if len(data) >= cap:
                return bytes(data[:cap]), None  # enough: the rest is not read
            if time.monotonic() - started > timeout_s:
                return bytes(data), f"the answer took longer than {timeout_s:g} s; stopped reading"
    except httpx.HTTPError as exc:
        return bytes(data), f"reading the answer failed: {type(exc).__name__}: {exc}"
    return bytes(data), None


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000.0, 2)
