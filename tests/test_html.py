"""Failure pages that help: they name the application, say when in words, offer the client's
restart URI; the confirmation page says how long the link stays valid. Time is set, not waited."""

from __future__ import annotations

import re
import time

import pytest

from linksvc import html

from . import hostile
from .conftest import make_api_user
from .test_pages import assert_html_headers, reason_of

RESTART = "https://acme.example/sign-in"
T0 = 1_796_000_000  # 2026-11-30 ...; any fixed second will do


def text_of(resp) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", resp.get_data(as_text=True)))


@pytest.fixture
def acme(app):
    svc = app.extensions["linksvc"]
    svc.clock = lambda: T0
    return make_api_user(app, "acme-restart", display_name="Acme Shop", restart_uri=RESTART)


def at(app, t: int) -> None:
    app.extensions["linksvc"].clock = lambda: t


def en_clock(ts: int) -> str:
    """A time of day as the English pages write it (CLDR: "2:02\u202fPM UTC"), with the
    narrow no-break space as a space, as text_of reads a page."""
    return time.strftime("%I:%M %p UTC", time.gmtime(ts)).lstrip("0")


def test_words_for_times():
    assert html.ago(T0, T0 + 3) == "just now"
    assert html.ago(T0, T0 + 30) == "less than a minute ago"
    assert html.ago(T0, T0 + 60) == "1 minute ago"
    assert html.ago(T0, T0 + 3 * 60 + 59) == "3 minutes ago"
    assert html.ago(T0, T0 + 2 * 3600) == "2 hours ago"
    assert html.ago(T0, T0 + 86400) == "1 day ago"
    # English as CLDR writes it ("2:02 PM UTC"); without a zone, the time is UTC's.
    assert " ".join(html.clock(T0).split()) == en_clock(T0)
    assert html.lasts(300) == "5 minutes" and html.lasts(45) == "45 seconds"


def test_used_page_names_app_says_when_and_offers_restart(app, acme, client):
    link = acme.minted(subject="u-1")
    at(app, T0 + 20)
    assert acme.redeem(link["token"]).status_code == 200
    at(app, T0 + 20 + 3 * 60 + 5)
    resp = client.get(f"/l/{link['token']}")
    assert resp.status_code == 409 and reason_of(resp) == "used"
    text = text_of(resp)
    assert "This sign-in link for Acme Shop was used 3 minutes ago." in text
    assert f'id="restart" href="{RESTART}"' in resp.get_data(as_text=True)
    assert "Request a new link" in text
    assert "u-1" not in text  # never the account


def test_expired_page_says_at_what_time(app, acme, client):
    link = acme.minted("password_reset", subject="u-2")  # 300 s by default
    at(app, T0 + 300 + 125)
    resp = client.get(f"/l/{link['token']}")
    assert resp.status_code == 410 and reason_of(resp) == "expired"
    expected = en_clock(T0 + 300)
    assert (
        f"This password-reset link for Acme Shop expired at {expected}, 2 minutes ago."
        in text_of(resp)
    )
    assert f'href="{RESTART}"' in resp.get_data(as_text=True)


def test_revoked_and_superseded_pages(app, acme, client):
    revoked = acme.minted(subject="u-3")
    at(app, T0 + 60)
    assert (
        acme.http.delete(f"/api/v1/links/{revoked['jti']}", headers=acme.headers).status_code == 200
    )
    old = acme.minted("password_reset", subject="u-4")
    at(app, T0 + 120)
    acme.minted("password_reset", subject="u-4")
    at(app, T0 + 120 + 2 * 3600 // 60)  # two minutes later
    page = text_of(client.get(f"/l/{revoked['token']}"))
    assert "Acme Shop cancelled this sign-in link 3 minutes ago." in page
    page = text_of(client.get(f"/l/{old['token']}"))
    assert "Acme Shop sent a newer password-reset link 2 minutes ago" in page


def test_without_restart_uri_the_page_says_where_to_go(app, client):
    plain = make_api_user(app, "plain", display_name="Plain App")
    link = plain.minted(subject="u-5")
    assert plain.redeem(link["token"]).status_code == 200
    resp = client.get(f"/l/{link['token']}")
    assert 'id="restart"' not in resp.get_data(as_text=True)
    assert "go back to Plain App and ask for one" in text_of(resp)
    assert_html_headers(resp)


@pytest.mark.parametrize("case", [c for c in hostile.CASES if c.name != "expired"], ids=str)
def test_a_token_we_did_not_sign_names_nobody(app, acme, client, case):
    """A forged or tampered token gets the generic page: nothing it claims is repeated back,
    and no application's restart URI is offered on its say-so."""
    link = acme.minted(subject="u-6")
    bad = case.build(app, link["token"])
    resp = client.get(f"/l/{bad}")
    body = resp.get_data(as_text=True)
    if resp.status_code == 200:  # a case that is still the same valid link (e.g. a no-op)
        return
    assert "Acme Shop" not in body and RESTART not in body


def test_confirmation_page_says_how_long_the_link_works(app, acme, client):
    link = acme.minted(subject="u-7", ttl=240)
    at(app, T0 + 60)
    resp = client.get(f"/l/{link['token']}")
    assert resp.status_code == 200
    text = text_of(resp)
    until = en_clock(T0 + 240)
    assert f"This link works until {until} (3 minutes from now), once." in text
