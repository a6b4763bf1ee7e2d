"""The inventory, ``GET /api/v1/subjects/<subject>/links``: a subject's links, newest
first, filtered by state and purpose, a page at a time; another client's links never show."""

from __future__ import annotations

import base64
from urllib.parse import quote

import pytest

from linksvc.services import services
from tests.support.apps import ApiUser


def _list(api: ApiUser, subject: str, query: str = ""):
    return api.http.get(
        f"/api/v1/subjects/{quote(subject, safe='')}/links{query}", headers=api.headers
    )


def _mint_at(app, api: ApiUser, at: int, **body):
    svc = services(app).links
    real = svc.clock
    svc.clock = lambda: at
    try:
        return api.minted(**body)
    finally:
        svc.clock = real


def test_newest_first_with_states(app, api):
    svc = services(app).links
    t = svc.now()
    a = _mint_at(app, api, t - 30, subject="user-1")
    b = _mint_at(app, api, t - 20, purpose="password_reset", subject="user-1")
    c = _mint_at(app, api, t - 10, subject="user-1")
    api.minted(subject="user-2")  # someone else's
    assert api.redeem(a["token"]).status_code == 200
    api.http.delete(f"/api/v1/links/{c['jti']}", headers=api.headers)
    resp = _list(api, "user-1")
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["subject"] == "user-1" and body["next_cursor"] is None
    assert [(x["jti"], x["state"]) for x in body["links"]] == [
        (c["jti"], "revoked"),
        (b["jti"], "issued"),
        (a["jti"], "consumed"),
    ]
    assert body["links"][0]["state_via"] == "api" and body["links"][0]["state_changed_at"]
    assert body["links"][1]["state_changed_at"] is None
    assert body["links"][1]["expires_at"] == b["expires_at"]
    # No token and no server-side data in a listing.
    assert all(
        set(x)
        == {"jti", "purpose", "state", "issued_at", "expires_at", "state_changed_at", "state_via"}
        for x in body["links"]
    )


def test_filters(app, api):
    t = services(app).links.now()
    m1 = _mint_at(app, api, t - 3, subject="u")
    r1 = _mint_at(app, api, t - 2, purpose="password_reset", subject="u")
    m2 = _mint_at(app, api, t - 1, subject="u")
    api.redeem(m1["token"])

    def jtis(query):
        resp = _list(api, "u", query)
        assert resp.status_code == 200, resp.get_json()
        return [x["jti"] for x in resp.get_json()["links"]]

    assert jtis("?state=issued") == [m2["jti"], r1["jti"]]
    assert jtis("?state=consumed") == [m1["jti"]]
    assert jtis("?purpose=magic_link") == [m2["jti"], m1["jti"]]
    assert jtis("?purpose=password_reset&state=issued") == [r1["jti"]]
    assert jtis("?state=issued,consumed&purpose=magic_link") == [m2["jti"], m1["jti"]]
    assert jtis("?state=issued&state=consumed") == [m2["jti"], r1["jti"], m1["jti"]]
    assert jtis("?state=revoked") == []


def test_pagination_walks_every_link_once_even_with_equal_times(app, api):
    t = services(app).links.now()
    minted = [_mint_at(app, api, t - (i // 3), subject="pager")["jti"] for i in range(10)]
    seen, cursor, pages = [], None, 0
    while True:
        query = "?limit=3" + (f"&cursor={cursor}" if cursor else "")
        body = _list(api, "pager", query).get_json()
        pages += 1
        seen += [x["jti"] for x in body["links"]]
        assert len(body["links"]) <= 3
        # a link minted meanwhile does not disturb the walk (it is newer than the cursor)
        if pages == 2:
            api.minted(subject="pager")
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(minted) and len(seen) == len(set(seen)) == 10
    assert pages == 4
    times = [x["issued_at"] for x in _list(api, "pager", "?limit=200").get_json()["links"]]
    assert times == sorted(times, reverse=True)


def test_another_clients_links_never_show(api, other_api):
    api.minted(subject="shared")
    assert _list(other_api, "shared").get_json()["links"] == []


def test_subjects_with_slashes_and_reserved_characters(api):
    for subject in ("tenant/42", "a%2Fb", "x?y#z", "links", "a/links"):
        link = api.minted(subject=subject)
        body = _list(api, subject).get_json()
        assert body["subject"] == subject, subject
        assert [x["jti"] for x in body["links"]] == [link["jti"]], subject


@pytest.mark.parametrize(
    "query, field, code",
    [
        ("?state=gone", "state", "invalid_field"),
        ("?purpose=login", "purpose", "invalid_field"),
        ("?limit=0", "limit", "invalid_field"),
        ("?limit=201", "limit", "invalid_field"),
        ("?limit=-1", "limit", "invalid_field"),
        ("?limit=ten", "limit", "invalid_field"),
        ("?cursor=zz", "cursor", "invalid_cursor"),
        (
            "?cursor=" + base64.urlsafe_b64encode(b"12.short").decode().rstrip("="),
            "cursor",
            "invalid_cursor",
        ),
        ("?cursor=" + "A" * 500, "cursor", "invalid_cursor"),
        ("?sort=asc", "sort", "unknown_field"),
    ],
)
def test_bad_parameters(api, query, field, code):
    resp = _list(api, "user-1", query)
    assert resp.status_code == 422
    assert resp.mimetype == "application/problem+json"
    assert (resp.get_json()["code"], resp.get_json()["field"]) == (code, field)


def test_bad_subjects(api):
    for subject in ("a b", "\x00", "é", "x" * 256):
        resp = _list(api, subject)
        assert resp.status_code == 422, subject
        assert resp.get_json()["field"] == "subject"


def test_needs_a_key(api):
    resp = api.http.get("/api/v1/subjects/user-1/links")
    assert resp.status_code == 401 and resp.get_json()["code"] == "unauthorized"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _cursor_attacks(app, api: ApiUser) -> None:
    """Cursors a client did not get from the API: each is 422 invalid_cursor, never a 500."""
    from linksvc.web import api as api_mod

    for _ in range(3):
        api.minted(subject="pager")
    real = _list(api, "pager", "?limit=1").get_json()["next_cursor"]
    assert real and _list(api, "pager", f"?limit=1&cursor={real}").status_code == 200
    jti = api.minted(subject="pager")["jti"]
    huge = f"{2**63}.{jti}".encode()
    # The reported 500: an iat past any database integer, in the old unsigned form.
    resp = _list(api, "pager", f"?limit=1&cursor={_b64(huge)}")
    assert resp.status_code == 422, resp.get_data(as_text=True)
    payload, tag = real.split(".")
    with app.test_request_context():
        # A cursor the server itself would sign, with an iat past any database integer:
        # refused by rule even with a good MAC (this was an OverflowError, a 500).
        signed_huge = api_mod._cursor(api.client.id, "pager", 2**63, jti)
        signed_far = api_mod._cursor(api.client.id, "pager", 10**40, jti)
    forged = [
        _b64(huge),  # the old, unsigned form
        _b64(huge) + "." + tag,  # another payload under a real tag
        _b64(f"{2**31}.{jti}".encode()) + "." + tag,  # a small forged iat
        payload + "." + _b64(b"\0" * 16),  # a real payload under a made-up tag
        payload,  # no tag at all
        signed_huge,
        signed_far,
    ]
    for cursor in forged:
        resp = _list(api, "pager", f"?limit=1&cursor={cursor}")
        assert resp.status_code == 422, (cursor, resp.get_data(as_text=True))
        assert (resp.get_json()["code"], resp.get_json()["field"]) == ("invalid_cursor", "cursor")
    # A real cursor is good only for the listing it came from.
    api.minted(subject="other")
    resp = _list(api, "other", f"?limit=1&cursor={real}")
    assert resp.get_json()["code"] == "invalid_cursor"


def test_forged_and_huge_cursors_are_refused_sqlite(app, api):
    _cursor_attacks(app, api)


def test_forged_and_huge_cursors_are_refused_postgresql(pg_url, tmp_path):
    from linksvc import create_app
    from linksvc.links import keys
    from linksvc.store import db, migrate
    from tests.support.apps import make_api_user
    from tests.support.env import base_env

    app = create_app(base_env(tmp_path, pg_url))
    svc = services(app).links
    migrate.upgrade(svc.engine)
    with db.write(svc.engine) as conn:
        keys.ensure_keys(conn, app.config["LINKSVC"].key_encryption_key, svc.now())
    try:
        _cursor_attacks(app, make_api_user(app))
    finally:
        svc.engine.dispose()
