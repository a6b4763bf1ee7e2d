"""Building hostile tokens for tests: arbitrary headers, claims and signatures."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from linksvc.links import tokens
from linksvc.services import services


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def seg(obj: Any) -> str:
    return b64(obj if isinstance(obj, bytes) else json.dumps(obj, separators=(",", ":")).encode())


def split(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    h, c, s = token.split(".")
    pad = lambda x: x + "=" * (-len(x) % 4)  # noqa: E731
    return (
        json.loads(base64.urlsafe_b64decode(pad(h))),
        json.loads(base64.urlsafe_b64decode(pad(c))),
        s,
    )


def resign(
    header: dict[str, Any] | bytes, claims: dict[str, Any] | bytes, key: tokens.SigningKey
) -> str:
    """Sign arbitrary header/claims with one of our real keys (a well-signed hostile token)."""
    signing_input = f"{seg(header)}.{seg(claims)}"
    if key.alg == "ES256":  # low s, as linksvc signs
        sig = tokens._sign_es256(signing_input.encode(), key.private_key)
    else:
        sig = tokens.ALGORITHMS[key.alg].sign(signing_input.encode(), key.private_key)
    return f"{signing_input}.{b64(sig)}"


def hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{seg(header)}.{seg(claims)}"
    return (
        f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"
    )


def unsigned(header: dict[str, Any], claims: dict[str, Any], sig: str = "") -> str:
    return f"{seg(header)}.{seg(claims)}.{sig}"


def signing_key(app: Any) -> tokens.SigningKey:
    return services(app).links.keyring.signing_key()
