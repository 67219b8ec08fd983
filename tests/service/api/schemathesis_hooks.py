"""Schemathesis hooks of the bounded pass (loaded through SCHEMATHESIS_HOOKS): tus PATCH bodies
(``application/offset+octet-stream``) are raw bytes, sent like ``application/octet-stream``."""

import schemathesis

schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")
