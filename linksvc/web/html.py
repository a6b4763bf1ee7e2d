"""Rendering end-user HTML pages: one template family, one place mapping failures to pages.

Used by every blueprint that answers a browser (sign-in / reset pages, downloads, the
app-wide 404). Pages never say whether an account exists, never show a stack trace, and
carry no script at all.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, g, render_template

from linksvc import errors
from linksvc.clients.registry import Client
from linksvc.i18n import catalogs as i18n
from linksvc.i18n.catalogs import N_
from linksvc.i18n.catalogs import gettext as _
from linksvc.links import ledger
from linksvc.services import services
from linksvc.store import db
from linksvc.web import branding as branding_pages
from linksvc.web.http import REASON_STATUS

log = logging.getLogger("linksvc.pages")

#: What the end user is told, per reason: a title and what to do next. Never whether an
#: account exists, never the precise token fault (that goes to logs and the API). English
#: source text, translated where it is shown (:func:`render_failure`).
FAILURE_COPY: dict[str, tuple[str, str]] = {
    "expired": (
        N_("This link has expired"),
        N_("Links work for a few minutes only. Request a new link."),
    ),
    "used": (
        N_("This link has already been used"),
        N_("Each link works once. If it was not you, request a new link."),
    ),
    "revoked": (
        N_("This link has been cancelled"),
        N_("It can no longer be used. Request a new link."),
    ),
    "superseded": (
        N_("A newer link was sent"),
        N_("Only the most recent link works. Use the newest e-mail, or request a new link."),
    ),
    "invalid": (
        N_("This link is not valid"),
        N_("It may be incomplete or mistyped. Copy the whole link, or request a new link."),
    ),
    "form_invalid": (
        N_("We could not confirm this request"),
        N_(
            "Open the link from your e-mail again, in this browser, and press the button on "
            "that page. This page needs cookies to be allowed."
        ),
    ),
    "unavailable": (
        N_("We could not complete this right now"),
        N_("Please try again in a moment."),
    ),
    "error": (
        N_("Something went wrong on our side"),
        N_("Please try again in a moment. If it keeps happening, request a new link."),
    ),
    "rate_limited": (N_("Too many attempts"), N_("Please wait a little and try again.")),
    "not_found": (N_("Page not found"), N_("Check the address, or request a new link.")),
    "method_not_allowed": (
        N_("This page cannot do that"),
        N_("Open the link from your e-mail again."),
    ),
    "bad_request": (
        N_("We could not read this request"),
        N_("Open the link from your e-mail again."),
    ),
}

#: Status of each page reason that is not a link-state reason of :data:`REASON_STATUS`.
PAGE_STATUS: dict[str, int] = {
    "invalid": 400,
    "form_invalid": 400,
    "unavailable": 503,
    "error": 500,
    "rate_limited": 429,
    "not_found": 404,
    "method_not_allowed": 405,
    "bad_request": 400,
}

#: The page CSP; ``form-action`` is widened per page (see :func:`csp`).
_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action {form_action}; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def csp(*form_origins: str) -> str:
    """A strict Content-Security-Policy allowing forms to post here and, because Chrome
    checks ``form-action`` against the redirect that follows a form post, to ``form_origins``."""
    return _CSP.format(form_action=" ".join(("'self'", *form_origins)))


def form_origin(uri: str | None) -> str | None:
    """``scheme://host[:port]`` of a registered redirect URI, for a page's form-action
    (:func:`csp`); ``None`` for none, or for one that is not plain http(s) to a host."""
    if not uri:
        return None
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not re.fullmatch(
        r"[A-Za-z0-9.\-\[\]:]+", parts.netloc or ""
    ):
        return None
    return f"{parts.scheme}://{parts.netloc.lower()}"


def page_reason(exc: errors.LinkError) -> str:
    """The coarse reason shown on a page (the precise one goes to logs and the API)."""
    return exc.reason if exc.reason in ("expired", "used", "revoked", "superseded") else "invalid"


def render_page(
    template: str, status: int = 200, *, content_security_policy: str | None = None, **context: Any
) -> Response:
    resp = Response(render_template(template, **context), status=status, mimetype="text/html")
    resp.headers["Content-Security-Policy"] = content_security_policy or csp()
    return resp


def clock(ts: int, timezone: str | None = None) -> str:
    """``14:02 UTC`` (in the page's language, and the link's zone when it has one): links
    live minutes, so the time of day says enough."""
    return i18n.clock(ts, timezone)


def ago(ts: int, now: int) -> str:
    """How long ago ``ts`` was, in words: "just now", "3 minutes ago", "2 hours ago"."""
    return i18n.ago(ts, now)


def lasts(seconds: int) -> str:
    """A duration in words: "5 minutes", "45 seconds"."""
    return i18n.duration(seconds)


#: What a failure page says of a genuine link, per purpose and end: whole sentences (a
#: noun spliced into a sentence cannot agree with it in most languages).
#: ``%(app)s`` is the application, ``%(time)s`` a time of day, ``%(ago)s`` "3 minutes ago".
LINK_WHAT: dict[tuple[str, str], str] = {
    ("magic_link", "expired"): N_("This sign-in link for %(app)s expired at %(time)s, %(ago)s."),
    ("magic_link", "for"): N_("This sign-in link was for %(app)s."),
    ("magic_link", "used"): N_("This sign-in link for %(app)s was used %(ago)s."),
    ("magic_link", "revoked"): N_("%(app)s cancelled this sign-in link %(ago)s."),
    ("magic_link", "superseded"): N_(
        "%(app)s sent a newer sign-in link %(ago)s; only the most recent one works."
    ),
    ("password_reset", "expired"): N_(
        "This password-reset link for %(app)s expired at %(time)s, %(ago)s."
    ),
    ("password_reset", "for"): N_("This password-reset link was for %(app)s."),
    ("password_reset", "used"): N_("This password-reset link for %(app)s was used %(ago)s."),
    ("password_reset", "revoked"): N_("%(app)s cancelled this password-reset link %(ago)s."),
    ("password_reset", "superseded"): N_(
        "%(app)s sent a newer password-reset link %(ago)s; only the most recent one works."
    ),
    ("download", "expired"): N_("This download link for %(app)s expired at %(time)s, %(ago)s."),
    ("download", "for"): N_("This download link was for %(app)s."),
    ("download", "used"): N_("This download link for %(app)s was used %(ago)s."),
    ("download", "revoked"): N_("%(app)s cancelled this download link %(ago)s."),
    ("download", "superseded"): N_(
        "%(app)s sent a newer download link %(ago)s; only the most recent one works."
    ),
}


def origin(uri: str | None) -> str | None:
    """``scheme://host[:port]/`` of a registered URI: where "Return to the application" goes
    (the origin only: a redirect URI's path expects a code and would show the user an error)."""
    if not uri:
        return None
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc.lower()}/"


@dataclass(frozen=True)
class Onward:
    """Where an end page sends the user next: the client's restart URI ("Request a new
    link"), and the application itself (the origin of the link's, else the client's first,
    registered redirect URI, else of its restart URI)."""

    app_name: str
    restart_uri: str | None
    app_uri: str | None


def onward(client: Client, redirect_uri: str | None = None) -> Onward:
    candidates = (redirect_uri, *client.redirect_uris, client.restart_uri)
    app_uri = next((o for o in map(origin, candidates) if o), None)
    return Onward(client.display_name, client.restart_uri, app_uri)


@dataclass(frozen=True)
class LinkFacts:
    """What a failure page may say about a genuine link: whose it is and when it failed."""

    app_name: str
    restart_uri: str | None
    what: str  # e.g. "This sign-in link for Acme was used 3 minutes ago."
    app_uri: str | None = None


def link_facts(exc: errors.LinkError, now: int) -> LinkFacts | None:
    """The facts of the link behind ``exc``, for its page — only for a token that passed the
    signature check and whose ledger row names an enabled client (a forged or unknown token
    gets the generic page: nothing it claims is repeated back). Best effort: without the
    database the page is generic."""
    reason = page_reason(exc)
    if reason == "invalid" or exc.jti is None:
        return None
    svc = services().links
    try:
        with db.read(svc.engine) as conn:
            rec = ledger.get(conn, exc.jti)
        client = svc.client(rec.client_id) if rec is not None else None
    except errors.ServiceUnavailable:
        return None
    if rec is None or client is None or client.disabled:
        return None
    # The page speaks the link's language (else the client's, else the browser's).
    i18n.use(rec.locale, client.locale)
    branding_pages.use(client)
    app = client.display_name
    at = exc.facts.get("at") or rec.state_at
    expired_at = exc.facts.get("expired_at") or rec.exp
    purpose = rec.purpose if rec.purpose in ("magic_link", "password_reset") else "download"
    end = reason if reason == "expired" or at is not None else "for"
    when = expired_at if reason == "expired" else (at or now)
    what = i18n.gettext(
        LINK_WHAT[(purpose, end)],
        app=app,
        time=clock(when, rec.timezone),
        ago=ago(when, now),
    )
    return LinkFacts(app, client.restart_uri, what, onward(client, rec.redirect_uri).app_uri)


def render_failure(
    reason: str, status: int | None = None, *, facts: LinkFacts | None = None
) -> Response:
    """The failure page for ``reason`` (a key of :data:`FAILURE_COPY`), with its status;
    with ``facts``, it names the application, says when, and links to its restart URI."""
    title, advice = FAILURE_COPY.get(reason, FAILURE_COPY["invalid"])
    if status is None:
        status = REASON_STATUS.get(reason) or PAGE_STATUS.get(reason, 400)
    if facts is not None:
        advice = FAILURE_ADVICE.get(reason, advice)
    ref = support_ref()
    # The line a support desk finds with the reference the user reads out: the request id
    # (whose short form the page shows) and the precise reason the page does not show.
    log.info(
        "failure page",
        extra={"outcome": "failure_page", "reason": reason, "status": status, "support_ref": ref},
    )
    return render_page(
        "failure.html",
        status,
        reason=reason,
        title=_(title),
        advice=_(advice),
        facts=facts,
        support_ref=ref,
    )


def support_ref() -> str:
    """The short support reference of this request: the start of its request id (which every
    log line of the request carries), short enough to read out over the phone. With tracing
    on (linksvc.ops.tracing), its trace id: what every log line and span of the request carries."""
    trace_id = g.get("trace_id")
    if trace_id:
        return str(trace_id)
    rid = str(g.get("request_id") or "")
    return rid[:SUPPORT_REF_LENGTH] or "-"


#: Characters of the request id shown on failure pages: 8 hex digits tell apart the
#: requests of one link and one day many times over, and are searched as a prefix.
SUPPORT_REF_LENGTH = 8


#: The advice under a failure that names its application (the "what" says which and when).
FAILURE_ADVICE = {
    "expired": N_("Links work for a few minutes only. Request a new link."),
    "used": N_("Each link works once. If it was not you, request a new link."),
    "revoked": N_("It can no longer be used. Request a new link."),
    "superseded": N_("Use the newest e-mail, or request a new link."),
}


def render_link_error(exc: errors.LinkError) -> Response:
    reason = page_reason(exc)
    now = services().links.now()
    return render_failure(reason, REASON_STATUS.get(reason, 400), facts=link_facts(exc, now))


def _service_unavailable_page(exc: errors.ServiceUnavailable) -> Response:
    resp = render_failure("unavailable", 503)
    resp.headers["Retry-After"] = "5"
    return resp


def register_error_pages(bp: Blueprint) -> None:
    """The one mapping from link failures and outages to pages, for every browser blueprint."""
    bp.register_error_handler(errors.LinkError, render_link_error)
    bp.register_error_handler(errors.ServiceUnavailable, _service_unavailable_page)
