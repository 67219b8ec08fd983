"""Typed errors of the L² client. Every error the service answers with carries its ``{"detail": ...}``
message (what to fix) and the HTTP status; the class says what kind of problem it is, so a caller can
``except NotFound`` or ``except RateLimited`` instead of parsing text."""

from __future__ import annotations

import httpx


class L2Error(Exception):
    """Base of every error this package raises."""


class APIError(L2Error):
    """The service refused or failed a request; ``detail`` is its message, ``status_code`` the HTTP status."""

    status_code: int = 0

    def __init__(self, detail: str, *, status_code: int | None = None, response: httpx.Response | None = None):
        super().__init__(detail)
        self.detail = detail
        if status_code is not None:
            self.status_code = status_code
        self.response = response

    def __str__(self) -> str:
        return f"{self.status_code}: {self.detail}"


class BadRequest(APIError):
    status_code = 400


class AuthenticationError(APIError):
    status_code = 401


class PermissionDenied(APIError):
    status_code = 403


class NotFound(APIError):
    status_code = 404


class Conflict(APIError):
    status_code = 409


class Gone(APIError):
    status_code = 410


class PayloadTooLarge(APIError):
    """Over the server's upload limit or the tenant's stored-bytes quota (the detail says which)."""

    status_code = 413


class ValidationError(APIError):
    """422: ``errors`` lists each problem with its field."""

    status_code = 422

    @property
    def errors(self) -> list[dict]:
        try:
            return list(self.response.json().get("errors", [])) if self.response is not None else []
        except ValueError:
            return []


class RateLimited(APIError):
    """429: a per-tenant limit (requests per window or concurrent jobs); ``retry_after`` in seconds."""

    status_code = 429

    @property
    def retry_after(self) -> float | None:
        return retry_after_seconds(self.response) if self.response is not None else None


class ChecksumMismatch(APIError):
    """Bytes did not match their SHA-256 (an upload chunk the server dropped, or a downloaded artifact)."""

    status_code = 460


class ServerError(APIError):
    status_code = 500


class ServiceUnavailable(ServerError):
    status_code = 503


class ConnectionFailed(L2Error):
    """The service could not be reached (after the retries)."""


class JobFailed(L2Error):
    def __init__(self, job_id: str, state: str, error: str | None) -> None:
        super().__init__(f"job {job_id} {state}" + (f": {error}" if error else ""))
        self.job_id, self.state, self.error = job_id, state, error


class WaitTimeout(L2Error):
    """``Job.wait`` ran out of time; the job goes on running on the server."""


_BY_STATUS = {
    cls.status_code: cls
    for cls in (
        BadRequest,
        AuthenticationError,
        PermissionDenied,
        NotFound,
        Conflict,
        Gone,
        PayloadTooLarge,
        ValidationError,
        RateLimited,
        ChecksumMismatch,
        ServerError,
        ServiceUnavailable,
    )
}


def retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from datetime import UTC, datetime
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
        except (TypeError, ValueError):
            return None


def error_from_response(response: httpx.Response) -> APIError:
    """The typed error for a 4xx/5xx response, with the service's ``detail`` message."""
    try:
        body = response.json()
        detail = body.get("detail") if isinstance(body, dict) else None
    except ValueError:
        detail = None
    if not isinstance(detail, str):
        detail = (response.text or response.reason_phrase or "no detail")[:2000]
    code = response.status_code
    cls = _BY_STATUS.get(code) or (ServerError if code >= 500 else APIError)
    return cls(detail, status_code=code, response=response)
