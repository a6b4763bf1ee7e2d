"""Mail delivery: when a mint carries ``email``, send the link to that address.

The message is rendered from ``templates/email/{purpose}.txt`` and ``.html`` (the link, the
application's display name, when it expires) and handed to one of two transports, chosen by
configuration: SMTP (``LINKSVC_SMTP_URL``: ``smtp://``, ``smtp+starttls://`` or
``smtps://``, credentials in the URL) or, with nothing configured, an outbox folder of
``.eml`` files (``LINKSVC_MAIL_OUTBOX``, default ``instance/outbox``).

The address is used to send and nowhere else: it is not stored in the ledger and never
logged (log lines carry the ``jti`` and a keyed hash of the address, enough to answer "was
it sent to this address?" for someone who has it). If sending fails, the link just minted
is revoked — nobody received it, and a link nobody received should not stay valid — and the
API answers ``502``.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import os
import re
import smtplib
import ssl
import time
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import css_inline
from flask import Flask, render_template
from PIL import Image

from linksvc import errors
from linksvc.clients import branding
from linksvc.clients.registry import Client
from linksvc.config import ConfigError, Settings
from linksvc.i18n import catalogs as i18n
from linksvc.i18n import locales
from linksvc.i18n.catalogs import N_
from linksvc.links.service import Minted
from linksvc.ops import metrics
from linksvc.services import services
from linksvc.store import db
from linksvc.web import branding as branding_pages

log = logging.getLogger("linksvc.mail")

SUBJECTS = {
    "magic_link": N_("Your sign-in link for %(app)s"),
    "password_reset": N_("Reset your password for %(app)s"),
    "download": N_("Your download from %(app)s"),
}
#: The first line a mail program shows beside the subject (hidden in the HTML body).
PREHEADERS = {
    "magic_link": N_("Sign in to %(app)s with one click. The link works once, for a few minutes."),
    "password_reset": N_(
        "Choose a new password for %(app)s. The link works once, for a few minutes."
    ),
    "download": N_("%(app)s sent you a file. The link works once, for a few minutes."),
}

# Deliberately plain: one local part, one domain with a dot, no spaces, quotes, angle
# brackets or control characters (nothing that could smuggle a header or a second recipient).
_ADDRESS_RE = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})+"
)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]+")

#: The HTML part's stylesheet goes into style attributes (what most mail programs keep);
#: the <style> tag stays for the dark-mode and phone rules, which cannot be inlined. Our own
#: templates reference nothing remote, and the inliner fetches nothing.
_INLINER = css_inline.CSSInliner(keep_style_tags=True, load_remote_stylesheets=False)
#: A link up to this long is shown as an address to copy; a JWT link (450 characters or so)
#: is not: the button and the code are the ways in, and a wrapped base64 blob helps nobody.
ADDRESS_SHOWN_UP_TO = 120
#: The box the logo is fitted into in the mail, in CSS pixels (narrower than a phone).
LOGO_HEIGHT = 48
LOGO_WIDTH = 240
#: The button's colour for a client without a brand colour (the pages' own blue).
DEFAULT_BUTTON = "#0b57d0"


class Transport(Protocol):
    def send(self, message: EmailMessage) -> None: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class SmtpTransport:
    """SMTP per ``smtp://``, ``smtp+starttls://`` (STARTTLS) or ``smtps://`` (implicit TLS)."""

    scheme: str
    host: str
    port: int
    username: str | None
    password: str | None
    timeout: float = 10.0

    @classmethod
    def from_url(cls, url: str) -> SmtpTransport:
        parts = urlsplit(url)
        default_port = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}[parts.scheme]
        return cls(
            scheme=parts.scheme,
            host=parts.hostname or "localhost",
            port=parts.port or default_port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    def describe(self) -> str:
        # Never the password.
        return f"{self.scheme}://{self.host}:{self.port}"

    def send(self, message: EmailMessage) -> None:
        context = ssl.create_default_context()
        smtp: smtplib.SMTP
        if self.scheme == "smtps":
            smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        with smtp:
            smtp.ehlo()
            if self.scheme == "smtp+starttls":
                smtp.starttls(context=context)
                smtp.ehlo()
            if self.username is not None:
                smtp.login(self.username, self.password or "")
            smtp.send_message(message)


@dataclass(frozen=True)
class OutboxTransport:
    """Write each message to ``directory`` as an ``.eml`` file (development; or a pickup folder)."""

    directory: Path

    def describe(self) -> str:
        return str(self.directory)

    def send(self, message: EmailMessage) -> None:
        # The message holds a live link: owner-only folder and files.
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{message['X-Linksvc-Jti']}.eml"
        tmp = self.directory / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(message.as_bytes())
        # Readers of the folder never see a half-written message.
        os.replace(tmp, self.directory / name)


def transport_for(settings: Settings) -> Transport:
    if settings.smtp_url:
        t = SmtpTransport.from_url(settings.smtp_url)
        if settings.is_production and t.username is not None and t.scheme == "smtp":
            raise ConfigError(
                "LINKSVC_SMTP_URL",
                "credentials need smtps:// or smtp+starttls://, not plain smtp://",
            )
        return t
    return OutboxTransport(settings.mail_outbox)


def _header_text(value: str) -> str:
    return _CONTROL_RE.sub(" ", value).strip()


class Mailer:
    """The mint API's mail hook: ``mailer(client, minted, address)``."""

    def __init__(self, settings: Settings, transport: Transport) -> None:
        self.settings = settings
        self.transport = transport

    def check_address(self, address: str) -> None:
        """Refuse an address we would not send to — before any link is minted for it."""
        if len(address) > 254 or not _ADDRESS_RE.fullmatch(address):
            raise errors.RequestRefused(
                "invalid_field",
                "email must be a plain e-mail address (name@example.com).",
                field="email",
            )

    def address_hash(self, address: str) -> str | None:
        """A keyed hash of the address for log lines: matchable by someone who has the address, not reversible."""
        key = self.settings.secret_key
        if key is None:
            return None
        return hmac.new(
            key, b"mail-address\0" + address.strip().lower().encode(), hashlib.sha256
        ).hexdigest()[:16]

    def render(
        self, client: Client, minted: Minted, address: str, *, code: str | None = None
    ) -> EmailMessage:
        """The message in the link's language (else the client's, else English), with its
        times in the link's zone, or as "in 5 minutes" and the UTC time without one."""
        rec = minted.record
        app_name = _header_text(client.display_name or client.name)
        domain = parseaddr(self.settings.mail_from)[1].rpartition("@")[2] or "localhost"
        logo = branding_pages.logo_of(client.id)
        # The logo travels in the message (multipart/related): nothing is fetched from a
        # server when the mail is opened, so opening it tells nobody anything.
        logo_cid = f"logo.{logo.sha256[:16]}@{domain}" if logo is not None else None
        locale = (
            locales.from_bcp47(rec.locale) or locales.from_bcp47(client.locale) or locales.DEFAULT
        )
        with i18n.using(locale):
            if rec.timezone:
                expiry = i18n.gettext(
                    "This link works once and expires at %(time)s.",
                    time=i18n.date_time(rec.exp, rec.timezone),
                )
            else:
                expiry = i18n.gettext(
                    "This link works once and expires %(relative)s, at %(time)s.",
                    relative=i18n.relative(rec.exp, rec.iat),
                    time=i18n.date_time(rec.exp),
                )
            subject = i18n.gettext(SUBJECTS[rec.purpose], app=app_name)
            context: dict[str, Any] = {
                "link": minted.url,
                "app_name": app_name,
                "purpose": rec.purpose,
                "subject": subject,
                "preheader": i18n.gettext(PREHEADERS[rec.purpose], app=app_name),
                "expiry": expiry,
                # A sign-in's code (linksvc.signins.flow), typed on the waiting page instead of the
                # link; the mail names that page's host, so a look-alike asking for it stands out.
                "code": code,
                "host": urlsplit(self.settings.base_url).netloc,
                "show_address": len(minted.url) <= ADDRESS_SHOWN_UP_TO,
            }
            context.update(self._brand(client, logo, logo_cid))
            text = render_template(f"email/{rec.purpose}.txt", **context)
            html = _INLINER.inline(render_template(f"email/{rec.purpose}.html", **context))
        msg = EmailMessage()
        msg["Subject"] = subject
        # The operator's address, the application's name: the name is checked for control
        # characters when it is set, and the header is encoded (RFC 2047) by the policy.
        sender = parseaddr(self.settings.mail_from)[1] or self.settings.mail_from
        msg["From"] = Address(
            display_name=_header_text(client.mail_from_name or app_name), addr_spec=sender
        )
        if client.support_email:
            msg["Reply-To"] = Address(addr_spec=client.support_email)
        msg["To"] = address
        msg["Date"] = formatdate(rec.iat, usegmt=True)
        msg["Message-ID"] = make_msgid(domain=domain)
        msg["X-Linksvc-Jti"] = rec.jti
        # A one-time link must not be followed by an auto-responder or archived by a list.
        msg["Auto-Submitted"] = "auto-generated"
        # Nor answered by Exchange's out-of-office and delivery reports (its own header).
        msg["X-Auto-Response-Suppress"] = "All"
        msg.set_content(text)
        msg.add_alternative(html, subtype="html")
        if logo is not None and logo_cid is not None:
            html_part = msg.get_body(("html",))
            assert html_part is not None
            maintype, _, subtype = logo.content_type.partition("/")
            html_part.add_related(
                logo.data,
                maintype=maintype,
                subtype=subtype,
                cid=f"<{logo_cid}>",
                disposition="inline",
                filename=f"logo.{logo.extension}",
            )
        # After the parts exist: making the message multipart moves Content-* headers into them.
        msg["Content-Language"] = locales.to_bcp47(locale)
        return msg

    @staticmethod
    def _brand(client: Client, logo: branding.Logo | None, logo_cid: str | None) -> dict[str, Any]:
        """What the mail shows of the client's face: its logo (by ``cid:``), button colour and
        support contact."""
        width = height = None
        if logo is not None:
            with Image.open(io.BytesIO(logo.data)) as im:  # re-encoded by us: header only
                w, h = im.size
            # Fitted into LOGO_WIDTH × LOGO_HEIGHT: mail programs (Outlook) size by attributes.
            scale = min(LOGO_HEIGHT / h, LOGO_WIDTH / w)
            width, height = max(1, round(w * scale)), max(1, round(h * scale))
        color = client.brand_color
        return {
            "logo_cid": logo_cid,
            "logo_width": width,
            "logo_height": height,
            "brand_color": color or DEFAULT_BUTTON,
            "button_text": branding.button_text(color)[0] if color else "#ffffff",
            "support_url": client.support_url,
            "support_email": client.support_email,
        }

    def __call__(
        self, client: Client, minted: Minted, address: str, *, code: str | None = None
    ) -> None:
        self.check_address(address)
        jti = minted.record.jti
        extra = {
            "jti": jti,
            "client": client.id,
            "transport": type(self.transport).__name__,
            "to_hash": self.address_hash(address),
        }
        try:
            self.transport.send(self.render(client, minted, address, code=code))
        except (smtplib.SMTPException, OSError, UnicodeError) as exc:
            metrics.MAIL.labels("failed").inc()
            # The exception text can quote the recipient; log only its type and SMTP code.
            log.warning(
                "mail not sent; link revoked",
                extra={
                    **extra,
                    "outcome": "mail_failed",
                    "error": type(exc).__name__,
                    "smtp_code": getattr(exc, "smtp_code", None),
                },
            )
            self._revoke(client, jti)
            raise errors.RequestRefused(
                "mail_failed",
                "The link could not be sent by mail, so it was revoked; try again later.",
                kind="bad_gateway",
                field="email",
            ) from None
        metrics.MAIL.labels("sent").inc()
        log.info("mail sent", extra={**extra, "outcome": "mailed"})
        self._sent(client, minted)

    def _sent(self, client: Client, minted: Minted) -> None:
        """``link.sent`` for webhooks: the SMTP server (or the outbox folder) took it. Its own
        transaction: no ledger row changes when a mail goes out. Best effort: the mail is gone."""
        svc = services().links
        rec = minted.record
        try:
            sink = svc.sinks.get(svc.engine, client.id)
            if sink is not None:
                with db.write(svc.engine) as conn:
                    transport = "smtp" if self.settings.smtp_url else "outbox"
                    sink.emit_link(
                        conn, "link.sent", rec, now=svc.now(), facts={"transport": transport}
                    )
        except errors.ServiceUnavailable:
            log.warning("link.sent not recorded", extra={"jti": rec.jti, "client": client.id})

    def _revoke(self, client: Client, jti: str) -> None:
        svc = services().links
        try:
            svc.revoke(client, jti)
        except (
            errors.LinkError,
            errors.ServiceUnavailable,
        ) as exc:  # pragma: no cover - database trouble
            log.error(
                "could not revoke unsent link",
                extra={"jti": jti, "client": client.id, "error": type(exc).__name__},
            )


def init_app(app: Flask) -> None:
    settings: Settings = app.config["LINKSVC"]
    transport = transport_for(settings)
    if settings.is_production and isinstance(transport, OutboxTransport):
        log.warning(
            "LINKSVC_SMTP_URL is not set: mail goes to the outbox folder",
            extra={"outbox": str(transport.directory)},
        )
    services(app).mailer = Mailer(settings, transport)
