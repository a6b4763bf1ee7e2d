"""Hostile variants of a legitimately minted token, each with the reason it must fail with.

Shared by every test that checks an endpoint accepting tokens (API, pages, downloads):
each case is built from a real link, must be refused with its reason, and must leave the
real link usable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization

from . import forge


@dataclass(frozen=True)
class Case:
    name: str
    reason: str
    build: Callable[[Any, str], str]  # (app, legit token) -> hostile token


def _mutate(fn: Callable[[dict, dict], tuple[Any, Any]]) -> Callable[[Any, str], str]:
    def build(app: Any, token: str) -> str:
        header, claims, _ = forge.split(token)
        new_header, new_claims = fn(dict(header), dict(claims))
        return forge.resign(new_header, new_claims, forge.signing_key(app))

    return build


def _public_pem(app: Any) -> bytes:
    key = forge.signing_key(app)
    return key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _hs256_confusion(app: Any, token: str) -> str:
    header, claims, _ = forge.split(token)
    return forge.hs256({**header, "alg": "HS256"}, claims, _public_pem(app))


def _alg_none(app: Any, token: str) -> str:
    header, claims, _ = forge.split(token)
    return forge.unsigned({**header, "alg": "none"}, claims)


def _alg_none_no_kid(app: Any, token: str) -> str:
    _, claims, _ = forge.split(token)
    return forge.unsigned({"alg": "none", "typ": "JWT"}, claims, sig="AAAA")


def _flip_signature(app: Any, token: str) -> str:
    body, sig = token.split(".")[1], token.split(".")[2]
    raw = bytearray(forge.base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[5] ^= 0x01
    return f"{token.split('.')[0]}.{body}.{forge.b64(bytes(raw))}"


def _now() -> int:
    return int(time.time())


CASES: list[Case] = [
    Case("garbage", "malformed", lambda app, t: "not-a-token"),
    Case("two_segments", "malformed", lambda app, t: ".".join(t.split(".")[:2])),
    Case("four_segments", "malformed", lambda app, t: t + ".AAAA"),
    Case("padded_signature", "malformed", lambda app, t: t + "=="),
    Case("standard_base64_alphabet", "malformed", lambda app, t: t[:-2] + "+/"),
    Case("oversized", "malformed", lambda app, t: t + "A" * 5000),
    Case(
        "non_utf8_header",
        "malformed",
        lambda app, t: forge.resign(b"\xff\xfe{}", forge.split(t)[1], forge.signing_key(app)),
    ),
    Case(
        "duplicate_claim",
        "malformed",
        lambda app, t: forge.resign(
            forge.split(t)[0],
            forge.seg(forge.split(t)[1]).encode()
            and (forge.json.dumps(forge.split(t)[1])[:-1] + ',"sub":"admin"}').encode(),
            forge.signing_key(app),
        ),
    ),
    Case(
        "header_is_array",
        "malformed",
        lambda app, t: forge.resign(b"[]", forge.split(t)[1], forge.signing_key(app)),
    ),
    Case("alg_none_stripped_signature", "malformed", _alg_none),
    Case(
        "alg_none_with_signature",
        "wrong_algorithm",
        lambda app, t: _alg_none(app, t) + t.split(".")[2],
    ),
    Case("alg_NoNe_spelling", "wrong_algorithm", _mutate(lambda h, c: ({**h, "alg": "NoNe"}, c))),
    Case("alg_none_without_kid", "bad_header", _alg_none_no_kid),
    Case("hs256_with_public_key", "wrong_algorithm", _hs256_confusion),
    Case(
        "embedded_jwk_header", "bad_header", _mutate(lambda h, c: ({**h, "jwk": {"kty": "EC"}}, c))
    ),
    Case(
        "remote_jku_header",
        "bad_header",
        _mutate(lambda h, c: ({**h, "jku": "https://evil.example/jwks"}, c)),
    ),
    Case("crit_header", "bad_header", _mutate(lambda h, c: ({**h, "crit": ["exp"]}, c))),
    Case("typ_jwt", "bad_header", _mutate(lambda h, c: ({**h, "typ": "JWT"}, c))),
    Case("unknown_kid", "unknown_key", _mutate(lambda h, c: ({**h, "kid": "../../etc/passwd"}, c))),
    Case("tampered_signature", "bad_signature", _flip_signature),
    Case(
        "tampered_claims",
        "bad_signature",
        lambda app, t: ".".join(
            [t.split(".")[0], forge.seg({**forge.split(t)[1], "sub": "admin"}), t.split(".")[2]]
        ),
    ),
    Case(
        "wrong_issuer",
        "wrong_issuer",
        _mutate(lambda h, c: (h, {**c, "iss": "https://evil.example"})),
    ),
    Case("extra_claim", "invalid_claims", _mutate(lambda h, c: (h, {**c, "email": "a@b.c"}))),
    Case(
        "missing_exp",
        "invalid_claims",
        _mutate(lambda h, c: (h, {k: v for k, v in c.items() if k != "exp"})),
    ),
    Case("string_time", "invalid_claims", _mutate(lambda h, c: (h, {**c, "exp": str(c["exp"])}))),
    Case("float_time", "invalid_claims", _mutate(lambda h, c: (h, {**c, "exp": c["exp"] + 0.5}))),
    Case(
        "aud_list", "invalid_claims", _mutate(lambda h, c: (h, {**c, "aud": [c["aud"], "other"]}))
    ),
    Case("empty_sub", "invalid_claims", _mutate(lambda h, c: (h, {**c, "sub": ""}))),
    Case("short_jti", "invalid_claims", _mutate(lambda h, c: (h, {**c, "jti": "abc"}))),
    Case(
        "lifetime_over_ceiling",
        "lifetime_exceeded",
        _mutate(lambda h, c: (h, {**c, "exp": c["iat"] + 901})),
    ),
    Case(
        "expired",
        "expired",
        _mutate(
            lambda h, c: (h, {**c, "iat": _now() - 400, "nbf": _now() - 400, "exp": _now() - 100})
        ),
    ),
    Case(
        "not_yet_valid",
        "not_yet_valid",
        _mutate(lambda h, c: (h, {**c, "nbf": c["iat"] + 100, "exp": c["iat"] + 200})),
    ),
    Case(
        "issued_in_future",
        "issued_in_future",
        _mutate(
            lambda h, c: (h, {**c, "iat": _now() + 100, "nbf": _now() + 100, "exp": _now() + 200})
        ),
    ),
    Case("unrecorded_jti", "unknown_link", _mutate(lambda h, c: (h, {**c, "jti": "A" * 22}))),
    Case(
        "other_subject_same_jti", "unknown_link", _mutate(lambda h, c: (h, {**c, "sub": "admin"}))
    ),
]
