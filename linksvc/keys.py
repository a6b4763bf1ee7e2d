"""The signing key ring: asymmetric keys with a lifecycle, stored encrypted in the database.

A key is ``next`` (published, not signing) → ``active`` (the one key that signs) →
``retired`` (published and verifying until every token it signed has expired) →
``removed``. Keys live in the database so that every node sees a rotation within
``refresh_seconds`` without a restart; private keys are encrypted with AES-256-GCM under
a key-encryption key (KEK) that never enters the database.

This module knows nothing of Flask.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from sqlalchemy.engine import Connection, Engine

from . import db, errors
from .tokens import SigningKey, VerificationKey

SUPPORTED_ALGS = ("ES256", "EdDSA", "RS256")
STATES = ("next", "active", "retired", "removed")
PUBLIC_JWK_MEMBERS = {"kty", "crv", "x", "y", "n", "e"}


@dataclasses.dataclass(frozen=True)
class KeyInfo:
    kid: str
    alg: str
    state: str
    created_at: int
    activated_at: int | None
    retired_at: int | None
    removed_at: int | None
    public_jwk: dict[str, Any]


def _generate_private(alg: str) -> Any:
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unsupported algorithm {alg!r}; choose one of {', '.join(SUPPORTED_ALGS)}")


def _public_jwk(alg: str, public_key: Any) -> dict[str, Any]:
    if alg == "ES256":
        jwk = ECAlgorithm.to_jwk(public_key, as_dict=True)
    elif alg == "EdDSA":
        jwk = OKPAlgorithm.to_jwk(public_key, as_dict=True)
    else:
        jwk = RSAAlgorithm.to_jwk(public_key, as_dict=True)
    # Only public members, whatever the library adds.
    return {k: v for k, v in jwk.items() if k in PUBLIC_JWK_MEMBERS}


def _encrypt(kek: bytes, kid: str, pem: bytes) -> bytes:
    nonce = secrets.token_bytes(12)
    return nonce + AESGCM(kek[:32]).encrypt(nonce, pem, kid.encode())


def _decrypt(kek: bytes, kid: str, blob: bytes) -> bytes:
    try:
        return AESGCM(kek[:32]).decrypt(blob[:12], blob[12:], kid.encode())
    except Exception as exc:  # InvalidTag: the KEK is not the one the key was stored with
        raise errors.NotInitialised(f"a key-encryption key that opens signing key {kid}") from exc


def create_key(conn: Connection, kek: bytes, alg: str, state: str, now: int) -> KeyInfo:
    """Generate a key of ``alg`` and store it in ``state`` (``next`` or ``active``)."""
    if alg not in SUPPORTED_ALGS:
        raise ValueError(f"unsupported algorithm {alg!r}; choose one of {', '.join(SUPPORTED_ALGS)}")
    private = _generate_private(alg)
    kid = f"{alg.lower()}-{time.strftime('%Y%m%d', time.gmtime(now))}-{secrets.token_hex(4)}"
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    jwk = _public_jwk(alg, private.public_key())
    conn.execute(sa.insert(db.signing_keys).values(
        kid=kid, alg=alg, state=state, created_at=now,
        activated_at=now if state == "active" else None,
        public_jwk=json.dumps(jwk), private_key_enc=_encrypt(kek, kid, pem),
    ))
    return KeyInfo(kid, alg, state, now, now if state == "active" else None, None, None, jwk)


def list_keys(conn: Connection) -> list[KeyInfo]:
    rows = conn.execute(sa.select(db.signing_keys).order_by(db.signing_keys.c.created_at)).mappings()
    return [KeyInfo(r["kid"], r["alg"], r["state"], r["created_at"], r["activated_at"],
                    r["retired_at"], r["removed_at"], json.loads(r["public_jwk"])) for r in rows]


def ensure_keys(conn: Connection, kek: bytes, now: int, alg: str = "ES256") -> list[KeyInfo]:
    """Make sure there is an active key and a next key; returns what was created."""
    existing = list_keys(conn)
    created = []
    if not any(k.state == "active" for k in existing):
        created.append(create_key(conn, kek, alg, "active", now))
    if not any(k.state == "next" for k in existing):
        created.append(create_key(conn, kek, alg, "next", now))
    return created


def rotate(conn: Connection, kek: bytes, now: int, alg: str | None = None) -> tuple[str | None, str, str]:
    """``next`` → ``active``, ``active`` → ``retired``, and a new ``next``.

    Returns (retired kid, new active kid, new next kid). The new next key has ``alg``
    (default: the algorithm of the key being activated).
    """
    keys = {k.state: k for k in list_keys(conn) if k.state in ("next", "active")}
    nxt = keys.get("next")
    if nxt is None:
        nxt = create_key(conn, kek, alg or "ES256", "next", now)
    old = keys.get("active")
    t = db.signing_keys
    if old is not None:
        conn.execute(sa.update(t).where(t.c.kid == old.kid).values(state="retired", retired_at=now))
    conn.execute(sa.update(t).where(t.c.kid == nxt.kid).values(state="active", activated_at=now))
    new_next = create_key(conn, kek, alg or nxt.alg, "next", now)
    return (old.kid if old else None, nxt.kid, new_next.kid)


def retire_expired(conn: Connection, now: int, max_lifetime: int) -> list[str]:
    """Remove retired keys whose every token has expired (retired_at + lifetime + leeway)."""
    t = db.signing_keys
    done = [r.kid for r in conn.execute(sa.select(t.c.kid).where(
        t.c.state == "retired", t.c.retired_at + max_lifetime < now))]
    if done:
        conn.execute(sa.update(t).where(t.c.kid.in_(done)).values(state="removed", removed_at=now))
    return done


def revoke(conn: Connection, kid: str, now: int) -> KeyInfo:
    """Emergency removal: the key stops verifying at once (tokens fail ``unknown_key``).

    Revoking the active key makes the next key active first, so minting never stops.
    """
    t = db.signing_keys
    row = conn.execute(sa.select(t).where(t.c.kid == kid)).mappings().first()
    if row is None:
        raise KeyError(kid)
    if row["state"] == "active":
        nxt = conn.execute(sa.select(t.c.kid).where(t.c.state == "next")).scalar()
        if nxt is None:
            raise ValueError("no next key to take over; run `keys generate` first")
        conn.execute(sa.update(t).where(t.c.kid == nxt).values(state="active", activated_at=now))
    conn.execute(sa.update(t).where(t.c.kid == kid).values(state="removed", removed_at=now))
    return next(k for k in list_keys(conn) if k.kid == kid)


class KeyRing:
    """The keys as a running worker sees them, reloaded from the database periodically.

    Implements :class:`linksvc.tokens.KeySource`. ``max_lifetime`` is the longest a
    token can live (largest ceiling plus leeway): a retired key verifies that long.
    """

    def __init__(self, engine: Engine, kek: bytes | None, *, refresh_seconds: int = 5,
                 max_lifetime: int = 965, clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self._kek = kek
        self._refresh = refresh_seconds
        self._max_lifetime = max_lifetime
        self._clock = clock
        self._lock = threading.Lock()
        self._loaded_at = float("-inf")
        self._last_miss_reload = float("-inf")
        self._signing: SigningKey | None = None
        self._verifying: dict[str, VerificationKey] = {}
        self._published: list[KeyInfo] = []

    def _load(self) -> None:
        now = self._clock()
        with db.read(self._engine) as conn:
            infos = list_keys(conn)
            blobs = {r.kid: r.private_key_enc for r in conn.execute(
                sa.select(db.signing_keys.c.kid, db.signing_keys.c.private_key_enc)
                .where(db.signing_keys.c.state == "active"))}
        signing = None
        verifying = {}
        published = []
        for info in infos:
            live_retired = info.state == "retired" and (info.retired_at or 0) + self._max_lifetime >= now
            if info.state in ("next", "active") or live_retired:
                algorithm = {"ES256": ECAlgorithm, "EdDSA": OKPAlgorithm, "RS256": RSAAlgorithm}[info.alg]
                public = algorithm.from_jwk(json.dumps(info.public_jwk))
                verifying[info.kid] = VerificationKey(info.kid, info.alg, public)
                published.append(info)
            if info.state == "active" and self._kek is not None:
                pem = _decrypt(self._kek, info.kid, blobs[info.kid])
                signing = SigningKey(info.kid, info.alg, serialization.load_pem_private_key(pem, None))
        self._signing, self._verifying, self._published = signing, verifying, published
        self._loaded_at = now

    def _fresh(self) -> None:
        if self._clock() - self._loaded_at >= self._refresh:
            with self._lock:
                if self._clock() - self._loaded_at >= self._refresh:
                    self._load()

    def reload(self) -> None:
        with self._lock:
            self._load()

    def signing_key(self) -> SigningKey:
        if self._kek is None:
            raise errors.NotInitialised("the key-encryption key")
        self._fresh()
        if self._signing is None:
            raise errors.NotInitialised("an active signing key")
        return self._signing

    def verification_key(self, kid: str) -> VerificationKey:
        self._fresh()
        key = self._verifying.get(kid)
        if key is None:
            # A key activated on another node moments ago: reload, at most once a second,
            # so that a stream of made-up kids cannot turn into a stream of queries.
            now = self._clock()
            with self._lock:
                if now - self._last_miss_reload >= 1.0:
                    self._last_miss_reload = now
                    self._load()
            key = self._verifying.get(kid)
        if key is None:
            raise errors.UnknownKey()
        return key

    def jwks(self) -> dict[str, Any]:
        """The published public keys: ``next``, ``active`` and live ``retired`` ones."""
        self._fresh()
        return {"keys": [{**k.public_jwk, "kid": k.kid, "alg": k.alg, "use": "sig"} for k in self._published]}

    def published(self) -> list[KeyInfo]:
        self._fresh()
        return list(self._published)
