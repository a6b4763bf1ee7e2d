"""The application's services, typed: one container built by :func:`linksvc.create_app`.

Each concern's ``init_app`` fills in what it owns (the mailer, the rate limits, the page hooks);
a view reaches them through :func:`services`. A field that a configuration can leave out is
``None`` when it is absent (no development outbox outside development, no tracing hook unless
tracing is on).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app

if TYPE_CHECKING:
    from flask import Response
    from prometheus_client.registry import Collector
    from werkzeug.exceptions import HTTPException

    from linksvc.clients.branding import LogoCache
    from linksvc.downloads.storage import LocalStorage, S3Storage
    from linksvc.i18n.catalogs import Catalogs
    from linksvc.links.service import LinkService, Verified
    from linksvc.links.tokens import Claims
    from linksvc.mail.delivery import Mailer
    from linksvc.signins.flow import SignIns
    from linksvc.web.ratelimit import RateLimits

#: The one key of ``app.extensions`` that linksvc uses.
KEY = "linksvc"


@dataclass(eq=False)
class Services:
    """What the views, hooks and commands of one app share."""

    links: LinkService
    storage: LocalStorage | S3Storage
    signins: SignIns
    logos: LogoCache
    catalogs: Catalogs
    #: linksvc.mail.delivery: every app has one; ``None`` only before mail.init_app has run.
    mailer: Mailer | None = None
    #: linksvc.web.ratelimit: the limits, and the check the mint views call with a parsed body.
    ratelimit: RateLimits | None = None
    mint_guard: Callable[[Any, str, str, str | None], None] | None = None
    #: linksvc.web.pages: the HTML page for an HTTP error on a browser path.
    html_http_error: Callable[[HTTPException], Response] | None = None
    #: linksvc.signins.pages: the hooks of ``GET``/``POST /l/<token>`` for a sign-in's link.
    sign_in_view: Callable[[Verified], Response | None] | None = None
    sign_in_press: Callable[[Claims, int], Response | None] | None = None
    #: linksvc.mail.devoutbox: the outbox folder shown at /dev/outbox (development only).
    dev_outbox: Path | None = None
    #: linksvc.ops.otel: records an unhandled error on the request's span (tracing on only).
    trace_error: Callable[[BaseException], None] | None = None
    #: linksvc.ops.metrics: more collectors for a scrape (e.g. the webhook backlog).
    collectors: list[Callable[[Flask], Collector]] = field(default_factory=list)
    #: linksvc.web.openapi: the document, built at its first request.
    openapi: dict[str, Any] | None = None


def services(app: Flask | None = None) -> Services:
    """The services of ``app``, or of the current app."""
    found = (current_app if app is None else app).extensions[KEY]
    if not isinstance(found, Services):
        raise TypeError(f"app.extensions[{KEY!r}] is not linksvc's Services")
    return found
