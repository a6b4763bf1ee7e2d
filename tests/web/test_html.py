"""Failure pages that help: they name the application, say when in words, offer the client's
restart URI; the confirmation page says how long the link stays valid. Time is set, not waited."""

from __future__ import annotations

import re
import time

import pytest

from linksvc.services import services
from linksvc.web import html
from tests.support import hostile
from tests.support.apps import make_api_user
from tests.web.test_pages import assert_html_headers, reason_of

RESTART = "https://acme.example/sign-in"
T0 = 1_796_000_000  # 2026-11-30 ...; any fixed second will do


def text_of(resp) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", resp.get_data(as_text=True)))


@pytest.fixture
def acme(app):
    svc = services(app).links
    svc.clock = lambda: T0
    return make_api_user(app, "acme-restart", display_name="Acme Shop", restart_uri=RESTART)


def at(app, t: int) -> None:
    services(app).links.clock = lambda: t


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


# -- plain words, a way onward, a support reference ---------------------------------------


def test_failure_pages_show_no_reason_code_and_a_support_reference(app, acme, client, caplog):
    """The page says what happened in words; the reason stays a data attribute. Its support
    reference is the start of the request id, which the log line of that request holds."""
    link = acme.minted(subject="u-8")
    assert acme.redeem(link["token"]).status_code == 200
    resp = client.get(f"/l/{link['token']}", headers={"X-Request-Id": "0123456789abcdef"})
    text = text_of(resp)
    assert reason_of(resp) == "used"
    assert "For support" not in text and "Reason" not in text and " used / " not in text
    assert "<code>used</code>" not in resp.get_data(as_text=True)
    ref = re.search(r'id="support-ref">([^<]+)<', resp.get_data(as_text=True)).group(1)
    assert ref == "01234567" and f"Support reference: {ref}" in text
    assert resp.headers["X-Request-Id"].startswith(ref)
    lines = [r for r in caplog.records if getattr(r, "support_ref", None) == ref]
    assert lines and lines[0].reason == "used" and lines[0].status == 409
    # A forged token's page has a reference too, and codes such as "not_found" stay hidden.
    for path in (f"/l/{link['token']}x", "/nowhere"):
        resp = client.get(path)
        assert re.search(r'id="support-ref">[0-9a-f]{8}<', resp.get_data(as_text=True))
        assert not re.search(r"\b[a-z]+_[a-z_]+\b", text_of(resp)), text_of(resp)


def test_done_page_leads_back_to_the_application(app, client):
    """Without a redirect URI to hand a code to, the done page still offers the way back
    (to the origin of the client's restart URI)."""
    plain = make_api_user(
        app,
        "nocode",
        display_name="No Code",
        restart_uri=RESTART,
        redirect_uris=[],
        purposes=["password_reset"],
    )
    link = plain.minted("password_reset", "u-9")
    page = client.get(f"/l/{link['token']}")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.get_data(as_text=True)).group(1)
    resp = client.post(f"/l/{link['token']}", data={"csrf": csrf})
    assert resp.status_code == 200 and reason_of(resp) == "completed"
    assert "completed" not in text_of(resp).lower().split()
    assert 'id="return" href="https://acme.example/"' in resp.get_data(as_text=True)
    assert "Return to No Code" in text_of(resp)


def test_expired_page_offers_both_ways_onward(app, acme, client):
    link = acme.minted(subject="u-10", ttl=60)
    at(app, T0 + 3600)
    body = client.get(f"/l/{link['token']}").get_data(as_text=True)
    assert f'id="restart" href="{RESTART}"' in body
    assert 'id="return" href="http://127.0.0.1:5001/"' in body


def test_favicon_answers(client):
    resp = client.get("/favicon.ico")
    assert resp.status_code == 200 and resp.data[:4] == b"\x00\x00\x01\x00"
    assert "max-age" in resp.headers["Cache-Control"]


def test_problems_page_renders_its_markdown(client):
    body = client.get("/problems").get_data(as_text=True)
    assert "`" not in re.sub(r"<[^>]+>", "", body)
    assert body.count("<code>") > 40  # each title's code and the codes in the explanations


def test_an_over_long_link_gets_our_page(client):
    resp = client.get("/l/" + "A" * 20_000)
    assert resp.status_code == 400 and reason_of(resp) == "invalid"
    assert "This link is not valid" in text_of(resp)
