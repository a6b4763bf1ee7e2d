"""Hypothesis properties of the token verifier (linksvc.links.tokens.verify), with no app around it.

1. Whatever it is given — any object, any string, any bytes, any JSON header and claims
   signed with a real key — it answers with a verified token or raises a
   :class:`~linksvc.errors.LinkError`; nothing else ever escapes.
2. It accepts nothing that was not minted: every change to a minted token (any character
   replaced, inserted or deleted, segments swapped, truncated, extended, re-encoded) is
   refused, and the only accepted token is the identical one, with the claims minted.
3. What it accepts obeys every rule of PRODUCT §1, even for arbitrary signed JSON.
"""

from __future__ import annotations

import base64
import json
import os
import string
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from linksvc import errors
from linksvc.links import tokens
from tests.support import forge

EXAMPLES = int(os.environ.get("LINKSVC_PROPERTY_EXAMPLES", "200"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Tests that sign every example (RSA signing is the slow part) get half as many.
SIGNING_SETTINGS = settings(SETTINGS, max_examples=max(EXAMPLES // 2, 10))

ISSUER = "https://links.example"
NOW = 1_800_000_000
LEEWAY = 5
CEILINGS = {"magic_link": 300, "password_reset": 300, "download": 300}
AUDIENCE = "cl_0123456789abcdef"


class StaticKeys:
    """A KeySource over fixed keys: one of each algorithm, the ES256 one signing."""

    def __init__(self) -> None:
        self.signing = {
            "ES256": tokens.SigningKey("es256-k", "ES256", ec.generate_private_key(ec.SECP256R1())),
            "EdDSA": tokens.SigningKey("eddsa-k", "EdDSA", ed25519.Ed25519PrivateKey.generate()),
            "RS256": tokens.SigningKey(
                "rs256-k", "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)
            ),
        }
        self.by_kid = {
            k.kid: tokens.VerificationKey(k.kid, k.alg, k.private_key.public_key())
            for k in self.signing.values()
        }

    def signing_key(self) -> tokens.SigningKey:
        return self.signing["ES256"]

    def verification_key(self, kid: str) -> tokens.VerificationKey:
        if kid not in self.by_kid:
            raise errors.UnknownKey()
        return self.by_kid[kid]


KEYS = StaticKeys()
ALGS = list(KEYS.signing)


def verify(
    token: Any,
    *,
    purposes: tuple[str, ...] = ("magic_link",),
    audience: str | None = AUDIENCE,
    now: int = NOW,
) -> tokens.VerifiedToken:
    return tokens.verify(
        token,
        keys=KEYS,
        issuer=ISSUER,
        purposes=purposes,
        audience=audience,
        now=now,
        leeway=LEEWAY,
        ceilings=CEILINGS,
    )


def refused(token: Any, **kw: Any) -> errors.LinkError:
    """The LinkError ``verify`` raises; fails the test on acceptance or on any other exception."""
    try:
        verify(token, **kw)
    except (errors.LinkError, errors.ServiceUnavailable) as exc:
        return exc  # type: ignore[return-value]
    raise AssertionError(f"accepted a token that must be refused: {token!r:.200}")


def mint(
    alg: str = "ES256", sub: str = "user-1", pur: str = "magic_link", ttl: int = 300
) -> tuple[str, tokens.Claims]:
    claims = tokens.Claims(
        iss=ISSUER,
        aud=AUDIENCE,
        sub=sub,
        pur=pur,
        jti=tokens.new_jti(),
        iat=NOW - 10,
        nbf=NOW - 10,
        exp=NOW - 10 + ttl,
    )
    return tokens.sign(claims, KEYS.signing[alg]), claims


def only_link_errors(token: Any, **kw: Any) -> tokens.VerifiedToken | None:
    try:
        return verify(token, **kw)
    except (errors.LinkError, errors.ServiceUnavailable):
        return None
    # anything else propagates and fails the property


def test_a_minted_token_verifies():
    for alg in ALGS:
        token, claims = mint(alg)
        assert verify(token).claims == claims


# -- 1. nothing but LinkError escapes -----------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=8,
)
B64_ALPHABET = string.ascii_letters + string.digits + "-_"


@SETTINGS
@given(
    st.one_of(
        st.none(),
        st.integers(),
        st.binary(max_size=300),
        json_values,
        st.text(max_size=300),
        st.text(alphabet=B64_ALPHABET + ".=+/ ", max_size=600),
    )
)
def test_arbitrary_input_only_raises_link_errors(value):
    assert only_link_errors(value) is None


@SETTINGS
@given(st.lists(st.binary(max_size=120), min_size=1, max_size=5))
def test_arbitrary_segments_only_raise_link_errors(segments):
    token = ".".join(forge.b64(s) for s in segments)
    assert only_link_errors(token) is None


@SIGNING_SETTINGS
@given(
    header=st.dictionaries(
        st.sampled_from(["alg", "kid", "typ", "jku", "jwk", "x5u", "x5c", "crit", "b64", "zip"])
        | st.text(max_size=5),
        json_values,
        max_size=6,
    ),
    claims=st.dictionaries(st.text(max_size=5), json_values, max_size=9),
    alg=st.sampled_from(ALGS),
)
def test_arbitrary_json_signed_with_a_real_key_only_raises_link_errors(header, claims, alg):
    token = forge.resign(header, claims, KEYS.signing[alg])
    assert (
        only_link_errors(token) is None
    )  # random JSON never has all eight claims of the right form


# -- 3. what is accepted obeys every rule, however the JSON was made --------------


def _perturbed(valid: Any, wrong: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly (7 in 8) the valid value, sometimes a hostile one: some examples are all valid."""
    return st.integers(0, 7).flatmap(lambda n: wrong if n == 0 else st.just(valid))


@st.composite
def near_valid(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any], str]:
    alg = draw(st.sampled_from(ALGS))
    key = KEYS.signing[alg]
    iat = draw(
        _perturbed(
            NOW - 10,
            st.one_of(
                st.integers(NOW - 1000, NOW + 100),
                st.just(str(NOW)),
                st.just(float(NOW)),
                st.just(True),
                st.just(-1),
                st.just(2**63),
            ),
        )
    )
    ttl = draw(_perturbed(300, st.integers(-10, 1000)))
    header = {
        "alg": draw(
            _perturbed(
                alg, st.sampled_from(["none", "None", "HS256", "ES256", "EdDSA", "RS256", "", 1])
            )
        ),
        "kid": draw(
            _perturbed(key.kid, st.sampled_from([*KEYS.by_kid, "../x", "", None, "x" * 70]))
        ),
        "typ": draw(
            _perturbed(tokens.TYP, st.sampled_from(["JWT", "LINK+JWT", None, "link+jwt "]))
        ),
    }
    if draw(st.booleans()) and draw(st.booleans()):
        header[draw(st.sampled_from(["jku", "jwk", "x5u", "x5c", "crit", "cty"]))] = "x"
    claims = {
        "iss": draw(
            _perturbed(
                ISSUER, st.sampled_from([ISSUER + "/", "https://evil.example", None, [ISSUER]])
            )
        ),
        "aud": draw(_perturbed(AUDIENCE, st.sampled_from([[AUDIENCE], "cl_other", "", None, 1]))),
        "sub": draw(_perturbed("user-1", st.sampled_from(["", None, 7, ["user-1"], "u" * 300]))),
        "pur": draw(
            _perturbed(
                "magic_link", st.sampled_from(["download", "password_reset", "admin", None, ""])
            )
        ),
        "jti": draw(
            _perturbed(
                tokens.new_jti(), st.sampled_from(["short", None, "A" * 23, "A" * 21 + "=", 5])
            )
        ),
        "iat": iat,
        "nbf": draw(_perturbed(iat, st.integers(NOW - 1000, NOW + 100) | st.just(None))),
        "exp": (iat + ttl) if isinstance(iat, int) and not isinstance(iat, bool) else NOW + 100,
    }
    if draw(st.integers(0, 5)) == 0:
        claims.pop(draw(st.sampled_from(sorted(claims))))
    if draw(st.integers(0, 5)) == 0:
        claims[draw(st.sampled_from(["email", "admin", "scope", "nonce"]))] = "x"
    return header, claims, alg


def test_accepted_tokens_obey_every_rule():
    outcomes = {"accepted": 0, "refused": 0}

    @settings(SIGNING_SETTINGS, suppress_health_check=list(HealthCheck))
    @given(near_valid())
    def run(case):
        accepted = _check_accepted(*case)
        outcomes["accepted" if accepted else "refused"] += 1

    run()
    # the property is only worth something if both sides were reached
    assert outcomes["accepted"] > 0 and outcomes["refused"] > 0, outcomes


def _check_accepted(header: dict[str, Any], claims: dict[str, Any], alg: str) -> bool:
    token = forge.resign(header, claims, KEYS.signing[alg])
    result = only_link_errors(token)
    if result is None:
        return False
    key = KEYS.signing[alg]
    assert header == {"alg": key.alg, "kid": key.kid, "typ": "link+jwt"}
    assert set(claims) == tokens.CLAIM_MEMBERS
    assert claims["iss"] == ISSUER and claims["aud"] == AUDIENCE and claims["pur"] == "magic_link"
    assert isinstance(claims["sub"], str) and 0 < len(claims["sub"]) <= tokens.MAX_SUBJECT_CHARS
    assert isinstance(claims["jti"], str) and tokens.JTI_RE.fullmatch(claims["jti"])
    for name in ("iat", "nbf", "exp"):
        assert type(claims[name]) is int
    assert 0 < claims["exp"] - claims["iat"] <= CEILINGS["magic_link"]
    assert claims["iat"] <= claims["nbf"] <= NOW + LEEWAY and claims["exp"] > NOW - LEEWAY
    assert result.claims.as_dict() == claims
    return True


# -- 2. any change to a minted token is refused ------------------------------------

TOKEN_CHARS = B64_ALPHABET + ".=+/ %\x00é"


@st.composite
def mutation(draw: st.DrawFn, token: str) -> str:
    kind = draw(
        st.sampled_from(
            ["replace", "insert", "delete", "truncate", "extend", "swap", "resegment", "case"]
        )
    )
    i = draw(st.integers(0, len(token) - 1))
    if kind == "replace":
        return token[:i] + draw(st.sampled_from(TOKEN_CHARS)) + token[i + 1 :]
    if kind == "insert":
        return token[:i] + draw(st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=4)) + token[i:]
    if kind == "delete":
        j = draw(st.integers(i + 1, min(len(token), i + 8)))
        return token[:i] + token[j:]
    if kind == "truncate":
        return token[:i]
    if kind == "extend":
        return token + draw(st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=8))
    if kind == "swap":
        parts = token.split(".")
        a, b = draw(st.permutations(range(3)))[:2]
        parts[a], parts[b] = parts[b], parts[a]
        return ".".join(parts)
    if kind == "case":
        return token[:i] + token[i].swapcase() + token[i + 1 :]
    # re-encode one segment: padding, standard alphabet, or leftover bits
    parts = token.split(".")
    n = draw(st.integers(0, 2))
    raw = base64.urlsafe_b64decode(parts[n] + "=" * (-len(parts[n]) % 4))
    parts[n] = draw(
        st.sampled_from(
            [
                base64.urlsafe_b64encode(raw).decode(),  # with padding
                base64.b64encode(raw).decode().rstrip("="),  # + and / alphabet
                parts[n] + "=",
            ]
        )
    )
    return ".".join(parts)


@SETTINGS
@given(data=st.data(), alg=st.sampled_from(ALGS))
def test_any_change_to_a_minted_token_is_refused(data, alg):
    token, claims = MINTED[alg]
    changed = data.draw(mutation(token))
    if changed == token:
        assert verify(changed).claims == claims  # identity is the one change that is accepted
        return
    refused(changed)


MINTED = {alg: mint(alg) for alg in ALGS}


@SETTINGS
@given(data=st.data())
def test_every_single_character_change_is_refused(data):
    token, _ = MINTED[data.draw(st.sampled_from(ALGS))]
    i = data.draw(st.integers(0, len(token) - 1))
    ch = data.draw(st.sampled_from(B64_ALPHABET))
    assume(ch != token[i])
    refused(token[:i] + ch + token[i + 1 :])


def test_ecdsa_high_s_twin_is_refused():
    """The same ECDSA signature as (r, n - s) is mathematically valid; only low s is accepted."""
    token, claims = MINTED["ES256"]
    head, body, sig = token.split(".")
    raw = base64.urlsafe_b64decode(sig + "==")
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    twin = forge.b64(r.to_bytes(32, "big") + (tokens._P256_N - s).to_bytes(32, "big"))
    # the twin really is a valid signature to a lax verifier
    from jwt.algorithms import ECAlgorithm

    assert ECAlgorithm(ECAlgorithm.SHA256).verify(
        f"{head}.{body}".encode(),
        KEYS.by_kid["es256-k"].public_key,
        base64.urlsafe_b64decode(twin + "=" * (-len(twin) % 4)),
    )
    assert isinstance(refused(f"{head}.{body}.{twin}"), errors.BadSignature)
    assert verify(token).claims == claims


@pytest.mark.parametrize("alg", ALGS)
def test_signature_of_one_token_never_verifies_another(alg):
    (a, _), (b, _) = mint(alg), mint(alg)
    spliced = ".".join(a.split(".")[:2] + b.split(".")[2:])
    assert isinstance(refused(spliced), errors.BadSignature)


def test_claims_reserialised_but_unsigned_are_refused():
    token, claims = MINTED["ES256"]
    head, _, sig = token.split(".")
    for body in (
        json.dumps(claims.as_dict()),
        json.dumps(claims.as_dict(), sort_keys=True),
        json.dumps(claims.as_dict(), separators=(",", ":"))[:-1] + " }",
    ):
        encoded = forge.b64(body.encode())
        if encoded != token.split(".")[1]:
            assert isinstance(refused(f"{head}.{encoded}.{sig}"), errors.BadSignature)
