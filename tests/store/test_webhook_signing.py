"""The server's signer (`store.webhook_signing`) against the receivers' verifier (`l2_client.webhooks`): two
separate implementations of Standard Webhooks that must agree, and a verifier that refuses what it should."""

from __future__ import annotations

import base64
import json

import pytest

from l2_client.webhooks import WebhookVerificationError, verify_webhook
from store.webhook_signing import new_secret, sign_headers, signature

BODY = json.dumps({"type": "job.succeeded", "data": {"id": "j1", "true_ratio": 10.02}}).encode()
NOW = 1_800_000_000


def test_a_signed_body_verifies_and_returns_the_payload():
    secret = new_secret()
    headers = sign_headers([secret], "msg_1", NOW, BODY)
    assert headers["webhook-signature"].startswith("v1,")
    assert verify_webhook(headers, BODY, secret, now=NOW) == json.loads(BODY)


def test_header_names_match_in_any_case_and_the_body_may_be_text():
    secret = new_secret()
    headers = {k.title(): v for k, v in sign_headers([secret], "msg_1", NOW, BODY).items()}
    assert verify_webhook(headers, BODY.decode(), secret, now=NOW)["data"]["id"] == "j1"


def test_the_signature_is_the_standard_webhooks_one():
    """Known answer: the Standard Webhooks specification's construction, computed independently here."""
    import hashlib
    import hmac

    key = b"0123456789abcdef0123456789abcdef"
    secret = "whsec_" + base64.b64encode(key).decode()
    expected = hmac.new(key, b"msg_p5jXN8AQM9LWM0D4loKWxJek." + str(NOW).encode() + b"." + BODY, hashlib.sha256)
    assert (
        signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", NOW, BODY)
        == "v1," + base64.b64encode(expected.digest()).decode()
    )


@pytest.mark.parametrize(
    "tamper",
    [
        lambda h, b: (h, b.replace(b"10.02", b"99.99")),
        lambda h, b: ({**h, "webhook-id": "msg_2"}, b),
        lambda h, b: ({**h, "webhook-timestamp": str(NOW + 1)}, b),
    ],
)
def test_a_changed_body_id_or_timestamp_is_refused(tamper):
    secret = new_secret()
    headers, body = tamper(sign_headers([secret], "msg_1", NOW, BODY), BODY)
    with pytest.raises(WebhookVerificationError, match="no webhook-signature matches"):
        verify_webhook(headers, body, secret, now=NOW)


def test_another_secret_is_refused_and_during_rotation_either_secret_verifies():
    old, new = new_secret(), new_secret()
    headers = sign_headers([new, old], "msg_1", NOW, BODY)
    assert len(headers["webhook-signature"].split()) == 2
    assert verify_webhook(headers, BODY, old, now=NOW) and verify_webhook(headers, BODY, new, now=NOW)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(headers, BODY, new_secret(), now=NOW)


def test_an_old_or_future_timestamp_is_refused_as_a_replay():
    secret = new_secret()
    headers = sign_headers([secret], "msg_1", NOW, BODY)
    with pytest.raises(WebhookVerificationError, match="outside"):
        verify_webhook(headers, BODY, secret, now=NOW + 301)
    with pytest.raises(WebhookVerificationError, match="outside"):
        verify_webhook(headers, BODY, secret, now=NOW - 301)
    assert verify_webhook(headers, BODY, secret, now=NOW + 3600, tolerance_s=7200)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_header_is_named(missing):
    secret = new_secret()
    headers = sign_headers([secret], "msg_1", NOW, BODY)
    del headers[missing]
    with pytest.raises(WebhookVerificationError, match=missing):
        verify_webhook(headers, BODY, secret, now=NOW)


def test_a_secret_that_is_not_base64_is_a_clear_error():
    headers = sign_headers([new_secret()], "msg_1", NOW, BODY)
    with pytest.raises(WebhookVerificationError, match="whsec_"):
        verify_webhook(headers, BODY, "whsec_not base64!", now=NOW)
