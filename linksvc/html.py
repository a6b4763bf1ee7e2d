"""Rendering end-user HTML pages: one template family, one place mapping failures to pages.

Used by every blueprint that answers a browser (sign-in / reset pages, downloads, the
app-wide 404). Pages never say whether an account exists, never show a stack trace, and
carry no script at all.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, render_template

from . import errors
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


def render_failure(reason: str, status: int | None = None) -> Response:
    """The failure page for ``reason`` (a key of :data:`FAILURE_COPY`), with its status."""
    title, advice = FAILURE_COPY.get(reason, FAILURE_COPY["invalid"])
    if status is None:
        status = REASON_STATUS.get(reason) or PAGE_STATUS.get(reason, 400)
    return render_page("failure.html", status, reason=reason, title=title, advice=advice)


def render_link_error(exc: errors.LinkError) -> Response:
    reason = page_reason(exc)
    return render_failure(reason, REASON_STATUS.get(reason, 400))


def _service_unavailable_page(exc: errors.ServiceUnavailable) -> Response:
    resp = render_failure("unavailable", 503)
    resp.headers["Retry-After"] = "5"
    return resp


def register_error_pages(bp: Blueprint) -> None:
    """The one mapping from link failures and outages to pages, for every browser blueprint."""
    bp.register_error_handler(errors.LinkError, render_link_error)
    bp.register_error_handler(errors.ServiceUnavailable, _service_unavailable_page)
