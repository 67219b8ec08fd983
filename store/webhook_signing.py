"""Signing webhook requests the Standard Webhooks way (https://www.standardwebhooks.com).

Headers: ``webhook-id`` (the event's id, the same on every retry, so receivers can drop duplicates),
``webhook-timestamp`` (Unix seconds of this attempt, so receivers can refuse replays) and
``webhook-signature``: ``v1,`` + base64 HMAC-SHA256 over ``id.timestamp.body`` with the secret's key bytes
(``whsec_`` + base64 key). During a secret rotation the header carries one signature per valid secret,
separated by spaces, and a receiver accepts the request when any of them verifies.

The API makes secrets (`new_secret`), the workers' dispatcher signs. The receivers' side is
`l2_client.webhooks.verify_webhook`; the two are written separately on purpose and tested against each other.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"
KEY_BYTES = 24


def new_secret() -> str:
    """A fresh signing secret, ``whsec_`` + base64 of 24 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256(key, "{msg_id}.{timestamp}.{body}")>``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    mac = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def sign_headers(secrets_: list[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body``, signed with every secret in ``secrets_``."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp)),
        "webhook-signature": " ".join(signature(s, msg_id, int(timestamp), body) for s in secrets_),
    }
