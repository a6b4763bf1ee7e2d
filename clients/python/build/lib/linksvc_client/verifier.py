"""Offline verification of link tokens with linksvc's published keys (its JWKS).

For a service that only needs to know that a link is genuine and unexpired — not to
consume it, which only linksvc's ledger can do (:meth:`LinkClient.redeem`). The checks
are the server's strict profile (PRODUCT §1 steps 1–3), in its order and with its reason
codes; PyJWT only does the signature arithmetic, because its defaults accept tokens this
profile refuses (no ``typ`` check, ``aud`` lists, float times, padded signatures, …).

The key set is cached. It is refreshed when older than ``max_age``; a token naming a key
the cache does not hold triggers a refresh at most once per ``min_refresh_interval``
(30 s), so made-up ``kid`` values cannot turn into a stream of fetches; and a refresh
that fails keeps the last good key set (an outage of the JWKS endpoint does not stop
verification with the keys already known).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

import httpx
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from . import errors
from .models import PURPOSES, Claims

log = logging.getLogger("linksvc_client.verifier")

TYP = "link+jwt"
MAX_TOKEN_BYTES = 4096
HEADER_MEMBERS = frozenset({"alg", "kid", "typ"})
CLAIM_MEMBERS = frozenset({"iss", "aud", "sub", "pur", "jti", "iat", "nbf", "exp"})
JTI_RE = re.compile(r"[A-Za-z0-9_-]{22}")
HARD_MAX_LIFETIME = 900
MAX_LEEWAY = 60
MAX_TIME = 2**40
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")
# Order of the P-256 group: linksvc signs with low s only, leaving one encoding per signature.
_P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

_ALGORITHMS: Mapping[str, Any] = {
    "ES256": ECAlgorithm(ECAlgorithm.SHA256),
    "EdDSA": OKPAlgorithm(),
    "RS256": RSAAlgorithm(RSAAlgorithm.SHA256),
}


def _refuse(code: str, detail: str, jti: str | None = None) -> errors.LinksvcError:
    cls: type[errors.LinksvcError] = (
        errors.LinkExpired if code == "expired" else errors.InvalidToken
    )
    return cls(detail, code=code, body={"jti": jti} if jti else None)


def _b64url(segment: str) -> bytes:
    if not _B64URL_RE.fullmatch(segment) or len(segment) % 4 == 1:
        raise _refuse("malformed", "Token segment is not canonical base64url.")
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise _refuse("malformed", "Token segment is not base64url.") from None
    # Unused low bits in the last character make several strings decode to the same bytes.
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii") != segment:
        raise _refuse("malformed", "Token segment is not canonical base64url.")
    return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError("duplicate member")
        obj[key] = value
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError("non-standard number")


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(
            data.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_reject_constant
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _refuse("malformed", f"Token {what} is not UTF-8 JSON without duplicates.") from None
    if not isinstance(value, dict):
        raise _refuse("malformed", f"Token {what} is not a JSON object.")
    return value


def _is_time(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_TIME


class JWKSCache:
    """linksvc's public keys by ``kid``, fetched from ``jwks_url`` and kept as described
    in the module docstring. Thread-safe."""

    def __init__(
        self,
        jwks_url: str,
        *,
        http: httpx.Client | None = None,
        timeout: float = 5.0,
        max_age: float = 300.0,
        min_refresh_interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.jwks_url = jwks_url
        self.max_age = max_age
        self.min_refresh_interval = min_refresh_interval
        self._http = http or httpx.Client(follow_redirects=False)
        self._timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[str, Any]] = {}
        self._fetched_at: float | None = None  # of the key set in use
        self._tried_at: float | None = None  # of the last fetch, good or not
        #: How many fetches were made (for tests and metrics).
        self.fetches = 0

    def _fetch(self) -> dict[str, tuple[str, Any]]:
        self.fetches += 1
        resp = self._http.get(self.jwks_url, timeout=self._timeout)
        resp.raise_for_status()
        body = resp.json()
        if not isinstance(body, dict) or not isinstance(body.get("keys"), list):
            raise ValueError("not a JWK Set")
        keys: dict[str, tuple[str, Any]] = {}
        for jwk in body["keys"]:
            if not isinstance(jwk, dict):
                continue
            kid, alg = jwk.get("kid"), jwk.get("alg")
            if (
                not isinstance(kid, str)
                or not isinstance(alg, str)
                or alg not in _ALGORITHMS
                or jwk.get("use", "sig") != "sig"
            ):
                continue
            if alg == "ES256" and jwk.get("crv") != "P-256":
                continue
            if any(k in jwk for k in ("d", "p", "q", "dp", "dq", "qi")):
                continue  # a private key published by mistake is not a key we trust
            try:
                keys[kid] = (alg, _ALGORITHMS[alg].from_jwk(json.dumps(jwk)))
            except Exception:  # one unusable key does not spoil the set
                log.warning("unusable key in JWKS skipped", extra={"kid": kid})
        return keys

    def _refresh(self, now: float) -> None:
        """Fetch the key set; on failure keep the last good one (caller holds the lock)."""
        self._tried_at = now
        try:
            keys = self._fetch()
        except (httpx.HTTPError, ValueError) as exc:
            log.warning(
                "JWKS refresh failed; keeping the last good key set",
                extra={"url": self.jwks_url, "error": type(exc).__name__},
            )
            return
        self._keys, self._fetched_at = keys, now

    def get(self, kid: str) -> tuple[str, Any]:
        """The (algorithm, public key) of ``kid``; raises InvalidToken ``unknown_key``, or
        ServiceUnavailable when no key set could ever be fetched."""
        with self._lock:
            now = self._clock()
            may_try = self._tried_at is None or now - self._tried_at >= self.min_refresh_interval
            stale = self._fetched_at is None or now - self._fetched_at >= self.max_age
            if (stale or kid not in self._keys) and may_try:
                self._refresh(now)
            if self._fetched_at is None:
                raise errors.ServiceUnavailable(
                    f"linksvc's keys could not be fetched from {self.jwks_url}.",
                    code="jwks_unavailable",
                )
            entry = self._keys.get(kid)
        if entry is None:
            raise _refuse("unknown_key", "The token names a key that linksvc does not publish.")
        return entry


class LinkVerifier:
    """Checks link tokens offline, with the keys linksvc publishes::

        verifier = LinkVerifier("https://links.example", "https://links.example/.well-known/jwks.json",
                                audience="cl_…")
        claims = verifier.verify(token, "download")

    ``issuer`` is linksvc's issuer URL (the ``iss`` of its tokens), ``audience`` your
    client id. ``max_lifetime`` is the longest ``exp - iat`` accepted — one number, or
    one per purpose — never above 900 s; ``leeway`` the clock skew allowed (at most 60 s).
    This says a token is genuine and unexpired; whether it was used is the ledger's to say.
    """

    def __init__(
        self,
        issuer: str,
        jwks_url: str,
        *,
        audience: str,
        leeway: int = 5,
        max_lifetime: int | Mapping[str, int] = HARD_MAX_LIFETIME,
        http: httpx.Client | None = None,
        timeout: float = 5.0,
        max_age: float = 300.0,
        min_refresh_interval: float = 30.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(audience, str) or not audience:
            raise ValueError("audience must be your client id")
        if not 0 <= leeway <= MAX_LEEWAY:
            raise ValueError(f"leeway must be between 0 and {MAX_LEEWAY} seconds")
        ceilings = (
            dict.fromkeys(PURPOSES, max_lifetime)
            if isinstance(max_lifetime, int)
            else dict(max_lifetime)
        )
        if not all(0 < v <= HARD_MAX_LIFETIME for v in ceilings.values()):
            raise ValueError(f"max_lifetime must be between 1 and {HARD_MAX_LIFETIME} seconds")
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.ceilings = ceilings
        self.clock = clock
        self.keys = JWKSCache(
            jwks_url,
            http=http,
            timeout=timeout,
            max_age=max_age,
            min_refresh_interval=min_refresh_interval,
            clock=monotonic,
        )

    def verify(
        self, token: Any, purpose: str | Collection[str], *, now: int | None = None
    ) -> Claims:
        """The checked claims of ``token`` for ``purpose`` (or one of several), or an
        :class:`InvalidToken` / :class:`LinkExpired` with the server's reason code."""
        purposes = {purpose} if isinstance(purpose, str) else set(purpose)
        now = int(self.clock()) if now is None else now
        # Step 1: size and shape, before any parsing.
        if not isinstance(token, str):
            raise _refuse("malformed", "Token must be a string.")
        if len(token) > MAX_TOKEN_BYTES or not token.isascii():
            raise _refuse("malformed", "Token is too long or not ASCII.")
        parts = token.split(".")
        if len(parts) != 3 or not all(parts):
            raise _refuse("malformed", "Token must have three non-empty segments.")
        header = _json_object(_b64url(parts[0]), "header")
        payload = _json_object(_b64url(parts[1]), "claims")
        signature = _b64url(parts[2])

        # Step 2: the header. Only our three members; the algorithm comes from the key.
        if set(header) != HEADER_MEMBERS:
            raise _refuse("bad_header", "Token header must hold exactly alg, kid and typ.")
        if header["typ"] != TYP:
            raise _refuse("bad_header", "Token typ must be link+jwt.")
        kid, alg = header["kid"], header["alg"]
        if not isinstance(kid, str) or not isinstance(alg, str) or not 0 < len(kid) <= 64:
            raise _refuse("bad_header", "Token kid and alg must be strings.")
        key_alg, key = self.keys.get(kid)
        if alg != key_alg:
            raise _refuse("wrong_algorithm", f"Key {kid} signs with {key_alg} only.")

        # Step 3: the signature, then every claim with its JSON type.
        if key_alg == "ES256" and (
            len(signature) != 64 or int.from_bytes(signature[32:], "big") > _P256_N // 2
        ):
            raise _refuse("bad_signature", "The token signature is not valid.")
        signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
        try:
            good = bool(_ALGORITHMS[key_alg].verify(signing_input, key, signature))
        except Exception:
            good = False
        if not good:
            raise _refuse("bad_signature", "The token signature is not valid.")

        raw_jti = payload.get("jti")
        jti = raw_jti if isinstance(raw_jti, str) and JTI_RE.fullmatch(raw_jti) else None
        if set(payload) != CLAIM_MEMBERS:
            raise _refuse(
                "invalid_claims",
                "Token claims must be exactly iss, aud, sub, pur, jti, iat, nbf, exp.",
                jti,
            )
        if payload["iss"] != self.issuer:
            raise _refuse("wrong_issuer", "The token was not issued by this linksvc.", jti)
        aud = payload["aud"]
        if not isinstance(aud, str) or not aud:
            raise _refuse("invalid_claims", "Token aud must be a single string.", jti)
        if aud != self.audience:
            raise _refuse("wrong_audience", "The token was minted for another application.", jti)
        sub = payload["sub"]
        if not isinstance(sub, str) or not sub or len(sub) > 255:
            raise _refuse("invalid_claims", "Token sub must be a non-empty string.", jti)
        pur = payload["pur"]
        if not isinstance(pur, str) or pur not in self.ceilings:
            raise _refuse("invalid_claims", "Token pur is not a known purpose.", jti)
        if pur not in purposes:
            raise _refuse("wrong_purpose", "The token is for another purpose.", jti)
        if jti is None:
            raise _refuse("invalid_claims", "Token jti is not of the minted form.")
        iat, nbf, exp = payload["iat"], payload["nbf"], payload["exp"]
        if not (_is_time(iat) and _is_time(nbf) and _is_time(exp)):
            raise _refuse("invalid_claims", "Token times must be integers.", jti)
        if exp - iat > self.ceilings[pur] or exp <= iat or nbf < iat:
            raise _refuse("lifetime_exceeded", "The token lives longer than allowed.", jti)
        if iat > now + self.leeway:
            raise _refuse("issued_in_future", "The token claims to be issued in the future.", jti)
        if nbf > now + self.leeway:
            raise _refuse("not_yet_valid", "The link is not valid yet.", jti)
        if exp <= now - self.leeway:
            raise _refuse("expired", "The link has expired.", jti)
        return Claims.from_jwt(payload)
