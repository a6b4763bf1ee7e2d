#!/usr/bin/env python3
"""Verify a linksvc link token the way another service would: with the public JWKS alone.

    verify_with_jwks.py JWKS_URL --issuer URL --audience CLIENT_ID [--purpose P] < token

It knows nothing of linksvc but the JWKS URL, the issuer and the audience. The token is
read from standard input (a link URL or the bare token), never from the command line,
where other users of the machine could read it. Prints the claims as JSON and exits 0 if
the token is good; prints the reason to standard error and exits 1 if not.

Only the signature and the claims are checked here; whether the link is still unused is
known to linksvc's ledger alone (POST /api/v1/links/verify).
"""

from __future__ import annotations

import argparse
import json
import sys

import jwt
from jwt import PyJWKClient

TYP = "link+jwt"
ALGORITHMS = ("ES256", "EdDSA", "RS256")


def verify(
    token: str,
    jwks_url: str,
    *,
    issuer: str,
    audience: str,
    purpose: str | None = None,
    leeway: int = 5,
    client: PyJWKClient | None = None,
) -> dict:
    """The token's claims; raises :class:`jwt.PyJWTError` (or ``ValueError``) if it is not good."""
    header = jwt.get_unverified_header(token)
    if set(header) != {"alg", "kid", "typ"} or header["typ"] != TYP:
        raise ValueError("header must be exactly alg, kid and typ: link+jwt")
    client = client or PyJWKClient(jwks_url, cache_keys=False, timeout=10)
    jwk = client.get_signing_key_from_jwt(token)  # by kid; an unknown kid is an error
    # The algorithm is the published key's own, never the one the token asks for.
    if jwk.algorithm_name not in ALGORITHMS or header["alg"] != jwk.algorithm_name:
        raise ValueError(f"token alg {header['alg']!r} is not its key's {jwk.algorithm_name!r}")
    claims = jwt.decode(
        token,
        jwk.key,
        algorithms=[jwk.algorithm_name],
        issuer=issuer,
        audience=audience,
        leeway=leeway,
        options={
            "require": ["iss", "aud", "sub", "pur", "jti", "iat", "nbf", "exp"],
            "strict_aud": True,
        },
    )
    if purpose is not None and claims.get("pur") != purpose:
        raise ValueError(f"token is for {claims.get('pur')!r}, not {purpose!r}")
    return claims


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("jwks_url")
    parser.add_argument("--issuer", required=True, help="linksvc's base URL (the iss claim)")
    parser.add_argument("--audience", required=True, help="your client id (the aud claim)")
    parser.add_argument("--purpose", choices=("magic_link", "password_reset", "download"))
    args = parser.parse_args(argv)
    token = sys.stdin.read().strip().rsplit("/", 1)[-1]
    try:
        claims = verify(
            token, args.jwks_url, issuer=args.issuer, audience=args.audience, purpose=args.purpose
        )
    except (jwt.PyJWTError, ValueError) as exc:
        print(f"rejected: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(claims, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
