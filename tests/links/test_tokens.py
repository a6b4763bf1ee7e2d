"""linksvc.tokens on its own: sign and verify for each algorithm, with an in-memory key source.

No database, no Flask: what the verifier decides from the token and the key alone.
"""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from linksvc import errors
from linksvc.links import tokens
from tests.support import forge

ALGS = ("ES256", "EdDSA", "RS256")
ISS = "https://links.example"
NOW = 1_800_000_000
CEILINGS = {"magic_link": 300, "password_reset": 300, "download": 300}


def _private(alg: str):
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Ring:
    """A KeySource of one key per algorithm."""

    def __init__(self) -> None:
        self.signing: dict[str, tokens.SigningKey] = {}
        self.public: dict[str, tokens.VerificationKey] = {}
        for alg in ALGS:
            self.add(alg, f"{alg.lower()}-test")

    def add(self, alg: str, kid: str) -> tokens.SigningKey:
        priv = _private(alg)
        self.signing[kid] = tokens.SigningKey(kid, alg, priv)
        self.public[kid] = tokens.VerificationKey(kid, alg, priv.public_key())
        return self.signing[kid]

    def signing_key(self) -> tokens.SigningKey:  # pragma: no cover - the tests pick keys by hand
        raise AssertionError

    def verification_key(self, kid: str) -> tokens.VerificationKey:
        if kid not in self.public:
            raise errors.UnknownKey()
        return self.public[kid]


@pytest.fixture(scope="module")
def ring() -> Ring:
    return Ring()


def claims(**over) -> tokens.Claims:
    base = {
        "iss": ISS,
        "aud": "cl_acme",
        "sub": "user-42",
        "pur": "magic_link",
        "jti": tokens.new_jti(),
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 300,
    }
    base.update(over)
    return tokens.Claims(**base)


def verify(token, ring, **over):
    kw = {
        "keys": ring,
        "issuer": ISS,
        "purposes": ("magic_link",),
        "audience": "cl_acme",
        "now": NOW + 10,
        "leeway": 5,
        "ceilings": CEILINGS,
    }
    kw.update(over)
    return tokens.verify(token, **kw)


def key_of(ring: Ring, alg: str) -> tokens.SigningKey:
    return ring.signing[f"{alg.lower()}-test"]


@pytest.mark.parametrize("alg", ALGS)
def test_round_trip(ring, alg):
    c = claims()
    token = tokens.sign(c, key_of(ring, alg))
    header, body, _ = forge.split(token)
    assert header == {"alg": alg, "kid": f"{alg.lower()}-test", "typ": "link+jwt"}
    assert body == c.as_dict()
    got = verify(token, ring)
    assert got.claims == c and got.alg == alg and got.kid == f"{alg.lower()}-test"


@pytest.mark.parametrize("alg", ALGS)
def test_signature_is_checked_with_the_named_key_only(ring, alg):
    """A token signed by a different key of the same algorithm, under our kid, fails."""
    stranger = Ring().signing[f"{alg.lower()}-test"]
    token = tokens.sign(claims(), stranger)
    with pytest.raises(errors.BadSignature):
        verify(token, ring)


@pytest.mark.parametrize("alg", ALGS)
def test_tampered_claims_fail(ring, alg):
    token = tokens.sign(claims(), key_of(ring, alg))
    h, c, s = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(c + "=" * (-len(c) % 4)))
    body["sub"] = "admin"
    with pytest.raises(errors.BadSignature):
        verify(f"{h}.{forge.seg(body)}.{s}", ring)


@pytest.mark.parametrize("key_alg", ALGS)
@pytest.mark.parametrize("header_alg", [*ALGS, "HS256", "none", "ES384", "PS256", "EdDSA "])
def test_known_kid_with_another_alg_in_header_is_refused(ring, key_alg, header_alg):
    """The algorithm comes from our key; a header naming another one is refused before
    any signature arithmetic, whatever the signature is."""
    if header_alg == key_alg:
        return
    key = key_of(ring, key_alg)
    header = {"alg": header_alg, "kid": key.kid, "typ": "link+jwt"}
    # Signed with the real key (so only the alg differs) ...
    with pytest.raises(errors.WrongAlgorithm):
        verify(forge.resign(header, claims().as_dict(), key), ring)
    # ... and the classic confusion: HMAC keyed with our public key's bytes.
    pem = key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(errors.WrongAlgorithm):
        verify(forge.hs256(header, claims().as_dict(), pem), ring)


@pytest.mark.parametrize("alg", ALGS)
def test_signature_of_another_algorithm_with_right_header_fails(ring, alg):
    """Header alg matches the key, but the bytes are a signature by a key of another type."""
    other = next(a for a in ALGS if a != alg)
    header = {"alg": alg, "kid": key_of(ring, alg).kid, "typ": "link+jwt"}
    forged = forge.resign({**header, "alg": other}, claims().as_dict(), key_of(ring, other))
    _h, c, s = forged.split(".")
    with pytest.raises(errors.BadSignature):
        verify(f"{forge.seg(header)}.{c}.{s}", ring)


def test_unknown_kid(ring):
    token = tokens.sign(
        claims(), tokens.SigningKey("nobody", "ES256", ec.generate_private_key(ec.SECP256R1()))
    )
    with pytest.raises(errors.UnknownKey):
        verify(token, ring)


def test_es256_signs_low_s_and_refuses_high_s(ring):
    key = key_of(ring, "ES256")
    for _ in range(20):  # about half of raw ECDSA signatures are high-s; sign() must normalise all
        token = tokens.sign(claims(), key)
        sig = forge.base64.urlsafe_b64decode(token.split(".")[2] + "==")
        s = int.from_bytes(sig[32:], "big")
        assert s <= tokens._P256_N // 2
        high = sig[:32] + (tokens._P256_N - s).to_bytes(32, "big")
        with pytest.raises(errors.BadSignature):
            verify(f"{token.rsplit('.', 1)[0]}.{forge.b64(high)}", ring)
        verify(token, ring)


@pytest.mark.parametrize("alg", ALGS)
def test_signature_padding_or_truncation_fails(ring, alg):
    token = tokens.sign(claims(), key_of(ring, alg))
    with pytest.raises(errors.Malformed):
        verify(token + "=", ring)
    with pytest.raises((errors.BadSignature, errors.Malformed)):
        verify(token[:-4], ring)
    with pytest.raises(errors.BadSignature):
        verify(token.rsplit(".", 1)[0] + "." + forge.b64(b"\x00" * 64), ring)


@pytest.mark.parametrize("alg", ALGS)
def test_claim_checks_apply_to_every_algorithm(ring, alg):
    key = key_of(ring, alg)
    with pytest.raises(errors.Expired):
        verify(tokens.sign(claims(exp=NOW + 20), key), ring, now=NOW + 26)
    verify(tokens.sign(claims(exp=NOW + 20), key), ring, now=NOW + 24)  # within leeway
    with pytest.raises(errors.LifetimeExceeded):
        verify(tokens.sign(claims(exp=NOW + 301), key), ring)
    with pytest.raises(errors.WrongAudience):
        verify(tokens.sign(claims(aud="cl_other"), key), ring)
    with pytest.raises(errors.WrongPurpose):
        verify(tokens.sign(claims(pur="download"), key), ring)
    with pytest.raises(errors.WrongIssuer):
        verify(tokens.sign(claims(iss="https://evil.example"), key), ring)
    with pytest.raises(errors.IssuedInFuture):
        verify(tokens.sign(claims(iat=NOW + 100, nbf=NOW + 100, exp=NOW + 200), key), ring)


@pytest.mark.parametrize("alg", ALGS)
def test_extra_header_member_is_refused_even_when_signed(ring, alg):
    key = key_of(ring, alg)
    for extra in (
        {"jku": "https://evil.example/jwks"},
        {"jwk": {"kty": "oct", "k": "AAAA"}},
        {"crit": ["exp"]},
    ):
        header = {"alg": alg, "kid": key.kid, "typ": "link+jwt", **extra}
        with pytest.raises(errors.BadHeader):
            verify(forge.resign(header, claims().as_dict(), key), ring)
    with pytest.raises(errors.BadHeader):
        verify(
            forge.resign({"alg": alg, "kid": key.kid, "typ": "JWT"}, claims().as_dict(), key), ring
        )
