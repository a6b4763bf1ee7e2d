"""An example relying application: passwordless sign-in and password reset through linksvc.

    LINKSVC_URL=http://127.0.0.1:8000 LINKSVC_API_KEY=lsk_... \\
        .venv/bin/flask --app examples/relying_app run --port 5001

It asks for a user id, mints a link through linksvc's API — with the Python client,
``linksvc_client``, its only way of talking to linksvc — and shows it (standing in for
the e-mail). The user's press on linksvc's confirmation page comes back to ``/callback``
with a one-time ``code``; the app exchanges it over the API (server to server, with its
API key) and then keeps *its own* server-side session: a random id in an HttpOnly,
SameSite=Lax cookie (Secure outside local development), the data on the server. No JWT
ever reaches browser storage, so script on a page cannot steal a session, and signing out
really ends it.

Settings (environment): ``LINKSVC_URL``, ``LINKSVC_API_KEY``, ``RELYING_APP_URL`` (this
app's own public URL, default http://127.0.0.1:5001; its ``/callback`` must be a registered
redirect URI of the client), ``RELYING_APP_ENV`` (``development`` allows a non-Secure
cookie on http://), ``RELYING_APP_MAIL_DOMAIN`` (when set, linksvc mails the link to
``<user id>@<domain>`` instead of the app showing it; `make run` sets it and
``RELYING_APP_OUTBOX_URL``, linksvc's development outbox page, which the "check your inbox"
page links to), ``RELYING_APP_SECRET_KEY`` (signs the small Flask session that a browser
holds before it signs in; a random one per start by default), ``RELYING_APP_BRANDING``
(``1``, as `make run` sets it: at start-up the app gives linksvc its face — brand colour,
logo, support page and address, mail sender name — through ``PUT /api/v1/branding`` and
``PUT /api/v1/branding/logo``, so linksvc's pages and mails look like this app's).

Every sign-in and reset is bound to the browser that asked for it: the Flask integration
keeps a random ``code_verifier`` in that browser's session and sends its challenge with
the mint, and ``/callback`` exchanges a code only with it. An attacker's own code, sent to
a victim's browser (login CSRF), is refused there, as is a link opened in another browser
than the one that asked (a sign-in by mail completes in the asking browser, by linksvc's
waiting page). The form that asks (``POST /send``) carries a CSRF token of that session.

With mail, a sign-in is one that completes on the device that asked (linksvc's sign-ins,
PRODUCT §6): the app starts it with the browser's address and User-Agent and sends the
browser to linksvc's waiting page; the mailed link (or the code in the mail) approves it
from any device, and only this browser comes back to ``/callback`` with a code.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, abort, g, redirect, render_template, request, session

from linksvc_client import CodeUsed, ExchangedCode, LinksvcError, RetryPolicy
from linksvc_client.flask import Linksvc

SESSION_COOKIE = "rp_session"
SESSION_SECONDS = 8 * 3600
RESET_SECONDS = 600
USER_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass
class Session:
    subject: str
    kind: str  # "signed_in" or "reset": a reset session may only set a new password
    expires: float
    csrf: str


class SessionStore:
    """Server-side sessions, in memory for the example (use your database or Redis)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, Session] = {}

    def create(self, subject: str, kind: str, seconds: int) -> str:
        sid = secrets.token_urlsafe(32)
        with self._lock:
            self._data[sid] = Session(
                subject, kind, time.time() + seconds, secrets.token_urlsafe(16)
            )
        return sid

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self._lock:
            s = self._data.get(sid)
            if s is not None and s.expires < time.time():
                del self._data[sid]
                return None
            return s

    def drop(self, sid: str | None) -> None:
        with self._lock:
            self._data.pop(sid or "", None)


#: The languages of linksvc's pages and mails. linksvc picks the variant it ships ("pt" is
#: Brazilian Portuguese, "zh" Simplified Chinese), so matching on the language is enough.
LINKSVC_LANGUAGES = ["en", "de", "fr", "es", "it", "pt", "nl", "pl", "tr", "ja", "zh", "ar"]


def create_app(config: Mapping[str, str] | None = None) -> Flask:
    env = dict(os.environ if config is None else config)
    linksvc_url = env.get("LINKSVC_URL", "http://127.0.0.1:8000")
    api_key = env.get("LINKSVC_API_KEY")
    if not api_key:
        raise SystemExit("relying_app: set LINKSVC_API_KEY (make run prints the demo client's key)")
    own_url = env.get("RELYING_APP_URL", "http://127.0.0.1:5001").rstrip("/")
    development = env.get("RELYING_APP_ENV", "development") == "development"
    mail_domain = env.get("RELYING_APP_MAIL_DOMAIN") or None
    outbox_url = env.get("RELYING_APP_OUTBOX_URL") or None
    if not own_url.startswith("https://") and not development:
        raise SystemExit("relying_app: RELYING_APP_URL must be https outside development")

    secure_cookies = not development or own_url.startswith("https://")
    app = Flask(__name__, template_folder="templates", static_folder="static")
    app.config["MAX_CONTENT_LENGTH"] = 16 * 1024
    app.config["LINKSVC_URL"] = linksvc_url
    app.config["LINKSVC_API_KEY"] = api_key
    # Flask's session holds what a browser has before it signs in: the code_verifier that
    # binds its sign-ins to it, and the CSRF token of the form that asks for one.
    app.secret_key = env.get("RELYING_APP_SECRET_KEY") or secrets.token_hex(32)
    app.config.update(
        SESSION_COOKIE_NAME="rp_flow",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=secure_cookies,
    )
    sessions = SessionStore()
    # The client retries what is safe to retry; a person is waiting, so within 10 s.
    linksvc = Linksvc(app, timeout=5, retry=RetryPolicy(deadline=10))
    app.extensions["relying_app.sessions"] = sessions
    callback = f"{own_url}/callback"

    def start_session(resp: Response, subject: str, kind: str, seconds: int) -> Response:
        sessions.drop(
            request.cookies.get(SESSION_COOKIE)
        )  # a fresh id on every sign-in (no fixation)
        sid = sessions.create(subject, kind, seconds)
        resp.set_cookie(
            SESSION_COOKIE,
            sid,
            max_age=seconds,
            httponly=True,
            samesite="Lax",
            path="/",
            secure=secure_cookies,
        )
        return resp

    def send_csrf() -> str:
        """The CSRF token of the form that asks for a link, kept in this browser's session."""
        token = session.get("csrf")
        if not isinstance(token, str):
            token = session["csrf"] = secrets.token_urlsafe(16)
        return token

    @app.before_request
    def load_session() -> None:
        g.session = sessions.get(request.cookies.get(SESSION_COOKIE))
        if request.method == "POST" and request.endpoint in ("logout", "set_password"):
            if g.session is None or not secrets.compare_digest(
                request.form.get("csrf", ""), g.session.csrf
            ):
                abort(400)
        if request.method == "POST" and request.endpoint == "send":
            # Another site's form must not make this browser ask for links (nor bind a
            # sign-in of the attacker's choosing to it).
            expected = session.get("csrf")
            if not isinstance(expected, str) or not secrets.compare_digest(
                request.form.get("csrf", ""), expected
            ):
                abort(400)

    # The sign-in form's answer redirects to linksvc's waiting page, and Chrome checks
    # form-action against the redirect that follows a form post: name linksvc's origin too.
    parts = urlsplit(linksvc_url)
    csp = (
        "default-src 'none'; style-src 'self'; img-src 'self'; "
        f"form-action 'self' {parts.scheme}://{parts.netloc}; frame-ancestors 'none'"
    )

    @app.after_request
    def headers(resp: Response) -> Response:
        resp.headers.setdefault("Content-Security-Policy", csp)
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        resp.headers.setdefault("Cache-Control", "no-store")
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        return resp

    def page(template: str, status: int = 200, **ctx: Any) -> tuple[str, int]:
        if template == "index.html":
            ctx["send_csrf"] = send_csrf()
        return render_template(template, session=g.session, **ctx), status

    @app.get("/")
    def index() -> Any:
        if g.session is not None and g.session.kind == "signed_in":
            return page("home.html")
        return page("index.html")

    @app.post("/send")
    def send() -> Any:
        user_id = request.form.get("user_id", "").strip()
        purpose = (
            "password_reset" if request.form.get("purpose") == "password_reset" else "magic_link"
        )
        if not USER_ID_RE.fullmatch(user_id):
            return page(
                "index.html", 422, error="Enter a user id: letters, digits, '.', '_' or '-'."
            )
        if purpose == "magic_link" and mail_domain:
            return start_sign_in(user_id, f"{user_id}@{mail_domain}")
        try:
            email = f"{user_id}@{mail_domain}" if mail_domain else None
            link = linksvc.mint(purpose, user_id, redirect_uri=callback, email=email)
        except LinksvcError as exc:
            app.logger.warning("mint failed: %s (request %s)", exc.code, exc.request_id)
            return page(
                "index.html", 502, error="We could not send a link right now. Try again shortly."
            )
        # A real application e-mails link.url (or asks linksvc to, with email=) and shows
        # "check your inbox" — the same page whether or not the account exists.
        if mail_domain:
            return page("sent.html", url=None, outbox_url=outbox_url, purpose=purpose)
        return page("sent.html", url=link.url, purpose=purpose)

    def start_sign_in(user_id: str, email: str) -> Any:
        """A sign-in that completes in this browser, wherever the mail is opened: linksvc
        mails the link and a code, and this browser waits on linksvc's page — in the
        browser's language (its Accept-Language best match among linksvc's languages)."""
        try:
            started = linksvc.sign_in(
                user_id,
                email,
                ip=request.remote_addr or "0.0.0.0",
                user_agent=request.headers.get("User-Agent", "")[:1024],
                redirect_uri=callback,
                locale=request.accept_languages.best_match(LINKSVC_LANGUAGES),
            )
        except LinksvcError as exc:
            app.logger.warning("sign-in failed: %s (request %s)", exc.code, exc.request_id)
            return page(
                "index.html", 502, error="We could not send a link right now. Try again shortly."
            )
        # 303: the browser follows with a GET to the waiting page, which binds it.
        return redirect(started.wait_url, code=303)

    def signed_in(result: ExchangedCode) -> Any:
        if result.purpose == "magic_link":
            return start_session(
                redirect("/", code=303), result.subject, "signed_in", SESSION_SECONDS
            )
        if result.purpose == "password_reset":
            # A short session that can do one thing: set a new password for this subject.
            return start_session(
                redirect("/reset", code=303), result.subject, "reset", RESET_SECONDS
            )
        return page("error.html", 400, reason="unexpected_purpose")

    def not_signed_in(exc: LinksvcError) -> Any:
        if isinstance(exc, CodeUsed) and g.session is not None:
            # A double click: the browser's first press already signed it in here, and
            # linksvc sent the second press back with the same (spent) code.
            return redirect("/reset" if g.session.kind == "reset" else "/", code=303)
        if exc.status is None or exc.status >= 500:
            return page("error.html", 502, reason="linksvc_unavailable")
        return page("error.html", 400, reason=exc.code)

    @app.get("/callback")
    def callback_view() -> Any:
        # Exchanges ?code= once, server to server, with this browser's code_verifier (a code
        # this browser did not ask for is refused), then hands the result to signed_in.
        return linksvc.callback(sign_in=signed_in, on_error=not_signed_in)

    @app.get("/reset")
    def reset() -> Any:
        if g.session is None or g.session.kind != "reset":
            return page("error.html", 403, reason="no_reset_session")
        return page("reset.html")

    @app.post("/reset")
    def set_password() -> Any:
        if g.session is None or g.session.kind != "reset":
            return page("error.html", 403, reason="no_reset_session")
        if len(request.form.get("password", "")) < 8:
            return page("reset.html", 422, error="Choose at least 8 characters.")
        # (Store the new password hash here.) The reset session ends; the user signs in anew.
        sessions.drop(request.cookies.get(SESSION_COOKIE))
        resp = Response(render_template("reset_done.html", session=None))
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    @app.post("/logout")
    def logout() -> Any:
        sessions.drop(request.cookies.get(SESSION_COOKIE))
        resp = redirect("/", code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    @app.get("/style.css")
    def style() -> Response:
        return Response(CSS, mimetype="text/css")

    @app.get("/help")
    def help_page() -> Any:
        return render_template("help.html", support_email=SUPPORT_EMAIL)

    if env.get("RELYING_APP_BRANDING") == "1":
        threading.Thread(
            target=push_branding, args=(app, linksvc, own_url), daemon=True, name="branding"
        ).start()
    return app


#: This app's face, which it gives linksvc at start-up (RELYING_APP_BRANDING=1).
BRAND_COLOR = "#4338ca"
SUPPORT_EMAIL = "help@example.com"
LOGO = os.path.join(os.path.dirname(__file__), "static", "logo.png")


def push_branding(app: Flask, linksvc: Linksvc, own_url: str, deadline: float = 60.0) -> None:
    """Set this app's branding on linksvc (idempotent: the same values every start). linksvc
    may still be starting (``make run`` starts both at once): tried again until ``deadline``."""
    with open(LOGO, "rb") as fh:
        logo = fh.read()
    until = time.monotonic() + deadline
    with app.app_context():
        while True:
            try:
                linksvc.set_branding(
                    brand_color=BRAND_COLOR,
                    support_url=f"{own_url}/help",
                    support_email=SUPPORT_EMAIL,
                    mail_from_name="Example App",
                )
                linksvc.set_logo(logo, "image/png")
            except LinksvcError as exc:
                if time.monotonic() > until or (exc.status is not None and exc.status < 500):
                    app.logger.warning("branding not set on linksvc: %s", exc)
                    return
                time.sleep(1)
                continue
            app.logger.info("branding set on linksvc (colour %s, logo, support page)", BRAND_COLOR)
            return


CSS = """body{font:17px/1.5 system-ui,sans-serif;max-width:34rem;margin:2rem auto;padding:0 1rem;color:#1b1f24;background:#f7f7fb}
header.app{display:flex;align-items:center;gap:.6rem;padding-bottom:.75rem;margin-bottom:1.25rem;border-bottom:3px solid #4338ca}
header.app img{width:40px;height:40px}header.app .name{font-weight:700;font-size:1.2rem}
header.app .tag{color:#4a5260;font-size:.9rem;margin-inline-start:auto}
input,button{font:inherit;padding:.5rem .7rem}label{display:block;margin:.75rem 0 .25rem}
input{border:1px solid #8a919c;border-radius:6px}
button{background:#4338ca;color:#fff;border:0;border-radius:6px;cursor:pointer;margin:.25rem .25rem .25rem 0}
button:hover{background:#3730a3}button:focus-visible{outline:3px solid #1b1f24;outline-offset:2px}
a{color:#4338ca}.link{word-break:break-all;background:#eef0f6;padding:.5rem;border-radius:6px}
.error{color:#9b1c1c}footer{margin-top:2rem;color:#4a5260;font-size:.9rem}"""
