"""The development mail outbox, readable in the browser: ``GET /dev/outbox``.

`make run` sends mail to the outbox folder (no ``LINKSVC_SMTP_URL``); this page lists those
messages, newest first, with their links, so the journey "sign in, open the mail, press the
button" needs no mail client. It exists only with ``LINKSVC_ENV=development`` and the outbox
transport: the messages hold live links, so no production or test instance ever routes it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from email import policy
from email.parser import BytesParser
from pathlib import Path

from flask import Blueprint, Flask, Response

from linksvc.config import Settings
from linksvc.mail.delivery import OutboxTransport
from linksvc.services import services
from linksvc.web.html import render_page

bp = Blueprint("dev_outbox", __name__)

#: The newest messages shown; older ones stay in the folder.
MAX_MESSAGES = 50
_URL_RE = re.compile(r"https?://[^\s<>\"']+")


@dataclass(frozen=True)
class Mail:
    name: str
    to: str
    subject: str
    date: str
    body: str
    links: tuple[str, ...]


def read_outbox(directory: Path, limit: int = MAX_MESSAGES) -> list[Mail]:
    """The newest ``limit`` messages of the outbox folder (unreadable files are skipped)."""
    try:
        files = sorted(
            (p for p in directory.glob("*.eml") if p.is_file()),
            key=lambda p: (p.stat().st_mtime, p.name),
            reverse=True,
        )[:limit]
    except OSError:
        return []
    mails = []
    for path in files:
        try:
            with path.open("rb") as fh:
                msg = BytesParser(policy=policy.default).parse(fh)
            part = msg.get_body(preferencelist=("plain",))
            body = part.get_content() if part is not None else ""
        except (OSError, ValueError, LookupError):
            continue
        mails.append(
            Mail(
                name=path.name,
                to=str(msg.get("To", "")),
                subject=str(msg.get("Subject", "")),
                date=time.strftime("%H:%M:%S UTC", time.gmtime(path.stat().st_mtime)),
                body=body,
                links=tuple(dict.fromkeys(_URL_RE.findall(body))),
            )
        )
    return mails


@bp.get("/dev/outbox")
def outbox() -> Response:
    directory = services().dev_outbox
    assert directory is not None  # the blueprint is registered with it only
    return render_page("dev/outbox.html", mails=read_outbox(directory), directory=directory)


def init_app(app: Flask) -> None:
    settings: Settings = app.config["LINKSVC"]
    mailer = services(app).mailer
    transport = None if mailer is None else mailer.transport
    # Development only, and only for the outbox folder: never in production or tests.
    if settings.env != "development" or not isinstance(transport, OutboxTransport):
        return
    services(app).dev_outbox = transport.directory
    app.register_blueprint(bp)
