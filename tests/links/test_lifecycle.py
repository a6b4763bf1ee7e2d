"""Lifecycle: supersede, revoke one, revoke by subject — each followed by the old link failing
with its reason on the API and on the end-user page — and the history of a link."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from linksvc.services import services
from tests.support.apps import make_api_user

PAGE_TEXT = {
    "superseded": "A newer link was sent",
    "revoked": "This link has been cancelled",
    "used": "This link has already been used",
}


def assert_api_refuses(api, token: str, purpose: str, reason: str, status: int = 410) -> None:
    for resp in (api.verify(token, purpose), api.redeem(token, purpose)):
        assert resp.status_code == status, resp.get_json()
        body = resp.get_json()
        assert resp.mimetype == "application/problem+json"
        assert body["code"] == reason
        assert token not in resp.get_data(as_text=True)


def assert_page_refuses(http, url: str, reason: str, status: int = 410) -> None:
    pytest.importorskip("linksvc.web.pages")
    path = url.split("127.0.0.1:8000", 1)[1]
    for method in (http.get, http.head):
        resp = method(path)
        assert resp.status_code == status
        assert resp.mimetype == "text/html"
    text = http.get(path).get_data(as_text=True)
    assert PAGE_TEXT[reason] in text
    assert path.split("/")[-1] not in text  # the token is never echoed


# -- supersede --------------------------------------------------------------------------


def test_new_reset_link_supersedes_the_old_one(api):
    old = api.minted("password_reset", "user-1")
    new = api.minted("password_reset", "user-1")
    assert new["superseded"] == 1
    assert_api_refuses(api, old["token"], "password_reset", "superseded")
    history = api.status(old["jti"]).get_json()
    assert history["state"] == "superseded"
    assert [e["event"] for e in history["events"]][:2] == ["minted", "superseded"]
    assert history["events"][-1] == {
        **history["events"][-1],
        "event": "rejected",
        "reason": "superseded",
    }
    # The newest one works.
    assert api.redeem(new["token"], "password_reset").status_code == 200


def test_superseded_link_fails_on_the_page(api):
    old = api.minted("password_reset", "user-1")
    api.minted("password_reset", "user-1")
    assert_page_refuses(api.http, old["url"], "superseded")


def test_supersede_is_per_purpose_subject_and_client(api, other_api):
    reset = api.minted("password_reset", "user-2")
    magic = api.minted("magic_link", "user-2")
    magic2 = api.minted("magic_link", "user-2")  # magic links do not supersede by default
    theirs = other_api.minted("password_reset", "user-2")  # another application's user-2
    other_subject = api.minted("password_reset", "user-3")
    assert (
        magic2["superseded"] == 0 and theirs["superseded"] == 0 and other_subject["superseded"] == 0
    )
    for a, link, purpose in (
        (api, reset, "password_reset"),
        (api, magic, "magic_link"),
        (api, magic2, "magic_link"),
        (other_api, theirs, "password_reset"),
        (api, other_subject, "password_reset"),
    ):
        assert a.verify(link["token"], purpose).get_json()["state"] == "issued"


def test_supersede_policy_is_configurable(env):
    from linksvc import create_app
    from tests.support.apps import _prepare

    app = create_app({**env, "LINKSVC_SUPERSEDE_PURPOSES": "magic_link"})
    _prepare(app)
    api = make_api_user(app)
    r1, r2 = api.minted("password_reset", "u"), api.minted("password_reset", "u")
    m1, m2 = api.minted("magic_link", "u"), api.minted("magic_link", "u")
    assert r2["superseded"] == 0 and m2["superseded"] == 1
    assert api.redeem(r1["token"], "password_reset").status_code == 200
    assert_api_refuses(api, m1["token"], "magic_link", "superseded")
    services(app).links.engine.dispose()


def test_consumed_link_is_not_superseded(api):
    used = api.minted("password_reset", "user-4")
    assert api.redeem(used["token"], "password_reset").status_code == 200
    assert api.minted("password_reset", "user-4")["superseded"] == 0
    assert api.status(used["jti"]).get_json()["state"] == "consumed"


# -- revoke one -------------------------------------------------------------------------


def test_revoked_link_fails_with_revoked(api):
    link = api.minted("magic_link", "user-5")
    resp = api.http.delete(f"/api/v1/links/{link['jti']}", headers=api.headers)
    assert resp.status_code == 200 and resp.get_json()["revoked"] == 1
    assert_api_refuses(api, link["token"], "magic_link", "revoked")
    assert [e["event"] for e in api.status(link["jti"]).get_json()["events"]] == [
        "minted",
        "revoked",
        "rejected",
    ]


def test_revoked_link_fails_on_the_page(api):
    link = api.minted("magic_link", "user-5")
    api.http.delete(f"/api/v1/links/{link['jti']}", headers=api.headers)
    assert_page_refuses(api.http, link["url"], "revoked")


def test_revoke_unknown_or_foreign_link(api, other_api):
    link = api.minted()
    for who, jti in ((api, "A" * 22), (other_api, link["jti"]), (api, "x" * 65)):
        resp = who.http.delete(f"/api/v1/links/{jti}", headers=who.headers)
        assert resp.status_code == 404 and resp.get_json()["code"] == "unknown_link"
    assert api.redeem(link["token"]).status_code == 200  # another client could not revoke it


# -- revoke by subject ------------------------------------------------------------------


def test_revoke_subject_everywhere(api, other_api):
    links = [api.minted(p, "user-6") for p in ("magic_link", "magic_link", "password_reset")]
    bystander = api.minted("magic_link", "user-7")
    theirs = other_api.minted("magic_link", "user-6")
    used = api.minted("magic_link", "user-6")
    api.redeem(used["token"])
    resp = api.http.post("/api/v1/subjects/user-6/revoke", headers=api.headers)
    assert resp.status_code == 200 and resp.get_json() == {"subject": "user-6", "revoked": 3}
    for link in links:
        assert_api_refuses(api, link["token"], link["purpose"], "revoked")
    # Only this client's links of this subject: the consumed one stays consumed.
    assert api.verify(bystander["token"]).status_code == 200
    assert other_api.verify(theirs["token"]).status_code == 200
    assert api.status(used["jti"]).get_json()["state"] == "consumed"
    # Again: nothing left to revoke.
    assert (
        api.http.post("/api/v1/subjects/user-6/revoke", headers=api.headers).get_json()["revoked"]
        == 0
    )


def test_revoke_subject_by_purpose_and_page(api):
    magic = api.minted("magic_link", "user-8")
    reset = api.minted("password_reset", "user-8")
    resp = api.http.post(
        "/api/v1/subjects/user-8/revoke", json={"purposes": ["password_reset"]}, headers=api.headers
    )
    assert resp.get_json()["revoked"] == 1
    assert_api_refuses(api, reset["token"], "password_reset", "revoked")
    assert api.verify(magic["token"]).status_code == 200
    assert_page_refuses(api.http, reset["url"], "revoked")


@pytest.mark.parametrize(
    "body",
    [
        {"purposes": []},
        {"purposes": ["nope"]},
        {"purposes": "magic_link"},
        {"purposes": [1]},
        {"other": 1},
    ],
)
def test_revoke_subject_bad_body(api, body):
    resp = api.http.post("/api/v1/subjects/user-8/revoke", json=body, headers=api.headers)
    assert resp.status_code == 422 and resp.mimetype == "application/problem+json"


# -- history --------------------------------------------------------------------------


def iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_history_mint_view_consume_replay(app, api):
    """Every step of mint → page view → consume → replay attempt, with its time and channel."""
    pytest.importorskip("linksvc.web.pages")
    svc = services(app).links
    t0 = int(time.time())
    now = {"t": t0}
    svc.clock = lambda: now["t"]

    link = api.minted("magic_link", "user-9")  # t0: minted
    now["t"] += 10
    page = api.http.get(
        link["url"].split("127.0.0.1:8000", 1)[1]
    )  # t0+10: viewed (consumes nothing)
    assert page.status_code == 200
    assert api.status(link["jti"]).get_json()["state"] == "issued"
    now["t"] += 10
    assert api.redeem(link["token"]).status_code == 200  # t0+20: consumed
    now["t"] += 10
    replay = api.redeem(link["token"])  # t0+30: replay refused
    assert replay.status_code == 409 and replay.get_json()["code"] == "used"

    history = api.status(link["jti"]).get_json()
    assert history["state"] == "consumed"
    assert history["state_changed_at"] == iso(t0 + 20)
    assert [(e["event"], e["reason"], e["via"], e["at"]) for e in history["events"]] == [
        ("minted", None, "api", iso(t0)),
        ("viewed", None, "page", iso(t0 + 10)),
        ("consumed", None, "api", iso(t0 + 20)),
        ("rejected", "used", "api", iso(t0 + 30)),
    ]
    # The history holds no personal data: subject id, reasons and channels only.
    assert "user-9" not in str(history["events"])
    # And the page tells the user, too.
    assert_page_refuses(api.http, link["url"], "used", status=409)


def test_history_without_pages(api):
    """The API-only sequence: minted, consumed, then each replay attempt with its reason."""
    link = api.minted("password_reset", "user-10")
    api.redeem(link["token"], "password_reset")
    api.redeem(link["token"], "password_reset")
    api.redeem(link["token"], "password_reset")
    events = api.status(link["jti"]).get_json()["events"]
    assert [(e["event"], e["reason"]) for e in events] == [
        ("minted", None),
        ("consumed", None),
        ("rejected", "used"),
        ("rejected", "used"),
    ]
