"""Link tokens: compact JWS with ``typ: link+jwt``, signed and verified strictly.

This module knows nothing of Flask or the database. Signing takes a key from a
:class:`KeySource`; verification runs the checks of PRODUCT §1 in their order and
raises one :class:`~linksvc.errors.LinkError` subclass per failure. The ledger check
(step 4) is the caller's: a token that passes here is well formed and ours, not unused.

PyJWT does the signature arithmetic (cryptography's, through PyJWT's algorithm objects; an
ES256 signature is made with cryptography straight, see :func:`_sign_es256`); the parsing and
every claim check are done here, because PyJWT's defaults accept things this service must
not (see PRODUCT §1).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import json
import os
import re
from collections.abc import Collection, Mapping
from typing import Any, Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from linksvc import errors
from linksvc.formats import strict_json_decoder

TYP = "link+jwt"
MAX_TOKEN_BYTES = 4096
HEADER_MEMBERS = frozenset({"alg", "kid", "typ"})
CLAIM_MEMBERS = frozenset({"iss", "aud", "sub", "pur", "jti", "iat", "nbf", "exp"})
JTI_BYTES = 16  # 128 random bits
JTI_RE = re.compile(r"[A-Za-z0-9_-]{22}")
MAX_SUBJECT_CHARS = 255
# Times beyond this are nonsense and would overflow some databases' integer columns.
MAX_TIME = 2**40

_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")

#: The algorithm objects, by name. The verifier picks one by the *key's* algorithm.
ALGORITHMS = {
    "ES256": ECAlgorithm(ECAlgorithm.SHA256),
    "EdDSA": OKPAlgorithm(),
    "RS256": RSAAlgorithm(RSAAlgorithm.SHA256),
}

# Order of the P-256 group: ECDSA signatures (r, s) and (r, n - s) are both valid, so
# we sign with low s only and refuse high s, leaving one encoding per signature.
_P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


@dataclasses.dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private_key: Any


@dataclasses.dataclass(frozen=True)
class VerificationKey:
    kid: str
    alg: str
    public_key: Any


class KeySource(Protocol):
    """What tokens need of a key ring."""

    def signing_key(self) -> SigningKey: ...

    def verification_key(self, kid: str) -> VerificationKey: ...


@dataclasses.dataclass(frozen=True)
class Claims:
    iss: str
    aud: str
    sub: str
    pur: str
    jti: str
    iat: int
    nbf: int
    exp: int

    def as_dict(self) -> dict[str, Any]:
        # Spelled out: dataclasses.asdict deep-copies field by field, a cost on every mint.
        return {
            "iss": self.iss,
            "aud": self.aud,
            "sub": self.sub,
            "pur": self.pur,
            "jti": self.jti,
            "iat": self.iat,
            "nbf": self.nbf,
            "exp": self.exp,
        }


@dataclasses.dataclass(frozen=True)
class VerifiedToken:
    claims: Claims
    kid: str
    alg: str


def new_jti() -> str:
    return b64url_encode(os.urandom(JTI_BYTES))  # what secrets.token_bytes returns


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(segment: str) -> bytes:
    """Decode canonical, unpadded base64url, refusing every other spelling of the bytes."""
    if not _B64URL_RE.fullmatch(segment) or len(segment) % 4 == 1:
        raise errors.Malformed("Token segment is not canonical base64url.")
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise errors.Malformed("Token segment is not base64url.") from None
    # Unused low bits in the last character make several strings decode to the same bytes.
    if b64url_encode(data) != segment:
        raise errors.Malformed("Token segment is not canonical base64url.")
    return data


_DECODER = strict_json_decoder(
    duplicate=lambda _key: errors.Malformed("Duplicate member in token JSON."),
    constant=lambda _name: errors.Malformed("Non-standard number in token JSON."),
)
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = _DECODER.decode(data.decode("utf-8", errors="strict"))
    except errors.Malformed:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise errors.Malformed(f"Token {what} is not UTF-8 JSON.") from None
    if not isinstance(value, dict):
        raise errors.Malformed(f"Token {what} is not a JSON object.")
    return value


def _compact_json(obj: Mapping[str, Any]) -> bytes:
    return _ENCODER.encode(obj).encode("utf-8")


@functools.lru_cache(maxsize=64)
def _header_segment(alg: str, kid: str) -> str:
    """The encoded protected header: the same for every token a key signs."""
    return b64url_encode(_compact_json({"alg": alg, "kid": kid, "typ": TYP}))


_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


def _sign_es256(data: bytes, private_key: Any) -> bytes:
    """The raw ``r || s`` signature (RFC 7518 §3.4), low s only. The same arithmetic as
    PyJWT's ES256 ``sign`` (cryptography's ECDSA), without its DER-to-raw step that the
    normalisation would undo again: the DER's integers are normalised and encoded once."""
    r, s = decode_dss_signature(private_key.sign(data, _ECDSA_SHA256))
    if s > _P256_N // 2:
        s = _P256_N - s
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def sign(claims: Claims, key: SigningKey) -> str:
    """Serialise and sign ``claims`` with ``key``; returns the compact token."""
    signing_input = (
        f"{_header_segment(key.alg, key.kid)}.{b64url_encode(_compact_json(claims.as_dict()))}"
    ).encode("ascii")
    if key.alg == "ES256":
        sig = _sign_es256(signing_input, key.private_key)
    else:
        sig = ALGORITHMS[key.alg].sign(signing_input, key.private_key)
    return f"{signing_input.decode('ascii')}.{b64url_encode(sig)}"


def _is_int(value: Any) -> bool:
    # bool is an int in Python; a JSON true is not a time.
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_TIME


def parse_unverified(token: Any) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """Step 1: size, shape, canonical base64url, strict JSON. No key is touched."""
    if not isinstance(token, str):
        raise errors.Malformed("Token must be a string.")
    if len(token) > MAX_TOKEN_BYTES:
        raise errors.Malformed("Token is too long.")
    if not token.isascii():
        raise errors.Malformed("Token must be ASCII.")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise errors.Malformed("Token must have three non-empty segments.")
    header = _json_object(b64url_decode(parts[0]), "header")
    claims = _json_object(b64url_decode(parts[1]), "claims")
    signature = b64url_decode(parts[2])
    return header, claims, signature, f"{parts[0]}.{parts[1]}".encode("ascii")


def verify(
    token: Any,
    *,
    keys: KeySource,
    issuer: str,
    purposes: Collection[str],
    audience: str | None,
    now: int,
    leeway: int,
    ceilings: Mapping[str, int],
) -> VerifiedToken:
    """Verify ``token`` for one of ``purposes`` at time ``now`` (seconds since the epoch).

    ``audience`` is the client the token must be for; ``None`` accepts any client id
    (the end-user pages, where the ledger row then decides). Raises a
    :class:`~linksvc.errors.LinkError`; never consults the ledger.
    """
    header, payload, signature, signing_input = parse_unverified(token)

    # Step 2: the header. Only our three members; the algorithm comes from our key.
    if set(header) != HEADER_MEMBERS:
        raise errors.BadHeader("Token header must hold exactly alg, kid and typ.")
    if header["typ"] != TYP:
        raise errors.BadHeader("Token typ must be link+jwt.")
    kid, alg = header["kid"], header["alg"]
    if not isinstance(kid, str) or not isinstance(alg, str) or not 0 < len(kid) <= 64:
        raise errors.BadHeader("Token kid and alg must be strings.")
    key = keys.verification_key(kid)  # raises UnknownKey
    if alg != key.alg:
        raise errors.WrongAlgorithm(f"Key {kid} signs with {key.alg} only.")

    # Step 3: the signature, then every claim.
    algorithm = ALGORITHMS[key.alg]
    if key.alg == "ES256":
        if len(signature) != 64 or int.from_bytes(signature[32:], "big") > _P256_N // 2:
            raise errors.BadSignature()
    try:
        good = algorithm.verify(signing_input, key.public_key, signature)
    except Exception:
        good = False
    if not good:
        raise errors.BadSignature()

    claims = check_claims(
        payload,
        issuer=issuer,
        purposes=purposes,
        audience=audience,
        now=now,
        leeway=leeway,
        ceilings=ceilings,
    )
    return VerifiedToken(claims=claims, kid=kid, alg=key.alg)


def check_claims(
    payload: Mapping[str, Any],
    *,
    issuer: str,
    purposes: Collection[str],
    audience: str | None,
    now: int,
    leeway: int,
    ceilings: Mapping[str, int],
) -> Claims:
    """Step 3's claim checks, in their order, on a signature-checked payload — or on the
    claims of a short link's ledger row (linksvc.links.handles), so that both forms of a link
    meet the same rules (a lowered ceiling, the leeway, the purpose). Raises LinkError."""
    jti = payload.get("jti")
    jti = jti if isinstance(jti, str) and JTI_RE.fullmatch(jti) else None
    if set(payload) != CLAIM_MEMBERS:
        raise errors.InvalidClaims(
            "Token claims must be exactly iss, aud, sub, pur, jti, iat, nbf, exp.", jti=jti
        )
    if payload["iss"] != issuer:
        raise errors.WrongIssuer(jti=jti)
    aud = payload["aud"]
    if not isinstance(aud, str) or not aud:
        raise errors.InvalidClaims("Token aud must be a single string.", jti=jti)
    if audience is not None and aud != audience:
        raise errors.WrongAudience(jti=jti)
    sub = payload["sub"]
    if not isinstance(sub, str) or not sub or len(sub) > MAX_SUBJECT_CHARS:
        raise errors.InvalidClaims("Token sub must be a non-empty string.", jti=jti)
    pur = payload["pur"]
    if not isinstance(pur, str) or pur not in ceilings:
        raise errors.InvalidClaims("Token pur is not a known purpose.", jti=jti)
    if pur not in purposes:
        raise errors.WrongPurpose(jti=jti, purpose=pur)
    if jti is None:
        raise errors.InvalidClaims("Token jti is not of the minted form.")
    iat, nbf, exp = payload["iat"], payload["nbf"], payload["exp"]
    if not (_is_int(iat) and _is_int(nbf) and _is_int(exp)):
        raise errors.InvalidClaims("Token times must be integers.", jti=jti)
    if exp - iat > ceilings[pur] or exp <= iat or nbf < iat:
        raise errors.LifetimeExceeded(jti=jti)
    if iat > now + leeway:
        raise errors.IssuedInFuture(jti=jti)
    if nbf > now + leeway:
        raise errors.NotYetValid(jti=jti)
    if exp <= now - leeway:
        raise errors.Expired(jti=jti, expired_at=exp)

    return Claims(iss=issuer, aud=aud, sub=sub, pur=pur, jti=jti, iat=iat, nbf=nbf, exp=exp)
