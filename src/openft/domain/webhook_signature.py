"""Standard Webhooks signatures (what OpenAI's webhooks use): HMAC-SHA256 over ``id.timestamp.body``."""

from __future__ import annotations

import base64
import hashlib
import hmac

SECRET_PREFIX = "whsec_"


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value, ``v1,<base64 HMAC>``; the key is the base64 after
    ``whsec_``, as every Standard Webhooks verifier (the openai SDK's ``webhooks.unwrap`` too) reads it."""
    key = (
        base64.b64decode(secret.removeprefix(SECRET_PREFIX))
        if secret.startswith(SECRET_PREFIX)
        else secret.encode()
    )
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def headers(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """``webhook-id`` (the same on every retry), ``webhook-timestamp`` (this attempt) and the signature."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, message_id, timestamp, body),
    }
