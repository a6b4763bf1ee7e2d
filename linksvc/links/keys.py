"""The signing key ring: asymmetric keys with a lifecycle, stored encrypted in the database.

A key is ``next`` (published, not signing) → ``active`` (the one key that signs) →
``retired`` (published and verifying until every token it signed has expired) →
``removed``. Keys live in the database so that every node sees a rotation within
``refresh_seconds`` without a restart and no key file has to be copied between machines;
private keys are encrypted with AES-256-GCM under a key-encryption key (KEK) that comes
from the environment and never enters the database, with the ``kid`` as associated data
so that an encrypted key cannot be moved to another row.

Timing, which the functions below enforce:

- a ``next`` key must have been published for :func:`min_next_age` seconds (the JWKS
  cache lifetime plus one refresh) before rotation may activate it, so a verifier that
  caches the JWKS knows a key before it signs;
- a ``retired`` key verifies for :func:`retired_window` seconds (the longest token
  lifetime plus leeway plus one refresh, since a worker that has not yet seen the
  rotation may sign with it for that long), then drops out of the JWKS and is removed.

This module knows nothing of Flask.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from sqlalchemy.engine import Connection, Engine

from linksvc import errors
from linksvc.links.tokens import ALGORITHMS, SigningKey, VerificationKey
from linksvc.store import db

log = logging.getLogger("linksvc.keys")

SUPPORTED_ALGS = ("ES256", "EdDSA", "RS256")
STATES = ("next", "active", "retired", "removed")
RSA_BITS = 2048

#: The public members of each key type. Anything else (``d``, ``p``, ``q``, ``dp``,
#: ``dq``, ``qi``, ``k``, ``oth``) is never published, whatever a row or library holds.
PUBLIC_MEMBERS: Mapping[str, frozenset[str]] = {
    "EC": frozenset({"kty", "crv", "x", "y"}),
    "OKP": frozenset({"kty", "crv", "x"}),
    "RSA": frozenset({"kty", "n", "e"}),
}
_KTY = {"ES256": "EC", "EdDSA": "OKP", "RS256": "RSA"}
_JWK_ALGORITHM = {"ES256": ECAlgorithm, "EdDSA": OKPAlgorithm, "RS256": RSAAlgorithm}

#: What a removed key's private key is overwritten with: it will never sign again, so
#: nothing that leaks later (a backup, the KEK) can bring it back.
ERASED = b""

#: Verifiers may cache the JWKS this long (the ``Cache-Control: max-age`` of the endpoint).
JWKS_MAX_AGE = 300


class KeyRingError(Exception):
    """An operation on the key ring that cannot be done; the message is for operators."""


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


def min_next_age(refresh_seconds: int) -> int:
    """How long a ``next`` key must have been published before rotation activates it."""
    return JWKS_MAX_AGE + refresh_seconds


def retired_window(max_lifetime: int, refresh_seconds: int) -> int:
    """How long after retirement a key still verifies: ``max_lifetime`` (longest ceiling
    plus leeway) plus one refresh, for links a worker minted before it saw the rotation."""
    return max_lifetime + refresh_seconds


def public_jwk(alg: str, jwk: Mapping[str, Any]) -> dict[str, Any]:
    """Only the public members of ``jwk`` for the key type of ``alg``."""
    allowed = PUBLIC_MEMBERS[_KTY[alg]]
    return {k: v for k, v in jwk.items() if k in allowed}


def _generate_private(alg: str) -> Any:
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    raise KeyRingError(f"unsupported algorithm {alg!r}; choose one of {', '.join(SUPPORTED_ALGS)}")


def _public_key(alg: str, jwk: Mapping[str, Any]) -> Any:
    """The public key object of a stored JWK, refusing one of the wrong type or size."""
    if jwk.get("kty") != _KTY[alg]:
        raise ValueError(f"JWK of type {jwk.get('kty')!r} for {alg}")
    key = _JWK_ALGORITHM[alg].from_jwk(json.dumps(public_jwk(alg, jwk)))  # type: ignore[attr-defined]
    if alg == "ES256" and not (
        isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    ):
        raise ValueError("ES256 key is not on P-256")
    if alg == "EdDSA" and not isinstance(key, ed25519.Ed25519PublicKey):
        raise ValueError("EdDSA key is not Ed25519")
    if alg == "RS256" and not (isinstance(key, rsa.RSAPublicKey) and key.key_size >= RSA_BITS):
        raise ValueError(f"RS256 key is not RSA of at least {RSA_BITS} bits")
    return key


def _encrypt(kek: bytes, kid: str, pem: bytes) -> bytes:
    nonce = secrets.token_bytes(12)
    return nonce + AESGCM(kek[:32]).encrypt(nonce, pem, kid.encode())


def _decrypt(kek: bytes, kid: str, blob: bytes) -> bytes:
    """The PEM of ``kid``; :class:`KeyRingError` if the KEK is not the one it was stored with."""
    try:
        return AESGCM(kek[:32]).decrypt(blob[:12], blob[12:], kid.encode())
    except (InvalidTag, ValueError):
        raise KeyRingError(
            f"LINKSVC_KEY_ENCRYPTION_KEY cannot decrypt signing key {kid} "
            "(a different key-encryption key than the one it was stored with?)"
        ) from None


def _private_key(kek: bytes, kid: str, alg: str, blob: bytes, jwk: Mapping[str, Any]) -> Any:
    """Decrypt and load a private key, and prove it is the pair of the published public key."""
    private = serialization.load_pem_private_key(_decrypt(kek, kid, blob), None)
    algorithm = ALGORITHMS[alg]
    probe = b"linksvc key check " + kid.encode()
    try:
        good = algorithm.verify(probe, _public_key(alg, jwk), algorithm.sign(probe, private))
    except Exception:
        good = False
    if not good:
        raise KeyRingError(f"signing key {kid} does not match its published public key")
    return private


# -- the ring in the database ----------------------------------------------------------


def _info(r: Mapping[str, Any]) -> KeyInfo:
    return KeyInfo(
        r["kid"],
        r["alg"],
        r["state"],
        r["created_at"],
        r["activated_at"],
        r["retired_at"],
        r["removed_at"],
        json.loads(r["public_jwk"]),
    )


def list_keys(conn: Connection) -> list[KeyInfo]:
    t = db.signing_keys
    rows = conn.execute(sa.select(t).order_by(t.c.created_at, t.c.kid)).mappings()
    return [_info(dict(r)) for r in rows]


def _one(conn: Connection, state: str) -> KeyInfo | None:
    """The newest key in ``state`` (there is at most one ``next`` and one ``active``)."""
    found = [k for k in list_keys(conn) if k.state == state]
    return found[-1] if found else None


def _set_state(conn: Connection, kid: str, from_state: str, **values: Any) -> None:
    """Move ``kid`` out of ``from_state``; a concurrent change of the same key is a conflict."""
    t = db.signing_keys
    n = conn.execute(
        sa.update(t).where(t.c.kid == kid, t.c.state == from_state).values(**values)
    ).rowcount
    if n != 1:
        raise KeyRingError(
            f"key {kid} changed while this command ran (another rotation?); "
            "check `keys list` and try again"
        )


def create_key(conn: Connection, kek: bytes, alg: str, state: str, now: int) -> KeyInfo:
    """Generate a key of ``alg`` and store it in ``state`` (``next`` or ``active``)."""
    if alg not in SUPPORTED_ALGS:
        raise KeyRingError(
            f"unsupported algorithm {alg!r}; choose one of {', '.join(SUPPORTED_ALGS)}"
        )
    if state not in ("next", "active"):
        raise KeyRingError(f"a new key is next or active, not {state!r}")
    private = _generate_private(alg)
    kid = f"{alg.lower()}-{time.strftime('%Y%m%d', time.gmtime(now))}-{secrets.token_hex(6)}"
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    jwk = public_jwk(alg, _JWK_ALGORITHM[alg].to_jwk(private.public_key(), as_dict=True))  # type: ignore[attr-defined]
    activated = now if state == "active" else None
    conn.execute(
        sa.insert(db.signing_keys).values(
            kid=kid,
            alg=alg,
            state=state,
            created_at=now,
            activated_at=activated,
            public_jwk=json.dumps(jwk),
            private_key_enc=_encrypt(kek, kid, pem),
        )
    )
    return KeyInfo(kid, alg, state, now, activated, None, None, jwk)


def ensure_keys(conn: Connection, kek: bytes, now: int, alg: str = "ES256") -> list[KeyInfo]:
    """Make sure there is an active key and a next key; returns what was created.

    A brand-new ring's first active key signs at once: nothing it could break exists yet.
    """
    created = []
    if _one(conn, "active") is None:
        created.append(create_key(conn, kek, alg, "active", now))
    if _one(conn, "next") is None:
        created.append(create_key(conn, kek, alg, "next", now))
    return created


def generate(conn: Connection, kek: bytes, alg: str, now: int) -> tuple[KeyInfo, str | None]:
    """A new key of ``alg``: the ``next`` key, or the active one if the ring has none.

    An existing next key is removed — it has never signed, so no link depends on it.
    Returns the new key and the kid it replaced.
    """
    replaced = None
    if _one(conn, "active") is None:
        return create_key(conn, kek, alg, "active", now), None
    old_next = _one(conn, "next")
    if old_next is not None:
        _set_state(
            conn, old_next.kid, "next", state="removed", removed_at=now, private_key_enc=ERASED
        )
        replaced = old_next.kid
    return create_key(conn, kek, alg, "next", now), replaced


def rotate(
    conn: Connection, kek: bytes, now: int, alg: str | None = None, *, min_age: int = 0
) -> tuple[str | None, str, str]:
    """``next`` → ``active``, ``active`` → ``retired``, and a new ``next``.

    Refuses (:class:`KeyRingError`) to activate a next key published less than ``min_age``
    seconds ago: a verifier with a cached JWKS would not know it yet. ``min_age=0`` is the
    emergency override, which also creates and activates a next key if there is none.
    Returns (retired kid, new active kid, new next kid). The new next key has ``alg``
    (default: the algorithm of the key being activated).
    """
    nxt = _one(conn, "next")
    if nxt is None:
        if min_age > 0:
            raise KeyRingError(
                "there is no next key to activate: run `keys generate`, then rotate once it "
                f"has been published for {min_age} s (or now with --force)"
            )
        nxt = create_key(conn, kek, alg or "ES256", "next", now)
    age = now - nxt.created_at
    if age < min_age:
        raise KeyRingError(
            f"next key {nxt.kid} has been published for only {age} s; verifiers may cache the "
            f"JWKS for {JWKS_MAX_AGE} s, so rotate in {min_age - age} s (or now with --force)"
        )
    old = _one(conn, "active")
    if old is not None:
        _set_state(conn, old.kid, "active", state="retired", retired_at=now)
    _set_state(conn, nxt.kid, "next", state="active", activated_at=now)
    new_next = create_key(conn, kek, alg or nxt.alg, "next", now)
    return (old.kid if old else None, nxt.kid, new_next.kid)


def retire_expired(conn: Connection, now: int, window: int) -> list[str]:
    """Remove retired keys whose every token has expired: ``retired_at + window < now``
    (``window`` from :func:`retired_window`)."""
    t = db.signing_keys
    done = [
        r.kid
        for r in conn.execute(
            sa.select(t.c.kid).where(t.c.state == "retired", t.c.retired_at + window < now)
        )
    ]
    if done:
        conn.execute(
            sa.update(t)
            .where(t.c.kid.in_(done), t.c.state == "retired")
            .values(state="removed", removed_at=now, private_key_enc=ERASED)
        )
    return done


def revoke(conn: Connection, kek: bytes, kid: str, now: int) -> tuple[KeyInfo, list[str]]:
    """Emergency removal: the key stops verifying at once (its tokens fail ``unknown_key``).

    Revoking the active key makes the next key active first, so minting never stops (if
    there is no next key, a new key signs at once: a leaked key must go even so). The
    ring is then given a fresh next key. Returns the removed key and what else changed.
    """
    t = db.signing_keys
    row = conn.execute(sa.select(t).where(t.c.kid == kid)).mappings().first()
    if row is None:
        raise KeyRingError(f"no key {kid!r}")
    info = _info(dict(row))
    if info.state == "removed":
        raise KeyRingError(f"key {kid} is already removed")
    notes = []
    _set_state(conn, kid, info.state, state="removed", removed_at=now, private_key_enc=ERASED)
    if info.state == "active":
        nxt = _one(conn, "next")
        if nxt is not None:
            _set_state(conn, nxt.kid, "next", state="active", activated_at=now)
            notes.append(f"active {nxt.kid}")
        else:
            notes.append(
                f"active {create_key(conn, kek, info.alg, 'active', now).kid} (new, unpublished until now)"
            )
    if info.state in ("active", "next"):
        notes.append(f"next {create_key(conn, kek, info.alg, 'next', now).kid}")
    return dataclasses.replace(info, state="removed", removed_at=now), notes


def rewrap(conn: Connection, old_kek: bytes, new_kek: bytes) -> list[str]:
    """Re-encrypt every stored private key from ``old_kek`` to ``new_kek`` (KEK rotation).

    Keys already under ``new_kek`` are left alone, so running it twice is harmless. A key
    that neither opens raises :class:`KeyRingError` and, in the caller's transaction,
    changes nothing. Returns the kids re-encrypted.
    """
    t = db.signing_keys
    done = []
    rows = conn.execute(sa.select(t.c.kid, t.c.private_key_enc).where(t.c.state != "removed")).all()
    for kid, blob in rows:
        try:
            _decrypt(new_kek, kid, blob)
            continue
        except KeyRingError:
            pass
        try:
            pem = _decrypt(old_kek, kid, blob)
        except KeyRingError:
            raise KeyRingError(
                f"neither the old nor the current key-encryption key opens signing key {kid}"
            ) from None
        conn.execute(
            sa.update(t).where(t.c.kid == kid).values(private_key_enc=_encrypt(new_kek, kid, pem))
        )
        done.append(kid)
    return done


# -- the ring as a worker sees it ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Snapshot:
    """One consistent view of the ring, replaced whole on each reload."""

    loaded_at: float
    keys: Mapping[str, tuple[KeyInfo, VerificationKey]]  # next, active and retired keys
    signing: SigningKey | None
    signing_problem: str | None


class KeyRing:
    """The keys as a running worker sees them, reloaded from the database every
    ``refresh_seconds``. Implements :class:`linksvc.links.tokens.KeySource`.

    ``max_lifetime`` is the longest a token can live (largest ceiling plus leeway); a
    retired key verifies for :func:`retired_window` of it. Whether a retired key still
    counts is decided at each call with ``clock``, not at load time.
    """

    def __init__(
        self,
        engine: Engine,
        kek: bytes | None,
        *,
        refresh_seconds: int = 5,
        max_lifetime: int = 965,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self._kek = kek
        self._refresh = refresh_seconds
        self.window = retired_window(max_lifetime, refresh_seconds)
        self._clock = clock
        self._lock = threading.Lock()
        self._snap: _Snapshot | None = None
        self._next_load = float("-inf")
        self._last_miss_reload = float("-inf")
        # Parsed keys by kid: RSA parsing costs milliseconds, and a reload comes every second or so.
        self._public_cache: dict[str, VerificationKey] = {}
        self._private_cache: dict[str, SigningKey] = {}
        self._reported: tuple[str, str] | None = None

    # loading

    def _load(self) -> _Snapshot:
        now = self._clock()
        t = db.signing_keys
        with db.read(self._engine) as conn:
            infos = [k for k in list_keys(conn) if k.state in ("next", "active", "retired")]
            active = [k for k in infos if k.state == "active"]
            blob = None
            if active and self._kek is not None and active[-1].kid not in self._private_cache:
                blob = conn.execute(
                    sa.select(t.c.private_key_enc).where(t.c.kid == active[-1].kid)
                ).scalar()
        keys: dict[str, tuple[KeyInfo, VerificationKey]] = {}
        for info in infos:
            vk = self._public_cache.get(info.kid)
            if vk is None:
                try:
                    vk = VerificationKey(info.kid, info.alg, _public_key(info.alg, info.public_jwk))
                except Exception as exc:
                    log.error(
                        "unusable public key skipped", extra={"kid": info.kid, "error": str(exc)}
                    )
                    continue
                self._public_cache[info.kid] = vk
            keys[info.kid] = (info, vk)
        signing, problem = None, None
        if self._kek is None:
            problem = "LINKSVC_KEY_ENCRYPTION_KEY is not set"
        elif not active:
            problem = None  # not yet initialised, which signing_key() and check() say
        else:
            info = active[-1]
            signing = self._private_cache.get(info.kid)
            if signing is None:
                try:
                    private = _private_key(
                        self._kek, info.kid, info.alg, blob or b"", info.public_jwk
                    )
                    signing = self._private_cache[info.kid] = SigningKey(
                        info.kid, info.alg, private
                    )
                except (KeyRingError, ValueError, TypeError) as exc:
                    problem = str(exc)
                    if (info.kid, problem) != self._reported:  # once, not on every reload
                        self._reported = (info.kid, problem)
                        log.error(
                            "active signing key unusable", extra={"kid": info.kid, "error": problem}
                        )
        live = set(keys)
        for cache in (self._public_cache, self._private_cache):
            for kid in set(cache) - live:
                del cache[kid]
        return _Snapshot(now, keys, signing, problem)

    def _current(self) -> _Snapshot:
        now = self._clock()
        if self._snap is not None and now < self._next_load:
            return self._snap
        with self._lock:
            if self._snap is None or self._clock() >= self._next_load:
                try:
                    self._snap = self._load()
                    self._next_load = self._snap.loaded_at + self._refresh
                except errors.ServiceUnavailable:
                    if self._snap is None:
                        raise
                    # Keep serving the last view (the ledger is down too, so nothing redeems
                    # meanwhile) and try again in a second instead of on every request.
                    log.warning("key ring reload failed; using the last loaded keys")
                    self._next_load = self._clock() + 1.0
            return self._snap

    def reload(self) -> None:
        """Load the ring now (a test, or a CLI command that has just changed it)."""
        with self._lock:
            self._snap = self._load()
            self._next_load = self._snap.loaded_at + self._refresh

    def _live(self, info: KeyInfo, now: float) -> bool:
        if info.state == "retired":
            return (info.retired_at or 0) + self.window >= now
        return True

    # KeySource

    def signing_key(self) -> SigningKey:
        if self._kek is None:
            raise errors.NotInitialised("the key-encryption key")
        snap = self._current()
        if snap.signing is None:
            if snap.signing_problem is not None:
                # The precise reason is in the log; callers of the API need not learn it.
                raise errors.ServiceUnavailable(
                    "signing key", "No usable signing key; the operator has been alerted."
                )
            raise errors.NotInitialised("an active signing key")
        return snap.signing

    def verification_key(self, kid: str) -> VerificationKey:
        snap = self._current()
        entry = snap.keys.get(kid)
        if entry is None:
            # A key created on another node moments ago (two rotations within one refresh):
            # reload, at most once a second, so a stream of made-up kids cannot become a
            # stream of queries.
            now = self._clock()
            with self._lock:
                if now - self._last_miss_reload >= 1.0:
                    self._last_miss_reload = now
                    try:
                        self._snap = self._load()
                        self._next_load = self._snap.loaded_at + self._refresh
                    except errors.ServiceUnavailable:
                        pass
                snap = self._snap or snap
            entry = snap.keys.get(kid)
        if entry is None or not self._live(entry[0], self._clock()):
            raise errors.UnknownKey()
        return entry[1]

    # publication

    def published(self) -> list[KeyInfo]:
        """``next``, ``active`` and retired keys still within their window, oldest first."""
        snap = self._current()
        now = self._clock()
        return [info for info, _ in snap.keys.values() if self._live(info, now)]

    def jwks(self) -> dict[str, Any]:
        """The JWK Set of :meth:`published`: public members only, with ``kid``, ``alg``, ``use``."""
        return {
            "keys": [
                {**public_jwk(k.alg, k.public_jwk), "kid": k.kid, "alg": k.alg, "use": "sig"}
                for k in self.published()
            ]
        }

    def check(self) -> SigningKey:
        """Load the ring now and return the signing key, or raise :class:`KeyRingError`
        saying why this process cannot sign (for start-up checks)."""
        if self._kek is None:
            raise KeyRingError("LINKSVC_KEY_ENCRYPTION_KEY is not set")
        try:
            self.reload()
        except errors.ServiceUnavailable as exc:
            cause = exc.__cause__
            hint = f" ({type(cause).__name__}: {str(cause).splitlines()[0]})" if cause else ""
            raise KeyRingError(
                f"cannot read the signing keys from the database{hint}; "
                "is LINKSVC_DATABASE_URL right, and has `.venv/bin/flask --app app init-db` run?"
            ) from None
        except sa.exc.DBAPIError as exc:
            raise KeyRingError(
                f"cannot read the signing keys from the database ({type(exc).__name__}); "
                "has `.venv/bin/flask --app app init-db` run?"
            ) from None
        snap = self._snap
        assert snap is not None
        if snap.signing is None:
            raise KeyRingError(
                snap.signing_problem
                or "there is no active signing key: run `.venv/bin/flask --app app init-db` "
                "or `.venv/bin/flask --app app keys generate`"
            )
        return snap.signing
