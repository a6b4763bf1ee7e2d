"""Flask integration: ``Linksvc(app)`` or ``linksvc.init_app(app)``.

Reads ``LINKSVC_URL`` and ``LINKSVC_API_KEY`` (and optionally ``LINKSVC_TIMEOUT``) from
``app.config``, keeps one :class:`~linksvc_client.LinkClient` per application, and offers
:meth:`Linksvc.callback`, the body of a redirect URI's view::

    linksvc = Linksvc(app)

    @app.post("/send")
    def send():
        link = linksvc.mint("magic_link", user_id, email=address)  # bound to this browser
        ...

    @app.get("/callback")
    def callback():
        return linksvc.callback(sign_in=start_session, on_error=show_error)

A one-time code travels in a URL, and a URL can be carried into another browser: an
attacker who completes a sign-in of their own could send a victim's browser to their
``/callback?code=…`` and sign the victim in to the attacker's account (login CSRF). So
:meth:`Linksvc.mint` and :meth:`Linksvc.sign_in` bind every sign-in and reset to the
browser that asks, as OAuth's PKCE does: a random ``code_verifier`` is kept in that
browser's Flask session (one per session, so several links asked for in one browser all
work), its S256 challenge goes to linksvc, and :meth:`Linksvc.callback` exchanges a code
only together with it. A code that comes back to a browser which did not ask is refused
(:class:`~linksvc_client.CodeNotForThisBrowser`). This needs the app's ``SECRET_KEY``
(Flask's session); the verifier is no secret from the browser that holds it, only from
every other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask, current_app, request, session

from . import _core, errors
from .client import LinkClient
from .models import ExchangedCode, MintedLink, SignIn

EXTENSION = "linksvc_client"
#: A one-time code is short; anything longer is not one, and is not sent on.
MAX_CODE_LENGTH = 128
#: Where the browser's ``code_verifier`` is kept in the Flask session.
SESSION_KEY = "linksvc_code_verifier"


class Linksvc:
    """The linksvc client of a Flask application."""

    def __init__(self, app: Flask | None = None, **client_options: Any) -> None:
        self.client_options = client_options
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        url = app.config.get("LINKSVC_URL")
        key = app.config.get("LINKSVC_API_KEY")
        if not url or not key:
            raise RuntimeError("set LINKSVC_URL and LINKSVC_API_KEY in the app's config")
        options = dict(self.client_options)
        if app.config.get("LINKSVC_TIMEOUT") is not None:
            options.setdefault("timeout", float(app.config["LINKSVC_TIMEOUT"]))
        client = LinkClient(url, key, **options)
        app.extensions[EXTENSION] = client

    @property
    def client(self) -> LinkClient:
        """The current application's client."""
        return current_app.extensions[EXTENSION]  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        # linksvc.status(...), linksvc.revoke(...): the client's methods, on the extension.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.client, name)

    # -- binding each flow to the browser that asked ------------------------------------

    def code_verifier(self) -> str:
        """This browser session's ``code_verifier``, made on first use."""
        if not current_app.secret_key:
            raise RuntimeError(
                "linksvc binds each sign-in to the browser's session: set the app's SECRET_KEY"
            )
        verifier = session.get(SESSION_KEY)
        if not isinstance(verifier, str) or not _core.VERIFIER_RE.fullmatch(verifier):
            verifier = _core.new_code_verifier()
            session[SESSION_KEY] = verifier
        return verifier

    def mint(self, purpose: str, subject: str, **options: Any) -> MintedLink:
        """:meth:`LinkClient.mint`, a sign-in or reset link bound to this request's browser
        (unless ``bind=False``)."""
        if purpose in _core.CODE_PURPOSES and options.get("bind", True):
            options.setdefault("code_verifier", self.code_verifier())
        return self.client.mint(purpose, subject, **options)

    def sign_in(self, subject: str, email: str, **options: Any) -> SignIn:
        """:meth:`LinkClient.sign_in`, bound to this request's browser (unless ``bind=False``)."""
        if options.get("bind", True):
            options.setdefault("code_verifier", self.code_verifier())
        return self.client.sign_in(subject, email, **options)

    def callback(
        self,
        sign_in: Callable[[ExchangedCode], Any],
        *,
        on_error: Callable[[errors.LinksvcError], Any] | None = None,
        param: str = "code",
        bind: bool = True,
    ) -> Any:
        """Exchange the one-time code of this request (``?code=…``) with this browser's
        ``code_verifier`` and return what ``sign_in(result)`` returns — your own session
        start. A missing or refused code, a code this browser did not ask for
        (:class:`CodeNotForThisBrowser`), or linksvc out of reach, goes to
        ``on_error(exc)`` (raised when there is none): :class:`CodeUsed` from a browser that
        already has your session is usually a double click whose first press signed it in.

        ``bind=False`` exchanges without a verifier, for a redirect URI that only unbound
        links (minted with ``bind=False``) come back to: any browser holding such a code
        completes it, so give those flows a callback of their own."""
        code = request.args.get(param, "")
        try:
            if not code or len(code) > MAX_CODE_LENGTH:
                raise errors.InvalidCode(
                    "The request carries no one-time code.", status=400, code="missing_code"
                )
            verifier: str | None = None
            if bind:
                verifier = session.get(SESSION_KEY)
                if not isinstance(verifier, str) or not _core.VERIFIER_RE.fullmatch(verifier):
                    # This browser asked for no link: whatever the code, it is not its own.
                    raise errors.CodeNotForThisBrowser(
                        "This browser did not ask for a sign-in or reset link.",
                        status=422,
                        code="code_verifier_required",
                    )
            result = self.client.exchange_code(code, code_verifier=verifier)
        except errors.LinksvcError as exc:
            if on_error is None:
                raise
            return on_error(exc)
        return sign_in(result)
