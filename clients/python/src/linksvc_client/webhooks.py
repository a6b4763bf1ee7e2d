"""Receiving linksvc's webhooks (PRODUCT §7, Standard Webhooks v1)::

    event = construct_event(request.get_data(), request.headers, secret)
    if event.type == "link.consumed": ...

The signature is an HMAC-SHA256 of ``id.timestamp.body`` under the endpoint's ``whsec_``
secret; during a rotation a delivery carries several, and one good one suffices. A
timestamp outside ``tolerance`` seconds of now is refused, so a captured delivery cannot
be replayed later. Deliveries are at least once: deduplicate on ``event.id``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from . import errors
from .models import parse_time

PREFIX = "whsec_"
DEFAULT_TOLERANCE = 300
#: Seconds since 1970 fit in 11 digits until the year 5138; more is not a timestamp.
MAX_TIMESTAMP_DIGITS = 12


class WebhookVerificationError(errors.LinksvcError):
    """The delivery is not a genuine, fresh linksvc event (``code`` says why)."""


@dataclasses.dataclass(frozen=True)
class WebhookEvent:
    id: str
    type: str
    timestamp: datetime
    data: Mapping[str, Any]


def _refuse(code: str, detail: str) -> WebhookVerificationError:
    return WebhookVerificationError(detail, code=code)


def _key(secret: str) -> bytes:
    raw = secret[len(PREFIX) :] if secret.startswith(PREFIX) else secret
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is whsec_ and base64") from None


def construct_event(
    body: bytes | str,
    headers: Mapping[str, str],
    secret: str | Sequence[str],
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> WebhookEvent:
    """The verified event of one delivery, or :class:`WebhookVerificationError`.
    ``secret`` may be several (your side of a rotation). Pass the body as received —
    the bytes, before any JSON parsing. Whatever the headers hold, the only exception is
    :class:`WebhookVerificationError` (a bad ``secret`` of yours raises ``ValueError``)."""
    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    lower = {str(k).lower(): v for k, v in headers.items()}
    msg_id = lower.get("webhook-id", "")
    stamp = lower.get("webhook-timestamp", "")
    signatures = lower.get("webhook-signature", "")
    if not all(isinstance(v, str) and v for v in (msg_id, stamp, signatures)):
        raise _refuse(
            "missing_webhook_headers", "webhook-id, -timestamp and -signature are required."
        )
    # Headers are the sender's to forge: "²".isdigit() is true and int() of 5,000 digits
    # raises, so only a short run of ASCII digits is a timestamp.
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= MAX_TIMESTAMP_DIGITS):
        raise _refuse("bad_webhook_timestamp", "webhook-timestamp must be integer seconds.")
    now = time.time() if now is None else now
    if abs(now - int(stamp)) > tolerance:
        raise _refuse(
            "webhook_timestamp_out_of_range", "The delivery is too old or from the future."
        )
    # surrogatepass: an id no encoder accepts still hashes (and then matches nothing).
    content = f"{msg_id}.{stamp}.".encode("utf-8", "surrogatepass") + raw
    secrets = [secret] if isinstance(secret, str) else list(secret)
    expected = [
        base64.b64encode(hmac.new(_key(s), content, hashlib.sha256).digest()).decode()
        for s in secrets
    ]
    # compare_digest refuses non-ASCII text with TypeError; no genuine signature is one.
    offered = [sig[3:] for sig in signatures.split() if sig.startswith("v1,") and sig.isascii()]
    if not any(hmac.compare_digest(o, e) for o in offered for e in expected):
        raise _refuse("bad_webhook_signature", "No signature of the delivery matches the secret.")
    try:
        event = json.loads(raw)
        return WebhookEvent(
            id=msg_id,
            type=event["type"],
            timestamp=parse_time(event["timestamp"]),
            data=event.get("data") or {},
        )
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise _refuse("malformed_webhook", "The delivery body is not an event.") from None
