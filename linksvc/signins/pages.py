"""The pages of a sign-in (PRODUCT §6): the waiting page ``/s/<id>`` and the approval page.

- ``GET /s/<id>`` binds the sign-in to the first browser that opens it (a random cookie
  whose keyed hash is stored) and shows the match number, a field for the mailed code,
  and an "I have approved it" button; ``static/signin.js`` polls ``GET /s/<id>/status``
  and moves on by itself. Any other browser gets "open this on the device where you
  asked" and the status endpoint answers it as if the sign-in did not exist.
- ``POST /s/<id>/code`` (the code) and ``POST /s/<id>/complete`` (after an approval)
  complete the sign-in in the binding browser: ``303`` to the registered redirect URI
  with a one-time code.
- The link, opened in any browser but the binding one, shows the approval page (through
  the hook :func:`sign_in_view` that :mod:`linksvc.web.pages` calls); its form posts to
  ``POST /s/approve``. In the binding browser the link shows the usual confirmation page,
  whose press :func:`sign_in_press` completes.

Every form post is same-origin only, carries a token bound to this browser, and relies on
cookies a cross-site post does not send (the binding cookie is SameSite=Lax, the approval
cookie SameSite=Strict). GET and HEAD change nothing but the first binding (and HEAD not
even that). The logic lives in :mod:`linksvc.signins.flow`; this module parses and renders.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from typing import Any, cast

from flask import Blueprint, Flask, Response, jsonify, redirect, request, url_for
from itsdangerous import BadData, URLSafeTimedSerializer
from prometheus_client import Counter
from werkzeug.exceptions import HTTPException

from linksvc import errors
from linksvc.clients.registry import Client
from linksvc.i18n import catalogs as i18n
from linksvc.i18n.catalogs import N_, ngettext
from linksvc.i18n.catalogs import gettext as _
from linksvc.links.service import LinkService, Verified
from linksvc.links.tokens import Claims
from linksvc.ops import metrics
from linksvc.services import services
from linksvc.signins import flow as signins
from linksvc.signins.flow import SignIn, SignInError, SignIns
from linksvc.web import branding as branding_pages
from linksvc.web.html import form_origin, onward, register_error_pages, render_failure, render_page
from linksvc.web.pages import html_http_error, with_code

log = logging.getLogger("linksvc.signin_pages")

bp = Blueprint("signin_pages", __name__)

#: The approval page's browser nonce (CSRF), only ever sent to ``/s/`` and never cross-site.
APPROVE_COOKIE = "linksvc_approve"
NONCE_RE = re.compile(r"[A-Za-z0-9_-]{43}")
FORM_MAX_AGE = 900
BINDING_MAX_AGE = 3600
#: How often the waiting page's script asks for the status (milliseconds).
POLL_MS = 2500

SIGN_INS = Counter(
    "linksvc_sign_ins",
    "Sign-in steps by event: started, viewed, approved, denied, code_failed, completed.",
    ["event"],
    registry=metrics.REGISTRY,
)


def sign_ins() -> SignIns:
    return services().signins


def _service() -> LinkService:
    return services().links


# -- cookies and forms ------------------------------------------------------------------


def binding_cookie_name(svc: LinkService) -> str:
    """``__Host-`` needs Secure, which a browser refuses over plain http; in development on
    http:// the cookie drops the prefix, as the press cookie drops Secure (linksvc.web.pages)."""
    return (
        "__Host-linksvc_signin"
        if svc.settings.base_url.startswith("https://")
        else "linksvc_signin"
    )


def _binding(svc: LinkService) -> tuple[str, bool]:
    """This browser's binding value, and whether it is new (and must be set)."""
    value = request.cookies.get(binding_cookie_name(svc), "")
    if signins.BINDING_RE.fullmatch(value):
        return value, False
    return secrets.token_urlsafe(32), True


def _set_binding(resp: Response, svc: LinkService, value: str) -> None:
    https = svc.settings.base_url.startswith("https://")
    resp.set_cookie(
        binding_cookie_name(svc),
        value,
        max_age=BINDING_MAX_AGE,
        path="/",  # __Host- requires Path=/ and no Domain
        httponly=True,
        samesite="Lax",
        secure=https,
    )


def _same_origin() -> bool:
    # Browsers say where a request comes from; a cross-site post is refused outright.
    return request.headers.get("Sec-Fetch-Site", "same-origin") in ("same-origin", "none")


def _csp(*form_origins: str | None, script: bool = False) -> str:
    # Chrome checks form-action against the redirect that follows a form post too.
    action = " ".join(("'self'", *(o for o in form_origins if o)))
    scripts = "script-src 'self'; connect-src 'self'; " if script else ""
    return (
        f"default-src 'none'; {scripts}style-src 'self'; img-src 'self'; "
        f"form-action {action}; frame-ancestors 'none'; base-uri 'none'"
    )


def _approve_serializer(svc: LinkService) -> URLSafeTimedSerializer:
    if svc.settings.secret_key is None:
        raise errors.NotInitialised("LINKSVC_SECRET_KEY")
    return URLSafeTimedSerializer(svc.settings.secret_key, salt="linksvc.signins.approve")


def _nonce_hash(nonce: str) -> str:
    return hashlib.sha256(b"linksvc.approve\x00" + nonce.encode()).hexdigest()


def _client(svc: LinkService, signin: SignIn) -> Client:
    client = svc.client(signin.client_id)
    if client is None or client.disabled:
        raise errors.UnknownLink(jti=signin.jti)
    return client


# -- rendering --------------------------------------------------------------------------

#: Title, text and status of each end a waiting or approval page can show (English source
#: text, translated in :func:`_end`; ``%(app)s`` is the application).
ENDS: dict[str, tuple[str, str, int]] = {
    "completed": (N_("You are signed in"), N_("This sign-in is complete. Return to %(app)s."), 200),
    "denied": (
        N_("This sign-in was stopped"),
        N_(
            "It was denied, or the number or the code did not match. Nobody was signed in. "
            "Ask %(app)s for a new link if you still want to sign in."
        ),
        410,
    ),
    "expired": (
        N_("This sign-in has expired"),
        N_("Sign-ins work for a few minutes only. Ask %(app)s for a new link."),
        410,
    ),
    "ended": (N_("This sign-in was cancelled"), N_("Ask %(app)s for a new link."), 410),
    "approved_elsewhere": (
        N_("Approved"),
        N_("You can close this page; you are signed in on the other device."),
        200,
    ),
    "denied_here": (
        N_("Sign-in denied"),
        N_("Nobody was signed in. You can close this page."),
        200,
    ),
    "wrong_number": (
        N_("The number did not match"),
        N_(
            "So this sign-in was stopped and nobody was signed in. If it was you, ask %(app)s "
            "for a new link on the device where you want to sign in."
        ),
        200,
    ),
    "other_browser": (
        N_("Open this on the device where you asked"),
        N_(
            "This sign-in belongs to the browser where you asked to sign in to %(app)s. "
            "Open the link from your e-mail there, or approve it with the number shown there."
        ),
        403,
    ),
    "no_longer_pending": (
        N_("This sign-in is no longer waiting"),
        N_("It was already approved, denied or completed. You can close this page."),
        409,
    ),
}


#: The ends after which a new link is what the user needs (the others only lead back).
RESTART_ENDS = frozenset({"denied", "expired", "ended", "wrong_number"})


def _end(reason: str, client: Client, signin: SignIn) -> Response:
    """An end page: what happened, and the way onward (a new link, back to the application).
    The reason code is a ``data-reason`` attribute for machines, never shown."""
    title, text, status = ENDS[reason]
    return render_page(
        "signin_message.html",
        status,
        title=_(title),
        text=_(text, app=client.display_name),
        reason=reason,
        onward=onward(client, signin.redirect_uri),
        offer_restart=reason in RESTART_ENDS,
    )


def _speak(svc: LinkService, signin: SignIn) -> None:
    """A sign-in's pages speak its link's language (else the client's, else the browser's)."""
    client = svc.client(signin.client_id)
    i18n.use(signin.locale, client.locale if client is not None else None)
    branding_pages.use(client)


def _wait_page(
    svc: LinkService,
    signin: SignIn,
    binding: str,
    now: int,
    *,
    notice: str | None = None,
    status: int = 200,
) -> Response:
    client = _client(svc, signin)
    _speak(svc, signin)
    state = signin.status(now)
    if state not in (signins.PENDING, signins.APPROVED):
        return _end(state, client, signin)
    secret = sign_ins().secret
    return render_page(
        "signin_wait.html",
        status,
        content_security_policy=_csp(form_origin(signin.redirect_uri), script=True),
        title=_("Sign in to %(app)s", app=client.display_name),
        app_name=client.display_name,
        signin=signin,
        approved=state == signins.APPROVED,
        csrf=signins.form_token(secret, signin.id, binding),
        notice=notice,
        poll_ms=POLL_MS,
        expires_in=max(0, signin.exp - now),
        # `make run`: the mail is in the development outbox (linksvc.mail.devoutbox), never elsewhere.
        dev_outbox=url_for("dev_outbox.outbox") if services().dev_outbox is not None else None,
    )


def _approval_page(
    svc: LinkService, signin: SignIn, now: int, *, notice: str | None = None, status: int = 200
) -> Response:
    client = _client(svc, signin)
    _speak(svc, signin)
    value = request.cookies.get(APPROVE_COOKIE, "")
    new = not NONCE_RE.fullmatch(value)
    nonce = secrets.token_urlsafe(32) if new else value
    token = _approve_serializer(svc).dumps({"j": signin.jti, "n": _nonce_hash(nonce)})
    resp = render_page(
        "signin_approve.html",
        status,
        title=_("Sign in to %(app)s on another device?", app=client.display_name),
        app_name=client.display_name,
        browser=browser_words(signin.browser),
        asked_ago=i18n.ago(signin.created_at, now, just_now=False),
        asked_at=i18n.clock(signin.created_at, signin.timezone),
        csrf=token,
        notice=notice,
    )
    if new:
        resp.set_cookie(
            APPROVE_COOKIE,
            nonce,
            max_age=FORM_MAX_AGE,
            path="/s/",
            httponly=True,
            samesite="Strict",
            secure=svc.settings.base_url.startswith("https://"),
        )
    return resp


_BROWSER_ON = re.compile(r"(.+) on (.+)")


def browser_words(stored: str) -> str:
    """The requesting browser in the page's language. :func:`signins.describe_browser`
    stores English ("Firefox on Linux", "a browser on iOS", "an unknown browser"), and the
    names in it are names: only the words around them are translated."""
    if stored == "an unknown browser":
        return _("an unknown browser")
    m = _BROWSER_ON.fullmatch(stored)
    if m is None:
        return stored
    if m[1] == "a browser":
        return _("a browser on %(system)s", system=m[2])
    return _("%(browser)s on %(system)s", browser=m[1], system=m[2])


def _redirect(done: signins.Completed) -> Response:
    uri = done.signin.redirect_uri
    if done.code is None or uri is None:  # pragma: no cover - a sign-in always has one
        return _end("completed", _client(_service(), done.signin), done.signin)
    # 303: the browser follows with a GET, so the form is never re-posted to the application.
    return cast(Response, redirect(with_code(uri, done.code), code=303))


def _refused(why: str, signin: SignIn | None = None) -> Response:
    log.info(
        "sign-in form refused",
        extra={
            "jti": signin.jti if signin else None,
            "client": signin.client_id if signin else None,
            "outcome": "rejected",
            "reason": why,
            "via": "page",
        },
    )
    return render_failure("form_invalid")


# -- the waiting page -------------------------------------------------------------------


def _bound_signin(signin_id: str) -> tuple[LinkService, SignIn, str] | Response:
    """The sign-in of this request, if this browser holds its binding; else the answer."""
    svc = _service()
    signin = signins.by_id(svc.engine, signin_id)
    if signin is None:
        return render_failure("not_found", 404)
    binding = request.cookies.get(binding_cookie_name(svc), "")
    _speak(svc, signin)
    if not signins.is_bound_to(sign_ins().secret, signin, binding):
        return _end("other_browser", _client(svc, signin), signin)
    return svc, signin, binding


@bp.get("/s/<signin_id>")
def wait(signin_id: str) -> Response:
    """The waiting page. The first GET binds; HEAD never does."""
    svc = _service()
    now = svc.now()
    signin = signins.by_id(svc.engine, signin_id)
    if signin is None:
        return render_failure("not_found", 404)
    binding, _new = _binding(svc)
    _speak(svc, signin)
    if request.method == "HEAD" or signin.status(now) != signins.PENDING:
        bound = signins.is_bound_to(sign_ins().secret, signin, binding)
    else:
        bound = sign_ins().bind(signin, binding, now)
        signin = signins.by_id(svc.engine, signin_id) or signin
    if not bound:
        return _end("other_browser", _client(svc, signin), signin)
    resp = _wait_page(svc, signin, binding, now)
    if request.method != "HEAD":
        _set_binding(resp, svc, binding)  # refreshed on every view: it outlives the sign-in
    return resp


@bp.get("/s/<signin_id>/status")
def status(signin_id: str) -> tuple[Response, int]:
    """The state, for the binding browser only; anyone else gets the unknown sign-in's answer."""
    svc = _service()
    signin = signins.by_id(svc.engine, signin_id)
    binding = request.cookies.get(binding_cookie_name(svc), "")
    if signin is None or not signins.is_bound_to(sign_ins().secret, signin, binding):
        return jsonify({"state": "unknown"}), 404
    return jsonify({"state": signin.status(svc.now())}), 200


def _check_wait_form(svc: LinkService, signin: SignIn, binding: str) -> str | None:
    if not _same_origin():
        return "cross_site"
    expected = signins.form_token(sign_ins().secret, signin.id, binding)
    if not hmac.compare_digest(request.form.get("csrf", "")[:64].encode(), expected.encode()):
        return "bad_form_token"
    return None


def _posted_from_wait_page(signin_id: str) -> Response | tuple[LinkService, SignIn, str]:
    """The sign-in of a post from its waiting page: bound to this browser, with a good form
    token; or the page that refuses the post."""
    found = _bound_signin(signin_id)
    if isinstance(found, Response):
        return found
    svc, signin, binding = found
    why = _check_wait_form(svc, signin, binding)
    return _refused(why, signin) if why else found


@bp.post("/s/<signin_id>/code")
def code(signin_id: str) -> Response:
    """The code from the mail: completes, or counts a failure (five end the sign-in)."""
    found = _posted_from_wait_page(signin_id)
    if isinstance(found, Response):
        return found
    svc, signin, binding = found
    now = svc.now()
    typed = request.form.get("code", "")
    if not typed.strip():
        return _wait_page(svc, signin, binding, now, notice=_("Type the code from the mail."))
    try:
        return _redirect(sign_ins().try_code(signin, binding, typed, now))
    except SignInError as exc:
        current = exc.signin or signin
        if exc.reason == "wrong_code":
            left = current.remaining_codes
            return _wait_page(
                svc,
                current,
                binding,
                now,
                status=400,
                notice=ngettext(
                    "That code is not right. %(num)d try left.",
                    "That code is not right. %(num)d tries left.",
                    left,
                ),
            )
        return _wait_page(svc, current, binding, now)


@bp.post("/s/<signin_id>/complete")
def complete(signin_id: str) -> Response:
    """ "I have approved it" (or the script, once the status says approved)."""
    found = _posted_from_wait_page(signin_id)
    if isinstance(found, Response):
        return found
    svc, signin, binding = found
    now = svc.now()
    state = signin.status(now)
    if state == signins.PENDING:
        return _wait_page(
            svc,
            signin,
            binding,
            now,
            notice=_("Not approved yet. Open the link in the mail, or type the code from it."),
        )
    if state != signins.APPROVED and state != signins.COMPLETED:
        return _wait_page(svc, signin, binding, now)
    try:
        return _redirect(sign_ins().complete_approved(signin, binding, now))
    except SignInError as exc:
        return _wait_page(svc, exc.signin or signin, binding, now)


# -- the approval page (the link on another device) -----------------------------------------


def sign_in_view(v: Verified) -> Response | None:
    """Hook of ``GET /l/<token>``: the approval page for a sign-in's link opened outside the
    binding browser; ``None`` (the usual confirmation page) otherwise."""
    svc = _service()
    signin = signins.by_jti(svc.engine, v.record.jti)
    if signin is None:
        return None
    sign_ins().viewed(signin)
    if signins.is_bound_to(
        sign_ins().secret, signin, request.cookies.get(binding_cookie_name(svc), "")
    ):
        return None
    return _approval_page(svc, signin, svc.now())


def sign_in_press(claims: Claims, now: int) -> Response | None:
    """Hook of ``POST /l/<token>`` (the confirmation page's button, form already checked):
    completes a sign-in in its binding browser; ``None`` for a link that is not a sign-in's."""
    svc = _service()
    signin = signins.by_jti(svc.engine, claims.jti)
    if signin is None:
        return None
    binding = request.cookies.get(binding_cookie_name(svc), "")
    try:
        return _redirect(sign_ins().complete_by_press(signin, binding, now))
    except SignInError as exc:
        client = _client(svc, signin)
        _speak(svc, signin)
        if exc.reason == "other_browser":
            return _end("other_browser", client, signin)
        current = exc.signin or signin
        state = current.status(now)
        return _end(state if state in ENDS else "no_longer_pending", client, signin)


@bp.post("/s/approve")
def approve() -> Response:
    """The approval page's form: Approve with the match number, or Deny."""
    svc = _service()
    now = svc.now()
    if not _same_origin():
        return _refused("cross_site")
    token = request.form.get("csrf", "")
    nonce = request.cookies.get(APPROVE_COOKIE, "")
    try:
        payload: Any = _approve_serializer(svc).loads(token[:1024], max_age=FORM_MAX_AGE)
    except BadData:
        return _refused("bad_form_token")
    if (
        not isinstance(payload, dict)
        or not isinstance(payload.get("j"), str)
        or not NONCE_RE.fullmatch(nonce)
        or not hmac.compare_digest(str(payload.get("n", "")), _nonce_hash(nonce))
    ):
        return _refused("form_for_other_browser")
    signin = signins.by_jti(svc.engine, payload["j"])
    if signin is None:
        return render_failure("not_found", 404)
    client = _client(svc, signin)
    _speak(svc, signin)
    action = request.form.get("action", "")
    try:
        if action == "deny":
            if sign_ins().deny(signin, now):
                return _end("denied_here", client, signin)
            return _end("no_longer_pending", client, signin)
        if action != "approve":
            return _approval_page(svc, signin, now, status=400, notice=_("Choose Approve or Deny."))
        typed = re.fullmatch(r"\s*([0-9]{2})\s*", request.form.get("number", "")[:16])
        if typed is None:
            return _approval_page(
                svc,
                signin,
                now,
                status=400,
                notice=_("Type the two-digit number shown where you asked to sign in."),
            )
        outcome = sign_ins().approve(signin, int(typed.group(1)), now)
    except SignInError:
        return _end("no_longer_pending", client, signin)
    return _end(
        "approved_elsewhere" if outcome == signins.APPROVED else "wrong_number", client, signin
    )


# -- errors, metrics, wiring ------------------------------------------------------------

register_error_pages(bp)


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    return html_http_error(exc)


def _count(event: str, signin: SignIn) -> None:
    SIGN_INS.labels(event).inc()


def init_app(app: Flask) -> None:
    found = services(app)
    found.signins.observers.append(_count)
    for event in signins.EVENTS:
        SIGN_INS.labels(event)  # every series exists from the start, at 0
    found.sign_in_view = sign_in_view
    found.sign_in_press = sign_in_press
    app.register_blueprint(bp)


def wait_url(svc: LinkService, signin: SignIn) -> str:
    """Where the application sends the requesting browser."""
    return f"{svc.settings.base_url}/s/{signin.id}"
