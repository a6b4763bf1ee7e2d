"""The Python client (clients/python, ``linksvc_client``) against a live linksvc under
gunicorn: every method, sync and async, and every error class, each provoked for real.

The service's clock is moved through ``tests.support.clock_wsgi`` to let links and codes expire;
mail goes to a real SMTP server (aiosmtpd) that refuses ``bounce@`` addresses.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from aiosmtpd.controller import Controller

import linksvc_client as lc
from linksvc_client import AsyncLinkClient, LinkClient, RetryPolicy, _core
from tests.support.apps import REDIRECT
from tests.support.env import free_port
from tests.support.live import Live, live_linksvc, press

pytestmark = pytest.mark.slow


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("bounce@"):
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(
            email.message_from_bytes(envelope.content, policy=email.policy.default)
        )
        return "250 Message accepted"


@pytest.fixture(scope="module")
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box, port = Mailbox(), free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


@pytest.fixture(scope="module")
def live(tmp_path_factory, mailbox) -> Iterator[Live]:
    with live_linksvc(
        tmp_path_factory.mktemp("client_api"), LINKSVC_SMTP_URL=f"smtp://127.0.0.1:{mailbox[1]}"
    ) as live:
        yield live


@pytest.fixture
def client(live) -> Iterator[LinkClient]:
    live.shift_clock(0)
    with LinkClient(live.url, live.api_key, retry=RetryPolicy(max_attempts=1)) as c:
        yield c


def _subject(request) -> str:
    return "u-" + request.node.name.replace("[", "-").replace("]", "")[:40]


# -- every method ---------------------------------------------------------------------------


def test_mint_verify_redeem_status(client, live, request):
    subject = _subject(request)
    link = client.mint("magic_link", subject, ttl=120, data={"cart": [1, 2]})
    assert isinstance(link, lc.MintedLink)
    assert link.url.startswith(live.url + "/l/") and link.token in link.url
    assert link.purpose == "magic_link" and link.subject == subject
    assert link.expires_at - link.issued_at == timedelta(seconds=120)
    assert link.issued_at.tzinfo is UTC and not link.replayed and link.idempotency_key
    assert link.token not in repr(link)  # a bearer secret never reaches a log line

    seen = client.verify(link.token, "magic_link")
    assert (seen.jti, seen.state, seen.subject) == (link.jti, "issued", subject)
    assert seen.claims.audience == live.client_id and seen.claims.expires_at == link.expires_at

    redeemed = client.redeem(link.token, "magic_link")
    assert (redeemed.jti, redeemed.subject, redeemed.data) == (link.jti, subject, {"cart": [1, 2]})
    assert abs(redeemed.redeemed_at - datetime.now(UTC)) < timedelta(seconds=30)

    state = client.status(link.jti)
    assert state.state == "consumed" and state.state_via == "api"
    assert state.state_changed_at is not None
    assert [e.event for e in state.events][:1] == ["minted"]
    assert "consumed" in [e.event for e in state.events]


def test_mint_with_every_option_and_a_given_idempotency_key(client, request):
    subject = _subject(request)
    a = client.mint(
        "password_reset", subject, redirect_uri=REDIRECT, ttl=60, idempotency_key="order-77"
    )
    b = client.mint(
        "password_reset", subject, redirect_uri=REDIRECT, ttl=60, idempotency_key="order-77"
    )
    assert a.jti == b.jti and b.replayed and not a.replayed and b.idempotency_key == "order-77"
    # Without a key of the caller's, each call is its own mint.
    assert client.mint("magic_link", subject).jti != client.mint("magic_link", subject).jti


def test_mint_by_mail_sends_once(client, mailbox, request):
    box, _ = mailbox
    before = len(box.messages)
    link = client.mint(
        "magic_link", _subject(request), email="someone@example.com", idempotency_key="mail-1"
    )
    again = client.mint(
        "magic_link", _subject(request), email="someone@example.com", idempotency_key="mail-1"
    )
    assert link.emailed and again.emailed and again.jti == link.jti
    assert len(box.messages) == before + 1
    assert box.messages[-1]["X-Linksvc-Jti"] == link.jti


def test_revoke_and_revoke_subject(client, request):
    subject = _subject(request)
    one = client.mint("magic_link", subject)
    result = client.revoke(one.jti)
    assert (result.jti, result.state, result.revoked) == (one.jti, "revoked", True)
    assert client.revoke(one.jti).revoked is False  # already revoked: idempotent
    client.mint("magic_link", subject)
    client.mint("password_reset", subject)
    assert client.revoke_subject(subject, ["magic_link"]) == 1
    assert client.revoke_subject(subject) == 1
    assert client.revoke_subject(subject) == 0


def test_links_of_pages_and_filters(client, request):
    subject = "tenant/" + _subject(request)  # a slash in a subject is one path segment
    jtis = [client.mint("magic_link", subject).jti for _ in range(5)]
    client.revoke(jtis[0])
    page = client.links_of(subject, limit=2)
    assert page.subject == subject and len(page.links) == 2 and page.next_cursor
    everything = list(client.iter_links_of(subject, page_size=2))
    assert sorted(x.jti for x in everything) == sorted(jtis)
    assert [x.issued_at for x in everything] == sorted(
        (x.issued_at for x in everything), reverse=True
    )
    live_ones = client.links_of(subject, state="issued").links
    assert {x.jti for x in live_ones} == set(jtis[1:]) and all(x.is_live() for x in live_ones)
    assert [x.jti for x in client.links_of(subject, state=["revoked", "consumed"]).links] == [
        jtis[0]
    ]
    assert client.links_of(subject, purpose="download").links == ()


def test_exchange_code(client, live, request):
    link = client.mint("magic_link", _subject(request))
    code = press(link.url)
    done = client.exchange_code(code, link.code_verifier)
    assert (done.jti, done.subject, done.purpose) == (link.jti, _subject(request), "magic_link")
    with pytest.raises(lc.CodeUsed) as err:
        client.exchange_code(code, link.code_verifier)
    assert isinstance(err.value, lc.LinkUsed) and err.value.status == 409


def test_sign_in_and_reset_codes_are_bound_by_default(client, request):
    """The code is exchanged only with the verifier of the browser that asked: without it
    (the attacker's code in a victim's browser) it is refused and spent."""
    subject = _subject(request)
    for purpose in ("magic_link", "password_reset"):
        link = client.mint(purpose, subject)
        assert lc.code_challenge(link.code_verifier) and link.code_verifier not in repr(link)
        code = press(link.url)
        with pytest.raises(lc.CodeNotForThisBrowser) as err:
            client.exchange_code(code)
        assert (err.value.status, err.value.code) == (422, "code_verifier_required")
        with pytest.raises(lc.LinkGone) as gone:  # spent by the refused attempt
            client.exchange_code(code, link.code_verifier)
        assert gone.value.code == "code_revoked"
    # Another session's verifier.
    link = client.mint("magic_link", subject)
    with pytest.raises(lc.CodeNotForThisBrowser) as err:
        client.exchange_code(press(link.url), lc.new_code_verifier())
    assert err.value.code == "code_verifier_mismatch"
    # The session's own verifier, given.
    mine = lc.new_code_verifier()
    link = client.mint("magic_link", subject, code_verifier=mine)
    assert link.code_verifier == mine
    assert client.exchange_code(press(link.url), mine).jti == link.jti
    # Unbound on request: a flow no browser started.
    link = client.mint("magic_link", subject, bind=False)
    assert link.code_verifier is None
    assert client.exchange_code(press(link.url)).jti == link.jti
    # Downloads end in no code; a verifier of the wrong form is never sent.
    with pytest.raises(ValueError):
        client.mint("download", subject, download={"key": "k"}, code_verifier=mine)
    with pytest.raises(ValueError):
        client.exchange_code("code", "too-short")


def test_a_repeat_with_the_callers_key_binds_the_same_verifier(client, live, request):
    """A repeat with the same Idempotency-Key must send the same challenge to answer the
    same link: the verifier is then derived from the key, under a secret of the API key."""
    subject = _subject(request)
    a = client.mint("magic_link", subject, idempotency_key="bound-1")
    b = client.mint("magic_link", subject, idempotency_key="bound-1")
    assert b.replayed and a.jti == b.jti and a.code_verifier == b.code_verifier
    assert client.exchange_code(press(b.url), b.code_verifier).jti == a.jti

    def derived(api_key: str) -> str | None:
        secret = _core.binding_secret(api_key)
        return _core.binding(
            "magic_link", bind=True, code_verifier=None, idempotency_key="bound-1", secret=secret
        )

    assert derived(live.api_key) == a.code_verifier != derived("lsk_someone_else")


def test_sign_in(client, mailbox, request):
    box, _ = mailbox
    before = len(box.messages)
    started = client.sign_in(
        _subject(request), "someone@example.com", ip="203.0.113.9", user_agent="Firefox/140"
    )
    assert isinstance(started, lc.SignIn) and started.wait_url.endswith("/s/" + started.id)
    assert started.code_verifier and started.code_verifier not in repr(started)
    assert started.expires_at > datetime.now(UTC)
    assert client.status(started.jti).state == "issued"
    assert len(box.messages) == before + 1


def test_async_client_has_every_method(live, request):
    subject = _subject(request)

    async def journey() -> None:
        async with AsyncLinkClient(live.url, live.api_key) as c:
            link = await c.mint("magic_link", subject, data={"n": 1})
            again = await c.mint("magic_link", subject, data={"n": 1}, idempotency_key="a-1")
            assert (
                await c.mint("magic_link", subject, data={"n": 1}, idempotency_key="a-1")
            ).jti == again.jti
            assert (await c.verify(link.token, "magic_link")).state == "issued"
            assert (await c.redeem(link.token, "magic_link")).data == {"n": 1}
            with pytest.raises(lc.LinkUsed):
                await c.redeem(link.token, "magic_link")
            assert (await c.status(link.jti)).state == "consumed"
            assert (await c.revoke(again.jti)).revoked
            third = await c.mint("magic_link", subject)
            assert await c.revoke_subject(subject) == 1
            page = await c.links_of(subject, limit=1)
            assert len(page.links) == 1 and page.next_cursor
            every = {x.jti async for x in c.iter_links_of(subject, page_size=1)}
            assert every == {link.jti, again.jti, third.jti}
            code_link = await c.mint("magic_link", subject)
            code = await asyncio.to_thread(press, code_link.url)
            assert (await c.exchange_code(code, code_link.code_verifier)).jti == code_link.jti
            started = await c.sign_in(subject, "a@example.com", ip="::1", user_agent="UA")
            assert started.id
            with pytest.raises(lc.UnknownLink):
                await c.status("A" * 22)

    asyncio.run(journey())


# -- every error class, provoked for real ----------------------------------------------------


def test_invalid_request_names_the_field(client):
    with pytest.raises(lc.InvalidRequest) as err:
        client.mint("magic_link", "u", ttl=100_000)
    e = err.value
    assert (e.status, e.code, e.field) == (422, "ttl_out_of_range", "ttl")
    assert e.request_id and e.request_id in str(e) and e.detail


def test_idempotency_mismatch(client):
    client.mint("magic_link", "u-mismatch", idempotency_key="mm-1")
    with pytest.raises(lc.IdempotencyMismatch) as err:
        client.mint("magic_link", "u-other", idempotency_key="mm-1")
    assert isinstance(err.value, lc.InvalidRequest) and err.value.code == "idempotency_mismatch"


def test_authentication_error(live):
    with LinkClient(live.url, "lsk_not-a-key") as c, pytest.raises(lc.AuthenticationError) as err:
        c.status("A" * 22)
    assert (err.value.status, err.value.code) == (401, "unauthorized")


def test_invalid_token(client, live):
    with pytest.raises(lc.InvalidToken) as err:
        client.verify("not.a.token", "magic_link")
    assert (err.value.status, err.value.code) == (401, "malformed")
    link = client.mint("magic_link", "u-purpose")
    with pytest.raises(lc.InvalidToken) as err:
        client.redeem(link.token, "password_reset")
    assert err.value.code == "wrong_purpose"
    _other_id, other_key = live.new_client("other-app")
    with LinkClient(live.url, other_key) as other, pytest.raises(lc.InvalidToken) as err:
        other.redeem(link.token, "magic_link")
    assert err.value.code == "wrong_audience"
    assert client.status(link.jti).state == "issued"  # nothing was consumed


def test_not_allowed(client):
    with pytest.raises(lc.NotAllowed) as err:
        client.mint("magic_link", "u", redirect_uri="https://evil.example/cb")
    assert (err.value.status, err.value.code) == (403, "redirect_uri_not_allowed")


def test_unknown_link_and_invalid_code(client):
    with pytest.raises(lc.UnknownLink) as err:
        client.status("A" * 22)
    assert isinstance(err.value, lc.NotFound) and err.value.code == "unknown_link"
    with pytest.raises(lc.InvalidCode) as err2:
        client.exchange_code("no-such-code")
    assert isinstance(err2.value, lc.NotFound) and err2.value.status == 404


def test_link_used(client):
    link = client.mint("magic_link", "u-used")
    client.redeem(link.token, "magic_link")
    with pytest.raises(lc.LinkUsed) as err:
        client.redeem(link.token, "magic_link")
    assert (err.value.status, err.value.code, err.value.jti) == (409, "used", link.jti)
    with pytest.raises(lc.LinkUsed):
        client.revoke(link.jti)


def test_link_gone_revoked_superseded_expired(client, live):
    revoked = client.mint("magic_link", "u-gone")
    client.revoke(revoked.jti)
    with pytest.raises(lc.LinkRevoked) as err:
        client.redeem(revoked.token, "magic_link")
    assert isinstance(err.value, lc.LinkGone) and (err.value.status, err.value.code) == (
        410,
        "revoked",
    )
    first = client.mint("password_reset", "u-gone")
    client.mint("password_reset", "u-gone")
    with pytest.raises(lc.LinkSuperseded):
        client.verify(first.token, "password_reset")
    short = client.mint("magic_link", "u-gone", ttl=30)
    live.shift_clock(30 + 5 + 1)
    with pytest.raises(lc.LinkExpired) as err:
        client.redeem(short.token, "magic_link")
    assert err.value.code == "expired" and isinstance(err.value, lc.LinkGone)


def test_code_expired(client, live):
    link = client.mint("magic_link", "u-code")
    code = press(link.url)
    live.shift_clock(61)
    with pytest.raises(lc.CodeExpired) as err:
        client.exchange_code(code)
    assert isinstance(err.value, lc.LinkGone) and err.value.code == "code_expired"


def test_mail_failed(client):
    with pytest.raises(lc.MailFailed) as err:
        client.mint("magic_link", "u-bounce", email="bounce@example.com")
    assert (err.value.status, err.value.code) == (502, "mail_failed")


def test_rate_limited_carries_retry_after(live):
    _, key = live.new_client("slowpoke", "--mint-limit", "2 per minute")
    waits: list[float] = []
    with (
        LinkClient(live.url, key, retry=RetryPolicy(max_attempts=1), sleep=waits.append) as c,
        pytest.raises(lc.RateLimited) as err,
    ):
        for i in range(8):
            c.mint("magic_link", f"u-{i}")
    assert (err.value.status, err.value.code) == (429, "rate_limited")
    assert err.value.retry_after is not None and 0 < err.value.retry_after <= 60
    assert waits == []  # one attempt allowed: no waiting
    # Retry-After beyond the bound: raised at once rather than slept through. (The limits
    # are counted per worker, so a few mints may pass on the other one first.)
    with (
        LinkClient(live.url, key, retry=RetryPolicy(max_retry_after=0.5), sleep=waits.append) as c,
        pytest.raises(lc.RateLimited),
    ):
        for i in range(8):
            c.mint("magic_link", f"u-x{i}")
    assert waits == []
    # Within the bound: the client waits what the server asked (seconds, where its own
    # first backoff would be under 0.5 s), then tries again, up to max_attempts.
    with (
        LinkClient(
            live.url,
            key,
            retry=RetryPolicy(max_retry_after=120, max_attempts=3, deadline=1000),
            sleep=waits.append,
        ) as c,
        pytest.raises(lc.RateLimited),
    ):
        for i in range(8):
            c.mint("magic_link", f"u-y{i}")
    assert len(waits) >= 2 and all(w >= 1 for w in waits), waits


def test_errors_are_one_family():
    for name in lc.__all__:
        obj = getattr(lc, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, lc.LinksvcError), name


def test_locale_and_timezone_of_links_and_sign_ins(client, mailbox, live, request):
    """The language and time zone of a link's pages and mail (issue 22), both ways."""
    link = client.mint("magic_link", _subject(request), locale="de-AT", timezone="Europe/Berlin")
    status = client.status(link.jti)
    assert (status.locale, status.timezone) == ("de", "Europe/Berlin")
    box, _ = mailbox
    started = client.sign_in(
        _subject(request) + "-s",
        "someone@example.com",
        ip="203.0.113.9",
        user_agent="Firefox/140",
        locale="ja",
        timezone="Asia/Tokyo",
    )
    assert client.status(started.jti).locale == "ja"
    assert box.messages[-1]["Content-Language"] == "ja"
    with pytest.raises(lc.LinksvcError) as caught:
        client.mint("magic_link", _subject(request), locale="pt_BR")
    assert caught.value.code == "invalid_field"

    async def journey() -> None:
        async with AsyncLinkClient(live.url, live.api_key) as c:
            minted = await c.mint("magic_link", _subject(request) + "-a", timezone="Asia/Tokyo")
            assert (await c.status(minted.jti)).timezone == "Asia/Tokyo"
            started = await c.sign_in(
                _subject(request) + "-as",
                "b@example.com",
                ip="203.0.113.9",
                user_agent="x",
                locale="ar",
            )
            assert (await c.status(started.jti)).locale == "ar"

    asyncio.run(journey())
