"""``LinkVerifier``: offline verification with the published keys, held to the server.

Every hostile token of ``tests/support/hostile.py`` is refused with the reason the server gives
(the keys fetched from the real app's JWKS); the ECDSA twin and non-canonical spellings
are refused. Against a live linksvc: the JWKS cache across key rotations (a published next
key verifies with no fetch; a key the cache lacks is fetched at most once per 30 s) and
across a JWKS outage (the last good key set keeps verifying; no key set at all is 503).
The verifier's monotonic clock is a parameter: nothing sleeps.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

import linksvc_client as lc
from linksvc_client import LinkClient, LinkVerifier
from tests.support import jwt_attacks
from tests.support.hostile import CASES
from tests.support.live import Live, live_linksvc
from tests.support.proxy import Proxy

LEDGER_ONLY = {"unknown_link"}  # genuine signatures: only the ledger can refuse these


def _kid(token: str) -> str:
    return jwt_attacks.parts(token)[0]["kid"]


# -- the strict profile, case by case, with the real app's keys ----------------------------


@pytest.fixture
def verifier(app, api) -> LinkVerifier:
    # The real app in process, at its own base URL (a Host it trusts).
    base = app.config["LINKSVC"].base_url
    http = httpx.Client(transport=httpx.WSGITransport(app=app), base_url=base)
    return LinkVerifier(
        app.config["LINKSVC"].issuer,
        base + "/.well-known/jwks.json",
        audience=api.client.id,
        http=http,
    )


def test_a_real_link_verifies_with_the_servers_claims(verifier, api):
    link = api.minted(data={"x": 1})
    claims = verifier.verify(link["token"], "magic_link")
    server = api.verify(link["token"]).get_json()["claims"]
    assert (claims.jti, claims.subject, claims.audience, claims.purpose) == (
        server["jti"],
        server["sub"],
        server["aud"],
        server["pur"],
    )
    assert int(claims.expires_at.timestamp()) == server["exp"]
    assert api.status(link["jti"]).get_json()["state"] == "issued"  # nothing consumed


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.reason not in LEDGER_ONLY], ids=lambda c: c.name
)
def test_hostile_tokens_get_the_servers_reason(verifier, app, api, case):
    token = case.build(app, api.minted()["token"])
    server = api.verify(token).get_json()["code"]
    with pytest.raises(lc.LinksvcError) as err:
        verifier.verify(token, "magic_link")
    assert err.value.code == case.reason == server
    assert isinstance(err.value, lc.LinkExpired if case.reason == "expired" else lc.InvalidToken)
    assert token not in str(err.value)


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.reason in LEDGER_ONLY], ids=lambda c: c.name
)
def test_ledger_only_cases_pass_offline(verifier, app, api, case):
    # Well signed by our key: genuine, so the offline check passes; the ledger refuses it.
    assert verifier.verify(case.build(app, api.minted()["token"]), "magic_link")


def test_signature_twins_and_spellings_are_refused(verifier, api):
    token = api.minted()["token"]
    with pytest.raises(lc.InvalidToken) as err:
        verifier.verify(jwt_attacks.high_s_twin(token), "magic_link")
    assert err.value.code == "bad_signature"
    with pytest.raises(lc.InvalidToken) as err:
        verifier.verify(jwt_attacks.der_signature(token), "magic_link")
    assert err.value.code == "bad_signature"
    for name, variant in jwt_attacks.noncanonical_variants(token).items():
        with pytest.raises(lc.InvalidToken) as err:
            verifier.verify(variant, "magic_link")
        assert err.value.code == "malformed", name


def test_purpose_audience_and_time(verifier, app, api, other_api):
    link = api.minted()
    with pytest.raises(lc.InvalidToken) as err:
        verifier.verify(link["token"], "download")
    assert err.value.code == "wrong_purpose"
    assert verifier.verify(link["token"], ["download", "magic_link"])
    theirs = other_api.minted()["token"]
    with pytest.raises(lc.InvalidToken) as err:
        verifier.verify(theirs, "magic_link")
    assert err.value.code == "wrong_audience"
    exp = json.loads(jwt_attacks.b64d(link["token"].split(".")[1]))["exp"]
    assert verifier.verify(link["token"], "magic_link", now=exp + verifier.leeway - 1)
    with pytest.raises(lc.LinkExpired):
        verifier.verify(link["token"], "magic_link", now=exp + verifier.leeway)


def test_settings_are_checked():
    for bad in (
        {"audience": ""},
        {"audience": "a", "leeway": 61},
        {"audience": "a", "max_lifetime": 901},
    ):
        with pytest.raises(ValueError):
            LinkVerifier("https://i", "https://i/jwks", **bad)  # type: ignore[arg-type]


# -- the JWKS cache against a live linksvc --------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[Live]:
    with live_linksvc(tmp_path_factory.mktemp("client_jwks")) as live:
        yield live


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _mint_signed_by_new_key(client: LinkClient, old_kid: str) -> str:
    """Mint until every worker has picked up the rotation (LINKSVC_KEY_REFRESH_SECONDS=1)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        tokens = [client.mint("magic_link", "u-jwks").token for _ in range(4)]
        if all(_kid(t) != old_kid for t in tokens):
            return tokens[-1]
        time.sleep(0.2)
    raise AssertionError("the workers did not sign with the new key")


@pytest.mark.slow
def test_jwks_cache_across_key_rotations(live):
    clock = Clock()
    with LinkClient(live.url, live.api_key) as client:
        t1 = client.mint("magic_link", "u-jwks").token
        issuer = client.verify(t1, "magic_link").claims.issuer
        v = LinkVerifier(
            issuer, live.url + "/.well-known/jwks.json", audience=live.client_id, monotonic=clock
        )
        assert v.verify(t1, "magic_link").jti and v.keys.fetches == 1
        # Rotation: the published next key starts signing. The cache already has it.
        live.cli("keys", "rotate", "--force")
        t2 = _mint_signed_by_new_key(client, _kid(t1))
        clock.t += 5
        assert v.verify(t2, "magic_link") and v.keys.fetches == 1
        # A second rotation: the new active key was published after our fetch.
        live.cli("keys", "rotate", "--force")
        t3 = _mint_signed_by_new_key(client, _kid(t2))
        clock.t += 5  # 10 s after the last fetch: an unknown kid may not refetch yet
        with pytest.raises(lc.InvalidToken) as err:
            v.verify(t3, "magic_link")
        assert err.value.code == "unknown_key" and v.keys.fetches == 1
        for _ in range(20):  # a stream of unknown kids costs no fetch
            with pytest.raises(lc.InvalidToken):
                v.verify(t3, "magic_link")
        assert v.keys.fetches == 1
        clock.t += 21  # 31 s: one refetch
        assert v.verify(t3, "magic_link") and v.keys.fetches == 2
        # The retired keys stay published while their tokens live.
        assert v.verify(t1, "magic_link") and v.verify(t2, "magic_link")
        assert v.keys.fetches == 2


@pytest.mark.slow
def test_jwks_outage_keeps_the_last_good_key_set(live):
    clock = Clock()
    proxy = Proxy("127.0.0.1", int(urlsplit(live.url).port or 80))
    try:
        with LinkClient(live.url, live.api_key) as client:
            token = client.mint("magic_link", "u-outage").token
            issuer = client.verify(token, "magic_link").claims.issuer
            v = LinkVerifier(
                issuer,
                proxy.url + "/.well-known/jwks.json",
                audience=live.client_id,
                monotonic=clock,
                timeout=2,
            )
            assert v.verify(token, "magic_link") and v.keys.fetches == 1
            proxy.refuse()
            clock.t += v.keys.max_age + 1  # the set is stale: a refresh is due, and fails
            assert v.verify(token, "magic_link") and v.keys.fetches == 2
            for _ in range(10):  # the failed refresh is not retried on every call
                assert v.verify(token, "magic_link")
            assert v.keys.fetches == 2
            clock.t += 31
            assert v.verify(token, "magic_link") and v.keys.fetches == 3
            # A verifier that never saw the keys cannot vouch for anything.
            fresh = LinkVerifier(
                issuer, proxy.url + "/.well-known/jwks.json", audience=live.client_id, timeout=2
            )
            with pytest.raises(lc.ServiceUnavailable) as err:
                fresh.verify(token, "magic_link")
            assert err.value.code == "jwks_unavailable"
            # Malformed tokens are refused before any key is needed, outage or not.
            with pytest.raises(lc.InvalidToken):
                fresh.verify("x.y", "magic_link")
            proxy.resume()
            clock.t += 31
            assert v.verify(token, "magic_link") and v.keys.fetches == 4
    finally:
        proxy.close()
