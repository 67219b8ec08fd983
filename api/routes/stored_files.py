"""OpenAPI pieces the checkpoint and dataset routes share: both take an upload as the raw request body, refuse
one over the size limit, and refuse to delete what a queued or running job still uses."""

from __future__ import annotations

from api.schemas import Message

BINARY_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}
TOO_LARGE_RESPONSE = {
    413: {"model": Message, "description": "larger than L2_MAX_UPLOAD_BYTES; nothing stored"}
}
IN_USE_RESPONSE = {409: {"model": Message, "description": "a queued or running job uses it"}}
