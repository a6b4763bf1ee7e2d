"""The inventory's page cursors (``next_cursor``): where a page ended, under a MAC.

A cursor is ``b64url(f"{iat}.{jti}") "." b64url(tag)``, the tag an HMAC-SHA256 (16 bytes)
of the client, the subject and the payload, so that only what the API returned is ever
taken back, and only for the listing it came from. Without Flask: the key is the caller's
(:func:`key` derives it from the service secret).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable

from linksvc.links.tokens import JTI_RE

#: The largest ``iat`` a cursor may carry: a time that fits the databases' 64-bit integers
#: with room to spare (year 5138). A bigger number overflowed the driver's bind (a 500).
CURSOR_MAX_IAT = 10**11


class InvalidCursor(ValueError):
    """Not a cursor this API returned for this listing."""


def key(secret: bytes) -> bytes:
    # Derived from the service secret (no setting of its own), under a label of its own so
    # a cursor's tag is never a valid MAC of anything else the secret keys.
    return hmac.new(secret, b"linksvc.api.cursor", hashlib.sha256).digest()


def _tag(key: bytes, client_id: str, subject: str, payload: str) -> bytes:
    # Bound to the client and subject too: a cursor is good only for the listing it came from.
    msg = "\x00".join((client_id, subject, payload)).encode("utf-8")
    return hmac.new(key, msg, hashlib.sha256).digest()[:16]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def encode(key: bytes, client_id: str, subject: str, iat: int, jti: str) -> str:
    """The cursor of a page that ended at (``iat``, ``jti``)."""
    payload = f"{iat}.{jti}"
    tag = _tag(key, client_id, subject, payload)
    return f"{_b64(payload.encode('ascii'))}.{_b64(tag)}"


def decode(key: Callable[[], bytes], client_id: str, subject: str, raw: str) -> tuple[int, str]:
    """(``iat``, ``jti``) of a cursor :func:`encode` made for this listing, or InvalidCursor.
    ``key()`` is asked only of a cursor of the right form."""
    if len(raw) > 96 or not raw.isascii():
        raise InvalidCursor(raw)
    encoded, _, tag = raw.partition(".")
    try:
        payload = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode("ascii")
        given = base64.urlsafe_b64decode(tag + "=" * (-len(tag) % 4))
    except (ValueError, UnicodeDecodeError):
        raise InvalidCursor(raw) from None
    if not hmac.compare_digest(given, _tag(key(), client_id, subject, payload)):
        raise InvalidCursor(raw)
    iat, _, jti = payload.partition(".")
    # Checked even behind the MAC: a cursor is parsed by rule, not by trust in the key.
    if not (iat.isdigit() and int(iat) <= CURSOR_MAX_IAT and JTI_RE.fullmatch(jti)):
        raise InvalidCursor(raw)
    return int(iat), jti
