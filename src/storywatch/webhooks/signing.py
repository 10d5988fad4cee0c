"""Standard Webhooks v1 headers — pure (https://www.standardwebhooks.com/).

``webhook-id`` names the message and stays the same on every retry (``<epoch>-<seq>`` for an
event of the log, ``test-<random>`` for a test delivery); ``webhook-timestamp`` is the Unix
second of the attempt; ``webhook-signature`` is ``v1,<base64 HMAC-SHA256>`` over
``"{id}.{timestamp}.{body}"`` with the secret's base64-decoded key. Every attempt gets a
fresh timestamp and so a fresh signature.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets


def message_id(epoch: str, seq: int) -> str:
    return f"{epoch}-{seq}"


def probe_message_id() -> str:
    return f"test-{secrets.token_hex(8)}"


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64>``: the value of ``webhook-signature`` for one attempt."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def headers(msg_id: str, timestamp: int, body: bytes, key: bytes | None) -> dict[str, str]:
    """The headers of one attempt (``Content-Type`` included)."""
    out = {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
    }
    if key is not None:
        out["webhook-signature"] = signature(key, msg_id, timestamp, body)
    return out
