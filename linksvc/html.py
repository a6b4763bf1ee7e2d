"""Rendering end-user HTML pages: one template family, one place mapping failures to pages.

Used by every blueprint that answers a browser (sign-in / reset pages, downloads, the
app-wide 404). Pages never say whether an account exists, never show a stack trace, and
carry no script at all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app, render_template

from . import db, errors, ledger
from .http import REASON_STATUS

#: What the end user is told, per reason: a title and what to do next. Never whether an
#: account exists, never the precise token fault (that goes to logs and the API).
FAILURE_COPY: dict[str, tuple[str, str]] = {
    "expired": ("This link has expired", "Links work for a few minutes only. Request a new link."),
    "used": (
        "This link has already been used",
        "Each link works once. If it was not you, request a new link.",
    ),
    "revoked": ("This link has been cancelled", "It can no longer be used. Request a new link."),
    "superseded": (
        "A newer link was sent",
        "Only the most recent link works. Use the newest e-mail, or request a new link.",
    ),
    "invalid": (
        "This link is not valid",
        "It may be incomplete or mistyped. Copy the whole link, or request a new link.",
    ),
    "form_invalid": (
        "We could not confirm this request",
        "Open the link from your e-mail again, in this browser, and press the button on that page. "
        "This page needs cookies to be allowed.",
    ),
    "unavailable": ("We could not complete this right now", "Please try again in a moment."),
    "error": (
        "Something went wrong on our side",
        "Please try again in a moment. If it keeps happening, request a new link.",
    ),
    "rate_limited": ("Too many attempts", "Please wait a little and try again."),
    "not_found": ("Page not found", "Check the address, or request a new link."),
    "method_not_allowed": ("This page cannot do that", "Open the link from your e-mail again."),
    "bad_request": ("We could not read this request", "Open the link from your e-mail again."),
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


def page_reason(exc: errors.LinkError) -> str:
    """The coarse reason shown on a page (the precise one goes to logs and the API)."""
    return exc.reason if exc.reason in ("expired", "used", "revoked", "superseded") else "invalid"


def render_page(
    template: str, status: int = 200, *, content_security_policy: str | None = None, **context: Any
) -> Response:
    resp = Response(render_template(template, **context), status=status, mimetype="text/html")
    resp.headers["Content-Security-Policy"] = content_security_policy or csp()
    return resp


#: What a link is called on its failure page, by purpose.
PURPOSE_NOUN = {
    "magic_link": "sign-in link",
    "password_reset": "password-reset link",
    "download": "download link",
}


def clock(ts: int) -> str:
    """``14:02 UTC``: links live minutes, so the time of day says enough."""
    return time.strftime("%H:%M UTC", time.gmtime(ts))


def ago(ts: int, now: int) -> str:
    """How long ago ``ts`` was, in words: "just now", "3 minutes ago", "2 hours ago"."""
    seconds = max(0, now - ts)
    if seconds < 60:
        return "just now" if seconds < 10 else "less than a minute ago"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"  # pragma: no cover - unreachable


def lasts(seconds: int) -> str:
    """A duration in words: "5 minutes", "45 seconds"."""
    if seconds >= 90:
        minutes = round(seconds / 60)
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


@dataclass(frozen=True)
class LinkFacts:
    """What a failure page may say about a genuine link: whose it is and when it failed."""

    app_name: str
    noun: str
    restart_uri: str | None
    what: str  # e.g. "This sign-in link for Acme was used 3 minutes ago."


def link_facts(exc: errors.LinkError, now: int) -> LinkFacts | None:
    """The facts of the link behind ``exc``, for its page — only for a token that passed the
    signature check and whose ledger row names an enabled client (a forged or unknown token
    gets the generic page: nothing it claims is repeated back). Best effort: without the
    database the page is generic."""
    reason = page_reason(exc)
    if reason == "invalid" or exc.jti is None:
        return None
    svc = current_app.extensions["linksvc"]
    try:
        with db.read(svc.engine) as conn:
            rec = ledger.get(conn, exc.jti)
        client = svc.client(rec.client_id) if rec is not None else None
    except errors.ServiceUnavailable:
        return None
    if rec is None or client is None or client.disabled:
        return None
    app, noun = client.display_name, PURPOSE_NOUN.get(rec.purpose, "link")
    at = exc.facts.get("at") or rec.state_at
    expired_at = exc.facts.get("expired_at") or rec.exp
    if reason == "expired":
        what = f"This {noun} for {app} expired at {clock(expired_at)}, {ago(expired_at, now)}."
    elif at is None:
        what = f"This {noun} was for {app}."
    elif reason == "used":
        what = f"This {noun} for {app} was used {ago(at, now)}."
    elif reason == "revoked":
        what = f"{app} cancelled this {noun} {ago(at, now)}."
    else:
        what = f"{app} sent a newer {noun} {ago(at, now)}; only the most recent one works."
    return LinkFacts(app, noun, client.restart_uri, what)


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
    return render_page(
        "failure.html", status, reason=reason, title=title, advice=advice, facts=facts
    )


#: The advice under a failure that names its application (the "what" says which and when).
FAILURE_ADVICE = {
    "expired": "Links work for a few minutes only. Request a new link.",
    "used": "Each link works once. If it was not you, request a new link.",
    "revoked": "It can no longer be used. Request a new link.",
    "superseded": "Use the newest e-mail, or request a new link.",
}


def render_link_error(exc: errors.LinkError) -> Response:
    reason = page_reason(exc)
    now = current_app.extensions["linksvc"].now()
    return render_failure(reason, REASON_STATUS.get(reason, 400), facts=link_facts(exc, now))


def _service_unavailable_page(exc: errors.ServiceUnavailable) -> Response:
    resp = render_failure("unavailable", 503)
    resp.headers["Retry-After"] = "5"
    return resp


def register_error_pages(bp: Blueprint) -> None:
    """The one mapping from link failures and outages to pages, for every browser blueprint."""
    bp.register_error_handler(errors.LinkError, render_link_error)
    bp.register_error_handler(errors.ServiceUnavailable, _service_unavailable_page)
