"""Verifying the L² service's webhooks in a receiver (standard library only).

The service signs every webhook request the Standard Webhooks way: ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature`` (``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body`` with the endpoint's ``whsec_``
secret; several space-separated signatures while a secret is being rotated). Use it with the raw body bytes,
before any JSON parsing::

    from l2_client.webhooks import verify_webhook, WebhookVerificationError

    try:
        event = verify_webhook(request.headers, request.body, secret)   # the dict that was sent
    except WebhookVerificationError as exc:
        return 400, str(exc)
    if seen_before(request.headers["webhook-id"]):   # deliveries are at-least-once: the id repeats on retry
        return 200
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["WebhookVerificationError", "verify_webhook"]

DEFAULT_TOLERANCE_S = 300


class WebhookVerificationError(ValueError):
    """The request did not come from the service with this secret, or it is too old or too new."""


def _header(headers: Mapping[str, str] | Any, name: str) -> str:
    value = None
    getter = getattr(headers, "get", None)
    if getter is not None:
        value = getter(name)
        if value is None:
            for key in getattr(headers, "keys", lambda: [])():
                if str(key).lower() == name:
                    value = headers[key]
                    break
    if not value:
        raise WebhookVerificationError(f"missing header {name}")
    return str(value)


def _key(secret: str | bytes) -> bytes:
    if isinstance(secret, bytes):
        return secret
    text = secret[len("whsec_") :] if secret.startswith("whsec_") else secret
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WebhookVerificationError("the secret is not a whsec_ secret (base64 after the prefix)") from exc


def verify_webhook(
    headers: Mapping[str, str],
    body: bytes | str,
    secret: str | bytes,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> dict[str, Any]:
    """Check the signature of a webhook request and return its JSON payload.

    ``headers``: any mapping (header names are matched case-insensitively); ``body``: the raw request body;
    ``secret``: the endpoint's ``whsec_…`` secret. Raises `WebhookVerificationError` when a header is missing,
    the timestamp is more than ``tolerance_s`` away from ``now`` (replay protection) or no signature
    matches."""
    msg_id = _header(headers, "webhook-id")
    stamp = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    try:
        timestamp = int(stamp)
    except ValueError as exc:
        raise WebhookVerificationError(f"webhook-timestamp {stamp!r} is not a Unix time in seconds") from exc
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise WebhookVerificationError(
            f"webhook-timestamp {timestamp} is {current - timestamp:+.0f} s from now, outside ±{tolerance_s:g} s"
        )
    raw = body.encode() if isinstance(body, str) else bytes(body)
    expected = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + raw, hashlib.sha256).digest()
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(given, expected):
            try:
                return json.loads(raw)
            except ValueError as exc:
                raise WebhookVerificationError("the signature matches but the body is not JSON") from exc
    raise WebhookVerificationError("no webhook-signature matches this secret and body")
