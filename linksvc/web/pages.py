"""End-user pages for sign-in and reset links: ``GET /l/<token>`` confirms, ``POST`` completes.

Why GET never consumes: mail scanners, link previews and browsers' prefetchers open links
before the user does. Anything that only *fetches* the link sees the confirmation page and
changes nothing (it records a capped "viewed" event). Only the button — a same-site form
POST carrying a form token bound to this link and to this browser — consumes the link.

The press hands the result to the application as a one-time code (:mod:`linksvc.links.codes`)
on the redirect URI registered when the link was minted; nothing in the request can
choose the target.

Per-IP rate limits on these paths are applied by :mod:`linksvc.web.ratelimit` (a
``before_request`` on ``/l/``); this module adds none of its own.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Callable, Mapping
from typing import Any, cast
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, redirect, request
from itsdangerous import BadData, SignatureExpired, TimestampSigner, URLSafeTimedSerializer
from werkzeug.exceptions import HTTPException

from linksvc import errors
from linksvc.clients.registry import Client
from linksvc.config import PAGE_PURPOSES
from linksvc.i18n import catalogs as i18n
from linksvc.i18n.catalogs import N_
from linksvc.i18n.catalogs import gettext as _
from linksvc.links import codes, ledger, scanners
from linksvc.links.service import LinkService, Verified
from linksvc.services import services
from linksvc.web import branding as branding_pages
from linksvc.web.html import (
    clock,
    csp,
    form_origin,
    lasts,
    onward,
    register_error_pages,
    render_failure,
    render_page,
)

log = logging.getLogger("linksvc.pages")

bp = Blueprint("pages", __name__)

#: The browser nonce: binds the form to this browser (login CSRF) and makes a double
#: click reach the same completion. SameSite=Strict: never sent on a cross-site post.
NONCE_COOKIE = "linksvc_press"
#: Its name where the base URL is https: a ``__Host-`` cookie is Secure, host-only and
#: ``Path=/``, so a sibling subdomain or a plain-HTTP page cannot plant one (login CSRF).
HOST_NONCE_COOKIE = "__Host-" + NONCE_COOKIE


def nonce_cookie(svc: LinkService) -> tuple[str, str]:
    """The nonce cookie's name and path for this deployment."""
    if svc.settings.base_url.startswith("https://"):
        return HOST_NONCE_COOKIE, "/"
    return NONCE_COOKIE, "/l/"


NONCE_RE = re.compile(r"[A-Za-z0-9_-]{43}")
#: How long a confirmation page's form stays valid. Longer than any link lives would be
#: pointless; shorter would make a user who paused on the page press twice.
FORM_MAX_AGE = 600
#: A scanner hammering a link must not grow its history: only the first views are noted.
MAX_VIEW_EVENTS = 5

ACTIONS = {
    "magic_link": (
        N_("Sign in to %(app)s"),
        N_("You asked to sign in to %(app)s. Press the button to continue."),
        N_("Sign in to %(app)s"),
    ),
    "password_reset": (
        N_("Reset your %(app)s password"),
        N_("You asked to reset your %(app)s password. Press the button to choose a new one."),
        N_("Reset my password"),
    ),
}


class FormRefused(Exception):
    """The form post did not come from this link's page in this browser."""

    def __init__(self, why: str, *, expired: bool = False) -> None:
        super().__init__(why)
        self.why = why
        self.expired = expired


def service() -> LinkService:
    return services().links


class _ClockSigner(TimestampSigner):
    """itsdangerous' timestamp signer on the service clock: time is a parameter here too."""

    def __init__(self, *args: Any, clock: Callable[[], float], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clock = clock

    def get_timestamp(self) -> int:
        return int(self._clock())


def _serializer(svc: LinkService) -> URLSafeTimedSerializer:
    """Form tokens: ``{"j": jti, "n": hash of the browser nonce}``, signed and timestamped."""
    if svc.settings.secret_key is None:
        raise errors.NotInitialised("LINKSVC_SECRET_KEY")
    return URLSafeTimedSerializer(
        svc.settings.secret_key,
        salt="linksvc.pages.confirm",
        signer=_ClockSigner,
        signer_kwargs={"clock": svc.clock},
    )


def _actor(svc: LinkService) -> str | None:
    """A keyed hash of the client address: tells requests apart in a link's history, names nobody."""
    addr = request.remote_addr
    if not addr or svc.settings.secret_key is None:
        return None
    return hmac.new(svc.settings.secret_key, b"actor|" + addr.encode(), hashlib.sha256).hexdigest()[
        :16
    ]


def _client_of(svc: LinkService, rec: ledger.LinkRecord) -> Client:
    client = svc.client(rec.client_id)
    if client is None or client.disabled:
        # A disabled application's links stop working on the pages as they do on the API.
        log.info(
            "link refused",
            extra={
                "jti": rec.jti,
                "client": rec.client_id,
                "outcome": "rejected",
                "reason": "client_disabled",
                "via": "page",
            },
        )
        raise errors.UnknownLink(jti=rec.jti)
    return client


def with_code(uri: str, code: str) -> str:
    """``uri`` with ``code=…`` added to its query. The registered query is kept byte for byte
    (re-encoding it could change what the application reads); only a ``code`` member is replaced."""
    parts = urlsplit(uri)
    kept = (
        [p for p in parts.query.split("&") if p and p.split("=", 1)[0] != "code"]
        if parts.query
        else []
    )
    query = "&".join([*kept, f"code={code}"])
    return parts._replace(query=query, fragment="").geturl()


def _nonce() -> tuple[str, bool]:
    """This browser's nonce, and whether it is new (and must be set)."""
    value = request.cookies.get(nonce_cookie(service())[0], "")
    if NONCE_RE.fullmatch(value):
        return value, False
    return secrets.token_urlsafe(32), True


def _note_view(svc: LinkService, rec: ledger.LinkRecord, now: int) -> None:
    """Record a "viewed" event (and ``link.viewed`` for webhooks), for the first few views
    only (:func:`linksvc.links.ledger.note_view`)."""

    def facts(earlier_views: int) -> dict[str, Any]:
        found = scanners.signals(
            method=request.method,
            headers=cast(Mapping[str, str], request.headers),
            has_cookie=bool(request.cookies.get(nonce_cookie(svc)[0])),
            earlier_views=earlier_views,
        )
        return {"suspected_scanner": bool(found), "signals": found}

    ledger.note_view(
        svc.engine,
        rec,
        now,
        via="page",
        actor=_actor(svc),
        limit=MAX_VIEW_EVENTS,
        sinks=svc.sinks,
        facts=facts,
    )


def _confirmation(
    svc: LinkService, v: Verified, *, status: int = 200, notice: str | None = None
) -> Response:
    client = _client_of(svc, v.record)
    i18n.use(v.record.locale, client.locale)
    branding_pages.use(client)
    nonce, new = _nonce()
    form_token = _serializer(svc).dumps({"j": v.record.jti, "n": codes.completion_hash(nonce)})
    title, explanation, button = (_(s, app=client.display_name) for s in ACTIONS[v.record.purpose])
    origin = form_origin(v.record.redirect_uri)
    left = max(0, v.record.exp - svc.now())
    resp = render_page(
        "confirm.html",
        status,
        content_security_policy=csp(*([origin] if origin else [])),
        title=title,
        explanation=explanation,
        button=button,
        form_token=form_token,
        notice=_(notice) if notice else None,
        valid_until=_(
            "This link works until %(time)s (%(left)s from now), once.",
            time=clock(v.record.exp, v.record.timezone),
            left=lasts(left),
        ),
    )
    if new:
        name, path = nonce_cookie(svc)
        resp.set_cookie(
            name,
            nonce,
            max_age=3600,
            path=path,
            httponly=True,
            samesite="Strict",
            secure=svc.settings.base_url.startswith("https://"),
        )
    return resp


def _check_form(svc: LinkService, jti: str, now: int) -> str:
    """The browser's nonce, if the posted form token was made for this link and this browser."""
    nonce = request.cookies.get(nonce_cookie(svc)[0], "")
    token = request.form.get("csrf", "")
    # Browsers say where a request comes from; a cross-site post is refused outright.
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        raise FormRefused("cross_site")
    if not token or len(token) > 512:
        raise FormRefused("missing_form_token")
    expired = False
    try:
        payload = _serializer(svc).loads(token, max_age=FORM_MAX_AGE)
    except SignatureExpired as exc:
        # Genuine but old: still checked against link and browser before the page is shown again.
        try:
            payload, expired = _serializer(svc).load_payload(cast(bytes, exc.payload)), True
        except BadData:  # pragma: no cover - the signature was good
            raise FormRefused("bad_form_token") from None
    except BadData:
        raise FormRefused("bad_form_token") from None
    if not isinstance(payload, dict) or payload.get("j") != jti:
        raise FormRefused("form_for_other_link")
    if not NONCE_RE.fullmatch(nonce) or not hmac.compare_digest(
        str(payload.get("n", "")), codes.completion_hash(nonce)
    ):
        raise FormRefused("form_for_other_browser")
    if expired:
        raise FormRefused("form_expired", expired=True)
    return nonce


@bp.get("/l/<path:token>")
def confirm(token: str) -> Response:
    """The confirmation page (GET and HEAD). Consumes nothing."""
    svc = service()
    now = svc.now()
    link = svc.page_link(token)  # a short link's handle, or the JWT: one path from here
    v = svc.verify(link, purposes=PAGE_PURPOSES, audience=None, now=now, via="page")
    _note_view(svc, v.record, now)
    # A sign-in's link outside the browser that asked shows an approval page (linksvc.signins.pages).
    sign_in_view = services().sign_in_view
    if sign_in_view is not None and (page := sign_in_view(v)) is not None:
        return page
    return _confirmation(svc, v)


@bp.post("/l/<path:token>")
def press(token: str) -> Response:
    """The button: check the form, consume the link, hand the code to the application."""
    svc = service()
    now = svc.now()
    link = svc.page_link(token)  # a short link's handle, or the JWT: one path from here
    try:
        claims = svc.check_token(link, purposes=PAGE_PURPOSES, audience=None, now=now)
    except errors.LinkError as exc:
        log.info(
            "link rejected",
            extra={
                "jti": exc.jti,
                "outcome": "rejected",
                "reason": exc.reason,
                "action": "press",
                "via": "page",
            },
        )
        raise
    try:
        nonce = _check_form(svc, claims.jti, now)
    except FormRefused as exc:
        log.info(
            "form refused",
            extra={
                "jti": claims.jti,
                "client": claims.aud,
                "outcome": "rejected",
                "reason": exc.why,
                "via": "page",
            },
        )
        # A link that no longer works gets its own page (used, revoked, ...), whatever the form.
        v = svc.verify(link, purposes=PAGE_PURPOSES, audience=None, now=now, via="page")
        owner = svc.client(v.record.client_id)
        i18n.use(v.record.locale, owner.locale if owner is not None else None)
        branding_pages.use(owner)
        if exc.expired:
            # The page sat open too long: show it again with a fresh form.
            return _confirmation(
                svc,
                v,
                status=400,
                notice=N_(
                    "This page was open for a long time. Press the button again to continue."
                ),
            )
        return render_failure("form_invalid")
    client = svc.client(claims.aud)
    if client is None or client.disabled:
        raise errors.UnknownLink(jti=claims.jti)
    # A sign-in's link completes its sign-in, in the browser that asked only (linksvc.signins.pages).
    sign_in_press = services().sign_in_press
    if sign_in_press is not None and (page := sign_in_press(claims, now)) is not None:
        return page
    done = codes.complete(svc, link, nonce=nonce, now=now, actor=_actor(svc))
    rec = done.record
    if done.repeated:
        log.info(
            "repeated press",
            extra={
                "jti": rec.jti,
                "client": rec.client_id,
                "outcome": "completed_again",
                "via": "page",
            },
        )
    if done.code is None or rec.redirect_uri is None:
        return _done(client, rec, repeated=done.repeated)
    # 303: the browser follows with a GET, so the form is never re-posted to the application.
    return cast(Response, redirect(with_code(rec.redirect_uri, done.code), code=303))


def _done(client: Client, rec: ledger.LinkRecord, *, repeated: bool) -> Response:
    app = client.display_name
    i18n.use(rec.locale, client.locale)
    branding_pages.use(client)
    if repeated:
        title = _("Already done")
        text = _(
            "This link was already used in this browser. Return to %(app)s to continue.", app=app
        )
    elif rec.purpose == "password_reset":
        title = _("Confirmed")
        text = _(
            "Your request to reset your %(app)s password is confirmed. Return to %(app)s to continue.",
            app=app,
        )
    else:
        title = _("Confirmed")
        text = _("Your sign-in to %(app)s is confirmed. Return to %(app)s to continue.", app=app)
    return render_page(
        "done.html",
        200,
        title=title,
        explanation=text,
        reason="completed",
        onward=onward(client, rec.redirect_uri),
    )


# -- errors: one template family ----------------------------------------------------

register_error_pages(bp)


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    return html_http_error(exc)


@bp.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    if isinstance(exc, HTTPException):  # pragma: no cover - handled above
        return html_http_error(exc)
    # Never a stack trace to the browser; the log has the type only (no token, no body).
    log.error("unhandled error on a page", extra={"error": type(exc).__name__})
    return render_failure("error", 500)


def html_http_error(exc: HTTPException) -> Response:
    """An HTML page for an HTTP error on a browser path (also used by the app-wide 404/405)."""
    code = exc.code or 500
    reason = {
        404: "not_found",
        405: "method_not_allowed",
        413: "bad_request",
        400: "bad_request",
    }.get(code, "error")
    return render_failure(reason, code if code < 500 else 500)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    services(app).html_http_error = html_http_error
