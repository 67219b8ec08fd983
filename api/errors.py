"""Errors the service layer raises; `api.app` turns each into ``{"detail": "..."}`` with its status code, the
detail saying what to fix."""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 400

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers


class NotFound(ServiceError):
    status_code = 404

    @classmethod
    def of(cls, kind: str, object_id: str, hint: str = "") -> NotFound:
        return cls(f"{kind} {object_id!r} not found{'; ' + hint if hint else ''}")


class Forbidden(ServiceError):
    status_code = 403


class Conflict(ServiceError):
    status_code = 409


class Gone(ServiceError):
    status_code = 410


class PayloadTooLarge(ServiceError):
    status_code = 413


class Unprocessable(ServiceError):
    """422. Its body also lists the problem under ``errors`` (what the 422 schema promises, like a validation
    error): ``loc`` names the offending part of the request, e.g. ``("query", "spec")``."""

    status_code = 422

    def __init__(self, detail: str, *, loc: tuple[str | int, ...] = ("request",), headers=None) -> None:
        super().__init__(detail, headers=headers)
        self.loc = loc

    def errors(self) -> list[dict]:
        return [{"loc": list(self.loc), "msg": self.detail, "type": "value_error"}]


class Unavailable(ServiceError):
    status_code = 503


class TooManyRequests(ServiceError):
    """A per-tenant limit was hit; ``Retry-After`` says when to try again."""

    status_code = 429

    def __init__(self, detail: str, retry_after_s: float) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, int(retry_after_s + 0.999)))})
