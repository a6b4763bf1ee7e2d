"""Mail delivery against a real SMTP server (aiosmtpd) started by the test, and the outbox.

The received message has a text and an HTML part, its link works exactly once, and the
recipient's address appears in no log line and no database table.
"""

from __future__ import annotations

import datetime
import email
import email.policy
import io
import logging
import re
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from flask import Flask

from linksvc import create_app
from linksvc.ops.logs import JsonFormatter
from linksvc.services import services
from linksvc.store import db
from tests.support.apps import _prepare, make_api_user
from tests.support.env import free_port

ADDRESS = "victim.q7zx3@mail-test.example"


class Collect:
    def __init__(self, refuse: bool = False) -> None:
        self.messages: list[tuple[list[str], email.message.EmailMessage]] = []
        self.refuse = refuse

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.refuse:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((list(envelope.rcpt_tos), msg))
        return "250 Message accepted"


@pytest.fixture
def smtp() -> Iterator[tuple[Collect, int]]:
    handler = Collect()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()


def make_app(env: dict[str, str], **extra: str) -> Flask:
    app = create_app({**env, **extra})
    _prepare(app)
    return app


@pytest.fixture
def logbuf() -> Iterator[io.StringIO]:
    """Every log record of every logger (linksvc's, Flask's, the libraries'), as JSON lines —
    except the test SMTP server's own (aiosmtpd logs each message it receives, as a mail server would)."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.DEBUG)
    handler.addFilter(lambda record: not record.name.startswith("mail.log"))
    loggers = [logging.getLogger(), logging.getLogger("linksvc")]
    old = [(lg, lg.level) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    yield buf
    for lg, level in old:
        lg.removeHandler(handler)
        lg.setLevel(level)


def parts(msg: email.message.EmailMessage) -> tuple[str, str]:
    text = msg.get_body(preferencelist=("plain",))
    html = msg.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


def link_in(text: str) -> str:
    m = re.search(r"http://127\.0\.0\.1:8000/l/([A-Za-z0-9_.-]+)", text)
    assert m, text
    return m.group(1)


def test_smtp_message_has_both_parts_and_its_link_works_once(env, smtp, logbuf, capfd):
    handler, port = smtp
    app = make_app(
        env,
        LINKSVC_SMTP_URL=f"smtp://127.0.0.1:{port}",
        LINKSVC_MAIL_FROM="Acme <login@acme.example>",
    )
    api = make_api_user(app, "acme", display_name="Acme & <Co>")
    resp = api.mint("magic_link", "user-42", email=ADDRESS, ttl=240)
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    assert body["emailed"] is True

    assert len(handler.messages) == 1
    rcpts, msg = handler.messages[0]
    assert rcpts == [ADDRESS]
    assert msg.get_content_type() == "multipart/alternative"
    assert msg["To"] == ADDRESS and "login@acme.example" in msg["From"]
    assert msg["Subject"] == "Your sign-in link for Acme & <Co>"
    text, html = parts(msg)
    token = link_in(text)
    assert token == link_in(html) == body["token"]
    # The application's name (escaped in HTML) and the expiry time are in both parts.
    # English dates as CLDR writes them ("Dec 5, 2026, 7:38\u202fAM UTC"), then in 4 minutes.
    expires = datetime.datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    expires_text = (
        f"{expires:%b} {expires.day}, {expires:%Y}, {expires:%I:%M}".replace(", 0", ", ")
        + f"\u202f{expires:%p} UTC"
    )
    assert "Acme & <Co>" in text and "Acme &amp; &lt;Co&gt;" in html and "<Co>" not in html
    assert expires_text in text and expires_text in html
    assert "expires in 4 minutes" in text
    assert msg["Content-Language"] == "en"

    # The link in the mail works once.
    assert api.redeem(token).status_code == 200
    again = api.redeem(token)
    assert again.status_code == 409 and again.get_json()["code"] == "used"

    # The address is in no log line (ours, Flask's, smtplib's, printed to stderr) ...
    out, err = capfd.readouterr()
    logs = logbuf.getvalue() + out + err
    assert body["jti"] in logs  # the logs did capture the mint and the send
    assert '"outcome": "mailed"' in logs
    local = ADDRESS.split("@")[0]
    assert ADDRESS not in logs and local not in logs
    # ... and in no table, nor anywhere in the database file.
    assert_nowhere_in_database(app, [ADDRESS, local])
    services(app).links.engine.dispose()


def assert_nowhere_in_database(app: Flask, needles: list[str]) -> None:
    engine = services(app).links.engine
    meta = sa.MetaData()
    meta.reflect(engine)
    assert "links" in meta.tables and "link_events" in meta.tables
    with engine.connect() as conn:
        for table in meta.sorted_tables:
            for row in conn.execute(sa.select(table)):
                flat = " ".join(str(v) for v in row)
                for needle in needles:
                    assert needle not in flat, f"{needle!r} stored in table {table.name}"
    engine.dispose()
    path = Path(engine.url.database)
    for f in path.parent.glob(path.name + "*"):  # the file, and any -wal / -journal
        raw = f.read_bytes()
        for needle in needles:
            assert needle.encode() not in raw, f"{needle!r} in {f.name}"


def test_send_failure_answers_502_and_revokes_the_link(env, logbuf):
    handler = Collect(refuse=True)
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        app = make_app(env, LINKSVC_SMTP_URL=f"smtp://127.0.0.1:{port}")
        api = make_api_user(app)
        old = api.minted("password_reset", "user-9")
        resp = api.mint("password_reset", "user-9", email=ADDRESS)
    finally:
        controller.stop()
    assert resp.status_code == 502
    assert resp.mimetype == "application/problem+json"
    problem = resp.get_json()
    assert problem["code"] == "mail_failed"
    assert "token" not in problem and "eyJ" not in resp.get_data(as_text=True)
    assert handler.messages == []
    # The link that was minted for the failed mail is revoked, not left usable.
    svc = services(app).links
    with db.read(svc.engine) as conn:
        rows = conn.execute(
            sa.select(db.links.c.jti, db.links.c.state)
            .where(db.links.c.subject == "user-9")
            .where(db.links.c.jti != old["jti"])
        ).all()
    assert len(rows) == 1 and rows[0].state == "revoked"
    events = [e["event"] for e in api.status(rows[0].jti).get_json()["events"]]
    assert events == ["minted", "revoked"]
    logs = logbuf.getvalue()
    assert '"outcome": "mail_failed"' in logs and rows[0].jti in logs
    assert (
        ADDRESS not in logs and ADDRESS.split("@")[0] not in logs
    )  # SMTP errors quote the recipient
    svc.engine.dispose()


def test_failed_mail_leaves_the_older_link_working(env):
    """Issue 14 item 8: a reset whose mail was refused supersedes nothing, so the user keeps
    the link they already had."""
    handler = Collect(refuse=True)
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        app = make_app(env, LINKSVC_SMTP_URL=f"smtp://127.0.0.1:{port}")
        api = make_api_user(app)
        old = api.minted("password_reset", "user-9")
        resp = api.mint("password_reset", "user-9", email=ADDRESS)
    finally:
        controller.stop()
    assert resp.status_code == 502
    assert api.verify(old["token"], "password_reset").get_json()["state"] == "issued"
    assert api.redeem(old["token"], "password_reset").status_code == 200
    services(app).links.engine.dispose()


def test_accepted_mail_supersedes_the_older_link(env, smtp):
    handler, port = smtp
    app = make_app(env, LINKSVC_SMTP_URL=f"smtp://127.0.0.1:{port}")
    api = make_api_user(app)
    old = api.minted("password_reset", "user-9")
    new = api.minted("password_reset", "user-9", email=ADDRESS)
    assert new["superseded"] == 1 and len(handler.messages) == 1
    assert api.verify(old["token"], "password_reset").get_json()["code"] == "superseded"
    assert api.verify(new["token"], "password_reset").get_json()["state"] == "issued"
    # A reset minted (and mailed) while this one was in flight supersedes it in turn.
    newer = api.minted("password_reset", "user-9", email=ADDRESS)
    assert newer["superseded"] == 1
    assert api.verify(new["token"], "password_reset").get_json()["code"] == "superseded"
    services(app).links.engine.dispose()


def test_unreachable_smtp_server_answers_502(env):
    app = make_app(env, LINKSVC_SMTP_URL=f"smtp://127.0.0.1:{free_port()}")
    api = make_api_user(app)
    resp = api.mint("magic_link", "user-1", email=ADDRESS)
    assert resp.status_code == 502 and resp.get_json()["code"] == "mail_failed"
    services(app).links.engine.dispose()


@pytest.mark.parametrize(
    "address",
    [
        "not-an-address",
        "a@b",
        "two@@example.com",
        "Name <a@example.com>",
        "a@example.com, b@example.com",
        "a@example.com\r\nBcc: evil@example.com",
        "a b@example.com",
        "x" * 250 + "@example.com",
        "",
    ],
)
def test_bad_address_refused_before_anything_is_minted(app, api, address):
    before = api.minted("password_reset", "user-3")
    resp = api.mint("password_reset", "user-3", email=address)
    assert resp.status_code == 422, resp.get_json()
    assert resp.get_json()["code"] == "invalid_field" and resp.get_json()["field"] == "email"
    # Nothing was minted, so nothing was superseded.
    assert api.verify(before["token"], "password_reset").get_json()["state"] == "issued"
    outbox = Path(app.config["LINKSVC"].mail_outbox)
    assert not outbox.exists() or not list(outbox.iterdir())


def test_outbox_without_smtp(app, api):
    """No LINKSVC_SMTP_URL: each message is an owner-only .eml file in instance/outbox."""
    outbox = Path(app.config["LINKSVC"].mail_outbox)
    assert outbox == Path(app.instance_path) / "outbox"
    link = api.minted("password_reset", "user-4", email=ADDRESS)
    files = list(outbox.glob("*.eml"))
    assert len(files) == 1 and link["jti"] in files[0].name
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(outbox.stat().st_mode) == 0o700
    msg = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    assert msg["To"] == ADDRESS and msg["Subject"] == "Reset your password for Acme"
    text, html = parts(msg)
    assert link_in(text) == link_in(html) == link["token"]
    assert "Only the most recent reset link works" in text


def test_download_and_reset_templates_render(app, api):
    """Every purpose has both templates (a download link mints only with storage set up)."""
    for purpose in ("magic_link", "password_reset", "download"):
        for ext in ("txt", "html"):
            assert (
                Path(app.root_path).parent / "templates" / "email" / f"{purpose}.{ext}"
            ).is_file()


def test_limited_mint_sends_no_mail(env, smtp):
    handler, port = smtp
    app = make_app(env, LINKSVC_SMTP_URL=f"smtp://127.0.0.1:{port}")
    api = make_api_user(app, subject_limit="1 per minute")
    assert api.mint("password_reset", "user-5", email=ADDRESS).status_code == 201
    assert api.mint("password_reset", "user-5", email=ADDRESS).status_code == 429
    assert len(handler.messages) == 1
    services(app).links.engine.dispose()


# -- TLS and authentication -------------------------------------------------------------


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the client trusts it via SSL_CERT_FILE)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class Authenticator:
    def __init__(self) -> None:
        self.logins: list[str] = []

    def __call__(self, server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == b"mailer"
            and auth_data.password == b"s3cr:t/pw"
        )
        if ok:
            self.logins.append(auth_data.login.decode())
        return AuthResult(success=ok)


@pytest.mark.parametrize("scheme", ["smtp+starttls", "smtps"])
def test_tls_and_authentication(env, tls_files, monkeypatch, scheme):
    cert, key = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    handler, auth = Collect(), Authenticator()
    port = free_port()
    # (aiosmtpd does not see implicit TLS as TLS for auth_require_tls; the client's side is checked below.)
    kwargs = (
        {"tls_context": context, "require_starttls": True, "auth_require_tls": True}
        if scheme == "smtp+starttls"
        else {"ssl_context": context, "auth_require_tls": False}
    )
    controller = Controller(handler, hostname="127.0.0.1", port=port, authenticator=auth, **kwargs)
    controller.start()
    try:
        # The client verifies the server's certificate against the system store; point it at ours.
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        app = make_app(env, LINKSVC_SMTP_URL=f"{scheme}://mailer:s3cr%3At%2Fpw@127.0.0.1:{port}")
        api = make_api_user(app)
        resp = api.mint("magic_link", "user-1", email=ADDRESS)
        assert resp.status_code == 201, resp.get_json()
        assert auth.logins == ["mailer"] and len(handler.messages) == 1
        # Without trusting the certificate, the send fails (no silent downgrade), and the link is revoked.
        monkeypatch.delenv("SSL_CERT_FILE")
        monkeypatch.setenv("SSL_CERT_FILE", str(Path(cert).parent / "nothing.pem"))
        bad = api.mint("magic_link", "user-2", email=ADDRESS)
        assert bad.status_code == 502 and bad.get_json()["code"] == "mail_failed"
        services(app).links.engine.dispose()
    finally:
        controller.stop()


def test_make_run_says_where_mail_goes(app, runner):
    """`make run` runs `flask demo`, which names the outbox folder."""
    with app.app_context():
        out = runner.invoke(args=["demo"]).output
    assert str(app.config["LINKSVC"].mail_outbox) in out and "outbox" in out


def test_production_refuses_smtp_credentials_in_clear(env):
    from linksvc.config import ConfigError

    prod = {**env, "LINKSVC_ENV": "production", "LINKSVC_SMTP_URL": "smtp://user:pw@127.0.0.1:25"}
    with pytest.raises(ConfigError) as info:
        create_app(prod)
    assert info.value.name == "LINKSVC_SMTP_URL" and "pw" not in str(info.value)
    app = create_app({**prod, "LINKSVC_SMTP_URL": "smtp+starttls://user:pw@127.0.0.1:587"})
    services(app).links.engine.dispose()


# -- mail that renders everywhere ------------------------------------------------------------


def _all_mails(app, api) -> dict[str, email.message.EmailMessage]:
    """One mail of each kind: a sign-in's (with its code), a magic link's, a reset's and a
    download's (the reset's record relabelled: the templates are what differs)."""
    import dataclasses

    from tests.signins.test_signins import _mail, start

    out = {"sign_in": _mail(app, start(app, api).jti)}
    outbox = Path(app.config["LINKSVC"].mail_outbox)
    for purpose in ("magic_link", "password_reset"):
        link = api.minted(purpose, f"user-{purpose}", email=ADDRESS)
        path = next(p for p in outbox.glob("*.eml") if link["jti"] in p.name)
        out[purpose] = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    svc, mailer = services(app).links, services(app).mailer
    reset = svc.mint(api.client, purpose="password_reset", subject="user-dl", ttl=300)
    dl = dataclasses.replace(reset, record=dataclasses.replace(reset.record, purpose="download"))
    with app.test_request_context():
        out["download"] = mailer.render(api.client, dl, ADDRESS)
    return out


def test_mail_headers_parts_and_inlined_css(app, api):
    mails = _all_mails(app, api)
    for kind, msg in mails.items():
        assert re.fullmatch(r"<[^@>]+@localhost>", msg["Message-ID"]), kind  # LINKSVC_MAIL_FROM's
        assert email.utils.parsedate_to_datetime(msg["Date"]).tzinfo is not None
        assert msg["Auto-Submitted"] == "auto-generated"
        assert msg["X-Auto-Response-Suppress"] == "All"
        assert msg["Content-Language"] == "en"
        text, html = parts(msg)
        anchor = re.search(r'<a [^>]*id="button"[^>]*>', html).group(0)
        link = re.search(r'href="([^"]+)"', anchor).group(1)
        assert "/l/" in link and link in text.splitlines(), kind  # alone on its line
        assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
        assert '<meta name="color-scheme" content="light dark">' in html
        assert '<meta name="supported-color-schemes" content="light dark">' in html
        assert "prefers-color-scheme: dark" in html
        # Inlined at build time: the card's width and the button's colour are attributes.
        assert re.search(r'class="card"[^>]*style="[^"]*max-width: 600px', html), kind
        assert re.search(r'class="button-cell"[^>]*style="[^"]*background: #0b57d0', html)
        # A JWT link is a button, not a 450-character address to copy.
        visible = re.sub(r"<[^>]+>", " ", html.split("<body", 1)[1])
        assert link not in visible and 'id="address"' not in html, kind
    assert re.search(r'id="sign-in-code"[^>]*>[0-9A-Z]{4}-[0-9A-Z]{4}<', parts(mails["sign_in"])[1])


def test_a_short_link_is_shown_to_copy(app, api):
    from linksvc.mail import delivery as mail

    assert mail.ADDRESS_SHOWN_UP_TO < 200 < len(api.minted()["url"])


def test_each_mail_renders_on_a_phone_and_a_desktop_without_scrolling(app, api, tmp_path):
    """Each mail's HTML part in Chromium at 360 and 1280 px: nothing wider than the window."""
    from tests.support.browsers import ARGS, CHROMIUM
    from tests.support.env import missing

    if not CHROMIUM.exists():
        missing("Chromium at /usr/bin/chromium", "apt-get install chromium")
    from playwright.sync_api import sync_playwright

    mails = _all_mails(app, api)
    # and a branded client's, with a logo far wider than a phone and a support contact
    from tests.clients.test_branding import png

    branded = make_api_user(app, "wideco", display_name="WideCo")
    h = branded.headers
    assert branded.http.put(
        "/api/v1/branding",
        json={"brand_color": "#9f1239", "support_url": "https://wide.example/help",
              "support_email": "help@wide.example", "mail_from_name": "WideCo"},
        headers=h,
    ).status_code == 200  # fmt: skip
    resp = branded.http.put(
        "/api/v1/branding/logo", data=png(2000, 200), content_type="image/png", headers=h
    )
    assert resp.status_code == 200, resp.get_json()
    link = branded.minted("magic_link", "user-wide", email=ADDRESS)
    outbox = Path(app.config["LINKSVC"].mail_outbox)
    path = next(p for p in outbox.glob("*.eml") if link["jti"] in p.name)
    mails["branded"] = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert 'src="cid:' in parts(mails["branded"])[1]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            for width in (360, 1280):
                page = browser.new_page(viewport={"width": width, "height": 800})
                for kind, msg in mails.items():
                    page.set_content(parts(msg)[1])
                    scroll = page.evaluate("document.documentElement.scrollWidth")
                    assert scroll <= width, (kind, width, scroll)
                    box = page.locator("#button").bounding_box()
                    assert box is not None and box["width"] > 100, (kind, width)
                    card = page.locator(".card").bounding_box()
                    assert card is not None and card["width"] <= 600, (kind, width)
                    if kind == "branded":
                        logo = page.locator("#brand-logo").bounding_box()
                        assert logo is not None and 0 < logo["width"] <= min(width, 240)
                page.close()
        finally:
            browser.close()
