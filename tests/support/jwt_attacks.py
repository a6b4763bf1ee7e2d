"""Token builders for the attack suite: what the public JWT attack tools (jwt_tool, the
RFC 8725 catalogue) do to a link, written out so a test can name each case.

Everything here works from what an attacker holds — a legitimately minted token and the
published JWKS — plus keys the attacker makes up. The builders never need our private
key; tests that want a well-signed hostile token (to show a check does not rely on the
signature) use ``tests.support.forge.resign`` with the server's key.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, utils
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from . import forge

P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
HMAC_HASHES = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def b64d(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    return forge.split(token)


def raw(header: Any, claims: Any, sig: str) -> str:
    """Assemble a token from JSON objects (or raw bytes) and a signature segment."""
    return f"{forge.seg(header)}.{forge.seg(claims)}.{sig}"


def hmac_sign(
    header: dict[str, Any], claims: dict[str, Any], secret: bytes, alg: str = "HS256"
) -> str:
    signing_input = f"{forge.seg(header)}.{forge.seg(claims)}"
    mac = hmac.new(secret, signing_input.encode(), HMAC_HASHES[alg]).digest()
    return f"{signing_input}.{forge.b64(mac)}"


# -- algorithm "none" --------------------------------------------------------------

NONE_SPELLINGS = ("none", "None", "NONE", "nOnE")


def alg_none(token: str, spelling: str, signature: str) -> str:
    header, claims, sig = parts(token)
    return raw({**header, "alg": spelling}, claims, sig if signature == "original" else signature)


# -- key confusion: public keys as HMAC secrets --------------------------------------


def public_key_of(jwk: dict[str, Any]) -> Any:
    cls = {"EC": ECAlgorithm, "OKP": OKPAlgorithm, "RSA": RSAAlgorithm}[jwk["kty"]]
    return cls.from_jwk(json.dumps(jwk))


def key_secrets(jwk: dict[str, Any]) -> dict[str, bytes]:
    """Every encoding of a published public key that a confused verifier might use as an
    HMAC secret: PEM (with and without the final newline), DER, OpenSSH, PKCS#1 for RSA,
    the raw key bytes, and the JWK itself as JSON in the forms libraries produce."""
    key = public_key_of(jwk)
    spki_pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    out = {
        "pem": spki_pem,
        "pem_no_newline": spki_pem.rstrip(b"\n"),
        "der": key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "openssh": key.public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        ),
        "jwk_json_as_published": json.dumps(jwk).encode(),
        "jwk_json_compact_sorted": json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode(),
        "jwk_json_public_members": json.dumps(
            {k: v for k, v in jwk.items() if k in ("kty", "crv", "x", "y", "n", "e")},
            separators=(",", ":"),
        ).encode(),
    }
    if jwk["kty"] == "EC":
        out["raw_point"] = key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        out["raw_x"] = b64d(jwk["x"])
    elif jwk["kty"] == "OKP":
        out["raw"] = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        out["pkcs1_pem"] = key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
        )
        out["raw_n"] = b64d(jwk["n"])
    out["x_or_n_string"] = (jwk.get("x") or jwk.get("n")).encode()
    return out


# -- embedded and remote keys -----------------------------------------------------------


class AttackerKey:
    """A key pair the attacker controls, with its JWK and a self-signed certificate."""

    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.jwk = {
            k: v
            for k, v in ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True).items()
            if k in ("kty", "crv", "x", "y")
        }
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "links.example")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.private.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(self.private, hashes.SHA256())
        )

    @property
    def x5c(self) -> list[str]:
        return [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()]

    def sign(self, header: dict[str, Any], claims: dict[str, Any]) -> str:
        signing_input = f"{forge.seg(header)}.{forge.seg(claims)}"
        der = self.private.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = utils.decode_dss_signature(der)
        return f"{signing_input}.{forge.b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def ed25519_attacker_sign(header: dict[str, Any], claims: dict[str, Any]) -> str:
    key = ed25519.Ed25519PrivateKey.generate()
    signing_input = f"{forge.seg(header)}.{forge.seg(claims)}"
    return f"{signing_input}.{forge.b64(key.sign(signing_input.encode()))}"


def rsa_attacker_sign(header: dict[str, Any], claims: dict[str, Any]) -> str:
    from cryptography.hazmat.primitives.asymmetric import padding

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signing_input = f"{forge.seg(header)}.{forge.seg(claims)}"
    return f"{signing_input}.{forge.b64(key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256()))}"


# -- ECDSA signature games ---------------------------------------------------------------


def es256_signature(token: str) -> tuple[int, int]:
    sig = b64d(token.split(".")[2])
    return int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")


def with_es256_signature(token: str, r: int, s: int, width: int = 32) -> str:
    head, body, _ = token.split(".")
    return f"{head}.{body}.{forge.b64(r.to_bytes(width, 'big') + s.to_bytes(width, 'big'))}"


def high_s_twin(token: str) -> str:
    """The second valid encoding of an ECDSA signature: (r, n - s)."""
    r, s = es256_signature(token)
    return with_es256_signature(token, r, P256_N - s)


def der_signature(token: str) -> str:
    """The same signature DER-encoded, as some libraries accept it."""
    head, body, _ = token.split(".")
    r, s = es256_signature(token)
    return f"{head}.{body}.{forge.b64(utils.encode_dss_signature(r, s))}"


# -- non-canonical base64url -------------------------------------------------------------


def noncanonical_variants(token: str) -> dict[str, str]:
    """Spellings of the same bytes that a lax base64 decoder accepts."""
    head, body, sig = token.split(".")
    segs = {"header": head, "claims": body, "signature": sig}
    out: dict[str, str] = {}
    for name, seg in segs.items():
        data = b64d(seg)
        others = dict(segs.items())

        def put(label: str, new: str) -> None:
            if new != seg:
                out[f"{name}_{label}"] = ".".join({**others, name: new}.values())

        put("padded", base64.urlsafe_b64encode(data).decode())
        put("standard_alphabet", base64.b64encode(data).decode().rstrip("="))
        put("trailing_padding", seg + "=")
        put("whitespace", seg[:4] + " " + seg[4:])
        put("newline", seg[:4] + "\n" + seg[4:])
        put("percent_escape", seg[:2] + "%2D" + seg[2:])
        # Unused low bits of the last character: several characters decode to the same bytes.
        if len(seg) % 4 in (2, 3):
            # 2 chars carry 1 byte (4 spare bits), 3 chars carry 2 (2 spare): flip the lowest.
            alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
            put("trailing_bits", seg[:-1] + alphabet[alphabet.index(seg[-1]) ^ 1])
    return out
