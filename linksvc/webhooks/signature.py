"""Standard Webhooks v1 signatures: ``v1,`` base64 HMAC-SHA256 of ``id.timestamp.body``.

Secrets are ``whsec_`` followed by the standard base64 of 32 random bytes, as receivers'
libraries (``standardwebhooks``, Svix) expect. During a secret rotation the message carries
one signature per live secret, separated by spaces, so a receiver holding either verifies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence

PREFIX = "whsec_"


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def _key(secret: str) -> bytes:
    if not secret.startswith(PREFIX):
        raise ValueError("a webhook secret starts with whsec_")
    return base64.b64decode(secret[len(PREFIX) :])


def sign(secret_list: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: one ``v1,…`` signature per secret."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(_key(s), content, hashlib.sha256).digest()).decode()
        for s in secret_list
    )


def headers(secret_list: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Every header of a delivery, signature included."""
    return {
        "Content-Type": "application/json",
        "User-Agent": "linksvc-webhooks/1",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret_list, msg_id, timestamp, body),
    }
