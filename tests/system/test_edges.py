"""Edges found in review: each test tries the attack or the failure, and fails without its fix."""

from __future__ import annotations

import sqlalchemy as sa

from linksvc.links import ledger
from linksvc.services import services


def _at(app, t):
    services(app).links.clock = lambda: t


def test_revoke_and_supersede_reach_links_inside_the_leeway_after_exp(app, api):
    """A token verifies up to the leeway past exp: revocation must reach it there too."""
    svc = services(app).links
    t0 = svc.now()
    _at(app, t0)
    one = api.minted("magic_link", ttl=60)
    old_reset = api.minted("password_reset", subject="user-7", ttl=60)
    by_subject = api.minted("magic_link", subject="user-8", ttl=60)
    _at(app, t0 + 62)  # 2 s past exp, inside the default 5 s leeway
    assert (
        api.http.delete(f"/api/v1/links/{one['jti']}", headers=api.headers).get_json()["revoked"]
        == 1
    )
    assert api.redeem(one["token"]).get_json()["code"] == "revoked"
    assert api.minted("password_reset", subject="user-7")["superseded"] == 1
    assert api.redeem(old_reset["token"], "password_reset").get_json()["code"] == "superseded"
    resp = api.http.post("/api/v1/subjects/user-8/revoke", headers=api.headers)
    assert resp.get_json()["revoked"] == 1
    assert api.redeem(by_subject["token"]).get_json()["code"] == "revoked"


def test_deeply_nested_data_is_refused_at_mint(api):
    deep = "[" * 2000 + "]" * 2000
    body = '{"purpose":"magic_link","subject":"u","data":' + deep + "}"
    resp = api.http.post(
        "/api/v1/links", data=body, headers={**api.headers, "Content-Type": "application/json"}
    )
    assert resp.status_code in (400, 422) and resp.get_json()["code"] in (
        "data_too_deep",
        "invalid_json",
    )
    nested = []
    for _ in range(40):
        nested = [nested]
    resp = api.mint(data=nested)
    assert resp.status_code == 422 and resp.get_json()["code"] == "data_too_deep"
    ok = {"a": [{"b": [1, 2, {"c": None}]}]}
    link = api.minted(data=ok)
    assert api.redeem(link["token"]).get_json()["data"] == ok


def test_replays_of_one_link_do_not_grow_its_history_without_bound(app, api):
    link = api.minted()
    assert api.redeem(link["token"]).status_code == 200
    for _ in range(ledger.MAX_REJECTION_EVENTS + 15):
        assert api.redeem(link["token"]).status_code == 409
    engine = services(app).links.engine
    with engine.connect() as conn:
        n = conn.execute(
            sa.text("SELECT count(*) FROM link_events WHERE jti = :j AND event = 'rejected'"),
            {"j": link["jti"]},
        ).scalar()
    assert n == ledger.MAX_REJECTION_EVENTS


def test_data_that_is_not_strict_json_is_refused_at_mint(api):
    """Issue 17 item 4: 1e400 parses as infinity and came back as Infinity after the link was
    spent; a lone surrogate came back as a string strict parsers refuse."""
    import json

    for raw in ('{"x": 1e400}', "[-1e400]", "1e999", '{"\\ud800": 1}', '["\\udfff"]'):
        body = '{"purpose":"magic_link","subject":"u","data":' + raw + "}"
        resp = api.http.post(
            "/api/v1/links", data=body, headers={**api.headers, "Content-Type": "application/json"}
        )
        assert resp.status_code == 422, (raw, resp.get_json())
        assert resp.get_json()["code"] == "invalid_field" and resp.get_json()["field"] == "data"
    ok = {"x": 1e300, "s": "\u00e9\U0001f600", "n": -0.5}
    link = api.minted(data=ok)
    out = api.redeem(link["token"])
    assert out.get_json()["data"] == ok
    json.loads(out.get_data(as_text=True), parse_constant=lambda c: 1 / 0)  # strict: no Infinity
