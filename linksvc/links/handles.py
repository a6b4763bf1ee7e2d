"""Short links' handles: 128 random bits in Crockford base32, stored only as a keyed hash.

A client whose ``link_format`` is ``short`` gets ``<base>/l/<handle>`` (``/d/`` for
downloads) instead of the JWT in the path (PRODUCT §8). The handle is 26 characters of
Crockford's alphabet (no padding; 26 × 5 = 130 bits, so the first character is 0-7),
read case-insensitively with Crockford's aliases (``i``/``l`` → ``1``, ``o`` → ``0``), so a
handle copied by hand or upper-cased by a mail client still works. Hyphens and ``u`` are
refused: a handle is pasted, not dictated.

The ledger row of a short link keeps ``HMAC-SHA256(key, the 16 bytes)`` only
(``links.handle_hash``), under a key derived from the service secret: a database dump gives
no working link, and the hash of the *decoded bytes* makes every spelling of one handle
find the same row. Looking a handle up by its keyed hash also means the index lookup's
timing depends on a value an attacker cannot steer.

This module knows nothing of Flask or the database.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import os

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
LENGTH = 26
BYTES = 16  # 128 bits
_VALUES = {ch: i for i, ch in enumerate(ALPHABET)}
_VALUES.update({"I": 1, "L": 1, "O": 0})


@dataclasses.dataclass(frozen=True)
class Handle:
    """A handle from a page's path, as its keyed hash: what the ledger is asked for. Holds
    no handle, so neither its repr nor a log line can leak a working link."""

    digest: str


def encode(raw: bytes) -> str:
    """The 26-character Crockford base32 spelling of 16 bytes (upper case)."""
    if len(raw) != BYTES:
        raise ValueError("a handle is 16 bytes")
    n = int.from_bytes(raw, "big")
    return "".join(ALPHABET[(n >> (5 * i)) & 31] for i in reversed(range(LENGTH)))


def decode(text: str) -> bytes | None:
    """The 16 bytes a handle spells, in any case and with Crockford's aliases; ``None`` for
    anything else (wrong length, another character, more than 128 bits)."""
    if len(text) != LENGTH:
        return None
    n = 0
    for ch in text.upper():
        value = _VALUES.get(ch)
        if value is None:
            return None
        n = (n << 5) | value
    if n >> (8 * BYTES):
        return None
    return n.to_bytes(BYTES, "big")


def new() -> bytes:
    return os.urandom(BYTES)


@functools.lru_cache(maxsize=8)
def _keys(secret: bytes) -> tuple[bytes, bytes]:
    """The lookup key and the derivation key, each domain-separated from the secret's other
    uses; so no new setting is needed and rotating the secret ends every outstanding short
    link (as it ends their forms and codes)."""
    return (
        hmac.new(secret, b"linksvc.handles.lookup", hashlib.sha256).digest(),
        hmac.new(secret, b"linksvc.handles.derive", hashlib.sha256).digest(),
    )


def digest(secret: bytes, raw: bytes) -> str:
    """What ``links.handle_hash`` keeps of a handle (64 hex digits)."""
    return hmac.new(_keys(secret)[0], raw, hashlib.sha256).hexdigest()


def derive(secret: bytes, *, client_id: str, seed: str, jti: str) -> bytes:
    """The handle of an idempotent mint (``Idempotency-Key``), so that a replay answers a
    URL that works: only the hash of a handle is kept, so a random one could not be told
    again. Keyed by the service secret and bound to the link's random ``jti``, it is as
    unpredictable as a random handle to anyone without the secret."""
    msg = "\0".join((client_id, seed, jti)).encode("utf-8", "surrogatepass")
    return hmac.new(_keys(secret)[1], msg, hashlib.sha256).digest()[:BYTES]


def from_path(secret: bytes | None, segment: str) -> Handle | None:
    """The :class:`Handle` a page's path segment spells, or ``None`` (it is then a JWT, or
    nothing: the token path refuses it as it refuses any malformed link)."""
    raw = decode(segment)
    if raw is None or secret is None:
        return None
    return Handle(digest(secret, raw))
