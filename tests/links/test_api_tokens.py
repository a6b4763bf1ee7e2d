"""Every way a token can fail, on every API endpoint that accepts one (PRODUCT §1).

Each hostile token is built from a real link; the rejection must carry its reason code,
must not consume anything, and the real link must still redeem afterwards.
"""

import pytest

from linksvc.services import services
from tests.support import forge
from tests.support.hostile import CASES

ENDPOINTS = ["verify", "redeem"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_token_is_rejected_and_consumes_nothing(app, api, endpoint, case):
    link = api.minted("magic_link")
    bad = case.build(app, link["token"])
    resp = getattr(api, endpoint)(bad)
    body = resp.get_json()
    assert resp.mimetype == "application/problem+json"
    assert body["code"] == case.reason, body
    assert resp.status_code in (401, 404, 410)
    assert bad not in resp.get_data(as_text=True)  # never echo the token
    assert api.status(link["jti"]).get_json()["state"] == "issued"
    ok = api.redeem(link["token"])
    assert ok.status_code == 200 and ok.get_json()["subject"] == "user-42"


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_wrong_purpose(api, endpoint):
    link = api.minted("password_reset")
    resp = getattr(api, endpoint)(link["token"], purpose="magic_link")
    assert resp.status_code == 401 and resp.get_json()["code"] == "wrong_purpose"
    assert api.redeem(link["token"], purpose="password_reset").status_code == 200


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_wrong_audience(api, other_api, endpoint):
    link = other_api.minted("magic_link")
    resp = getattr(api, endpoint)(link["token"])
    assert resp.status_code == 401 and resp.get_json()["code"] == "wrong_audience"
    assert other_api.redeem(link["token"]).status_code == 200


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_expired_by_the_clock(app, api, endpoint):
    link = api.minted("magic_link", ttl=60)
    svc = services(app).links
    real = svc.clock
    svc.clock = lambda: real() + 60 + svc.settings.leeway + 1
    try:
        resp = getattr(api, endpoint)(link["token"])
    finally:
        svc.clock = real
    assert resp.status_code == 410 and resp.get_json()["code"] == "expired"
    assert api.redeem(link["token"]).status_code == 200


def test_leeway_accepts_small_skew(app, api):
    link = api.minted("magic_link", ttl=60)
    svc = services(app).links
    real = svc.clock
    svc.clock = lambda: real() + 60 + svc.settings.leeway - 2
    try:
        assert api.redeem(link["token"]).status_code == 200
    finally:
        svc.clock = real


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_used(api, endpoint):
    link = api.minted()
    assert api.redeem(link["token"]).status_code == 200
    resp = getattr(api, endpoint)(link["token"])
    assert resp.status_code == 409 and resp.get_json()["code"] == "used"


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_revoked(api, endpoint):
    link = api.minted()
    resp = api.http.delete(f"/api/v1/links/{link['jti']}", headers=api.headers)
    assert resp.status_code == 200 and resp.get_json()["revoked"] == 1
    resp = getattr(api, endpoint)(link["token"])
    assert resp.status_code == 410 and resp.get_json()["code"] == "revoked"


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_superseded(api, endpoint):
    old = api.minted("password_reset")
    new = api.minted("password_reset")
    assert new["superseded"] == 1
    resp = getattr(api, endpoint)(old["token"], purpose="password_reset")
    assert resp.status_code == 410 and resp.get_json()["code"] == "superseded"
    assert api.redeem(new["token"], purpose="password_reset").status_code == 200


def test_malleated_ecdsa_signature_is_refused(app, api):
    """(r, n - s) is the other valid ECDSA signature of the same message; only low-s passes."""
    from linksvc.links.tokens import _P256_N

    link = api.minted()
    head, body, sig = link["token"].split(".")
    raw = forge.base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    r, s = raw[:32], int.from_bytes(raw[32:], "big")
    twin = f"{head}.{body}.{forge.b64(r + (_P256_N - s).to_bytes(32, 'big'))}"
    resp = api.redeem(twin)
    assert resp.get_json()["code"] == "bad_signature"
    assert api.redeem(link["token"]).status_code == 200
    assert api.redeem(twin).get_json()["code"] == "bad_signature"


def test_r_s_zero_signature(app, api):
    link = api.minted()
    head, body, _ = link["token"].split(".")
    resp = api.redeem(f"{head}.{body}.{forge.b64(bytes(64))}")
    assert resp.get_json()["code"] == "bad_signature"
