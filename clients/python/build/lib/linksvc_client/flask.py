"""Flask integration: ``Linksvc(app)`` or ``linksvc.init_app(app)``.

Reads ``LINKSVC_URL`` and ``LINKSVC_API_KEY`` (and optionally ``LINKSVC_TIMEOUT``) from
``app.config``, keeps one :class:`~linksvc_client.LinkClient` per application, and offers
:meth:`Linksvc.callback`, the body of a redirect URI's view::

    linksvc = Linksvc(app)

    @app.get("/callback")
    def callback():
        return linksvc.callback(sign_in=start_session, on_error=show_error)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask, current_app, request

from . import errors
from .client import LinkClient
from .models import ExchangedCode

EXTENSION = "linksvc_client"
#: A one-time code is short; anything longer is not one, and is not sent on.
MAX_CODE_LENGTH = 128


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
        # linksvc.mint(...), linksvc.revoke(...): the client's methods, on the extension.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.client, name)

    def callback(
        self,
        sign_in: Callable[[ExchangedCode], Any],
        *,
        on_error: Callable[[errors.LinksvcError], Any] | None = None,
        param: str = "code",
    ) -> Any:
        """Exchange the one-time code of this request (``?code=…``) and return what
        ``sign_in(result)`` returns — your own session start. A missing or refused code,
        or linksvc out of reach, goes to ``on_error(exc)`` (raised when there is none):
        :class:`CodeUsed` from a browser that already has your session is usually a
        double click whose first press signed it in."""
        code = request.args.get(param, "")
        try:
            if not code or len(code) > MAX_CODE_LENGTH:
                raise errors.InvalidCode(
                    "The request carries no one-time code.", status=400, code="missing_code"
                )
            result = self.client.exchange_code(code)
        except errors.LinksvcError as exc:
            if on_error is None:
                raise
            return on_error(exc)
        return sign_in(result)
