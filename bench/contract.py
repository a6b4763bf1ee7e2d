"""CPU per call of the API's hot bodies: today's hand-written checks, msgspec, pydantic.

In-process, no Flask: decoding and validating the mint request body and the redeem/verify
body, and encoding the mint answer, ``time.process_time`` over many iterations, the median
of rounds (µs per call). The "hand-written" column is the code ``linksvc/web/api.py`` ran before
``linksvc/web/contract.py`` (kept here, frozen, as the reference); "msgspec" is
``linksvc/web/contract.py`` as the API runs it, "pydantic" typed models of the same bodies with
the same guard for what the library does not judge (duplicate members, the purpose list).

    .venv/bin/python -m bench.contract [--n 20000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from collections.abc import Callable
from typing import Any

import pydantic

from linksvc.web import contract

PURPOSES = ("magic_link", "password_reset", "download")
TOKEN = (
    "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIiwidHlwIjoiSldUIn0.eyJpc3MiOiJodHRwOi8vbG9jYWxob3N0Ii"
    "wiYXVkIjoiY2xpZW50LTEiLCJzdWIiOiJ1c2VyLTQyIiwicHVyIjoibWFnaWNfbGluayIsImp0aSI6IkFBQUFB"
    "QUFBQUFBQUFBQUFBQUFBQUEiLCJpYXQiOjE3MDAwMDAwMDAsIm5iZiI6MTcwMDAwMDAwMCwiZXhwIjoxNzAwMDA"
    "wMzAwfQ.MEUCIQDtest-signature-bytes-of-the-usual-length-for-es256-in-jose-form-xxxxxxxxx"
)
MINT_BODY = json.dumps({"purpose": "magic_link", "subject": "user-12345"}).encode()
TOKEN_BODY = json.dumps({"token": TOKEN, "purpose": "magic_link"}).encode()
MINT_ANSWER: dict[str, Any] = {
    "url": "http://127.0.0.1:5000/l/" + TOKEN,
    "token": TOKEN,
    "jti": "AAAAAAAAAAAAAAAAAAAAAA",
    "purpose": "magic_link",
    "subject": "user-12345",
    "issued_at": "2026-12-06T03:00:00Z",
    "expires_at": "2026-12-06T03:05:00Z",
    "superseded": 0,
}

# -- today's hand-written code (linksvc/web/api.py before linksvc/web/contract.py) ----------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for k, v in pairs:
        if k in obj:
            raise ValueError(f"duplicate member {k!r}")
        obj[k] = v
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def _type_ok(value: Any, kind: Any) -> bool:
    if (
        isinstance(value, bool)
        and kind is not bool
        and (kind is int or (isinstance(kind, tuple) and bool not in kind))
    ):
        return False
    return isinstance(value, kind)


def _fields(body: dict[str, Any], spec: dict[str, tuple[Any, bool]]) -> dict[str, Any]:
    for name in body:
        if name not in spec:
            raise ValueError(name)
    out: dict[str, Any] = {}
    for name, (kind, required) in spec.items():
        if name not in body or body[name] is None:
            if required:
                raise ValueError(name)
            out[name] = None
            continue
        if kind is Any:
            out[name] = body[name]
            continue
        if kind is int and isinstance(body[name], float) and body[name].is_integer():
            out[name] = int(body[name])
            continue
        if not _type_ok(body[name], kind):
            raise ValueError(name)
        out[name] = body[name]
    return out


MINT_SPEC: dict[str, tuple[Any, bool]] = {
    "purpose": (str, True),
    "subject": (str, True),
    "ttl": (int, False),
    "redirect_uri": (str, False),
    "download": (dict, False),
    "data": (Any, False),
    "email": (str, False),
    "confirm": (bool, False),
    "code_challenge": (str, False),
    "locale": (str, False),
    "timezone": (str, False),
}
TOKEN_SPEC: dict[str, tuple[Any, bool]] = {"token": (str, True), "purpose": (str, True)}


def hand(raw: bytes, spec: dict[str, tuple[Any, bool]]) -> dict[str, Any]:
    body = _DECODER.decode(raw.decode("utf-8"))
    if not isinstance(body, dict):
        raise ValueError("not an object")
    f = _fields(body, spec)
    if f["purpose"] not in PURPOSES:
        raise ValueError("purpose")
    return f


# -- msgspec: linksvc/web/contract.py as the API runs it -------------------------------------


def ms_decoder(model: type[contract.Body]) -> Callable[[bytes], Any]:
    decoder = contract.Decoder(model)

    def decode(raw: bytes) -> Any:
        value = decoder.decode(raw)
        if value.purpose not in PURPOSES:  # type: ignore[attr-defined]
            raise ValueError("purpose")
        return value

    return decode


def ms_encode(body: dict[str, Any]) -> bytes:
    return contract.encode(contract.MintedLink(**body))


def _duplicate_guard(names: list[str]) -> re.Pattern[bytes]:
    return re.compile(b'"(?:' + b"|".join(re.escape(n.encode()) for n in names) + b')"')


# -- pydantic ---------------------------------------------------------------------------


class PdMint(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)
    purpose: str
    subject: str
    ttl: int | None = None
    redirect_uri: str | None = None
    download: dict[str, Any] | None = None
    data: Any = None
    email: str | None = None
    confirm: bool | None = None
    code_challenge: str | None = None
    locale: str | None = None
    timezone: str | None = None


class PdToken(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)
    token: str
    purpose: str


class PdMinted(pydantic.BaseModel):
    url: str
    token: str
    jti: str
    purpose: str
    subject: str
    issued_at: str | None
    expires_at: str | None
    superseded: int
    emailed: bool | None = None


def pd_decoder(kind: type[pydantic.BaseModel]) -> Callable[[bytes], Any]:
    guard = _duplicate_guard(list(kind.model_fields))
    validate = kind.model_validate_json

    def decode(raw: bytes) -> Any:
        found = guard.findall(raw)
        if len(set(found)) != len(found) or b"\\" in raw:
            raise ValueError("duplicate or escape: the reference path decides")
        value = validate(raw)
        if value.purpose not in PURPOSES:  # type: ignore[attr-defined]
            raise ValueError("purpose")
        return value

    return decode


def pd_encode(body: dict[str, Any]) -> bytes:
    return PdMinted(**body).model_dump_json(exclude_none=True).encode()


# -- measuring --------------------------------------------------------------------------


def per_call(fn: Callable[[], Any], n: int, rounds: int) -> float:
    """Median over ``rounds`` of the CPU µs per call, ``n`` calls a round."""
    for _ in range(n // 10):
        fn()
    results = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(n):
            fn()
        results.append((time.process_time() - start) / n * 1e6)
    return statistics.median(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    ms_mint, ms_token = ms_decoder(contract.MintRequest), ms_decoder(contract.TokenRequest)
    pd_mint, pd_token = pd_decoder(PdMint), pd_decoder(PdToken)
    # The three agree on what they accept.
    assert hand(MINT_BODY, MINT_SPEC)["subject"] == ms_mint(MINT_BODY).subject
    assert pd_mint(MINT_BODY).subject == "user-12345"
    assert ms_encode(MINT_ANSWER) == _ENCODER.encode(MINT_ANSWER).encode() == pd_encode(MINT_ANSWER)
    cells: dict[str, dict[str, Callable[[], Any]]] = {
        "decode + validate mint body": {
            "hand-written": lambda: hand(MINT_BODY, MINT_SPEC),
            "msgspec": lambda: ms_mint(MINT_BODY),
            "pydantic": lambda: pd_mint(MINT_BODY),
        },
        "decode + validate verify/redeem body": {
            "hand-written": lambda: hand(TOKEN_BODY, TOKEN_SPEC),
            "msgspec": lambda: ms_token(TOKEN_BODY),
            "pydantic": lambda: pd_token(TOKEN_BODY),
        },
        "encode mint answer": {
            "hand-written": lambda: _ENCODER.encode(MINT_ANSWER).encode(),
            "msgspec": lambda: ms_encode(MINT_ANSWER),
            "pydantic": lambda: pd_encode(MINT_ANSWER),
        },
    }
    print(f"CPU µs per call (median of {args.rounds} rounds × {args.n})")
    print(f"| {'cell':<38} | hand-written | msgspec | pydantic |")
    print(f"|{'-' * 40}|-------------:|--------:|---------:|")
    for cell, variants in cells.items():
        us = {name: per_call(fn, args.n, args.rounds) for name, fn in variants.items()}
        print(
            f"| {cell:<38} | {us['hand-written']:12.2f} | {us['msgspec']:7.2f} "
            f"| {us['pydantic']:8.2f} |"
        )


if __name__ == "__main__":
    main()
