"""Rendering end-user HTML pages: one template family, one place mapping failures to pages.

Used by every blueprint that answers a browser (sign-in / reset pages, downloads).
"""

from __future__ import annotations

from typing import Any

from flask import Response, render_template

from . import errors
from .http import REASON_STATUS

#: What the end user is told, per reason. Never whether an account exists.
FAILURE_COPY: dict[str, tuple[str, str]] = {
    "expired": ("This link has expired", "Links work for a few minutes only. Request a new link."),
    "used": ("This link has already been used", "Each link works once. If it was not you, request a new link."),
    "revoked": ("This link has been cancelled", "It can no longer be used. Request a new link."),
    "superseded": ("A newer link was sent", "Only the most recent link works. Use the newest e-mail, or request a new link."),
    "invalid": ("This link is not valid", "It may be incomplete or mistyped. Copy the whole link, or request a new link."),
    "unavailable": ("We could not complete this right now", "Please try again in a moment."),
    "rate_limited": ("Too many attempts", "Please wait a little and try again."),
    "not_found": ("Page not found", "Check the address, or request a new link."),
}


def page_reason(exc: errors.LinkError) -> str:
    """The coarse reason shown on a page (the precise one goes to logs and the API)."""
    return exc.reason if exc.reason in ("expired", "used", "revoked", "superseded") else "invalid"


def render_page(template: str, status: int = 200, **context: Any) -> Response:
    resp = Response(render_template(template, **context), status=status, mimetype="text/html")
    return resp


def render_failure(reason: str, status: int | None = None) -> Response:
    title, advice = FAILURE_COPY.get(reason, FAILURE_COPY["invalid"])
    if status is None:
        status = REASON_STATUS.get(reason, 400 if reason == "invalid" else 410)
    return render_page("failure.html", status, reason=reason, title=title, advice=advice)


def render_link_error(exc: errors.LinkError) -> Response:
    reason = page_reason(exc)
    return render_failure(reason, REASON_STATUS.get(reason, 400))
