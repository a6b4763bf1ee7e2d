"""A client's face on the pages: its stylesheet and logo, served by linksvc, and what the
templates show of it (:class:`PageBrand`, the ``brand`` of every page of its links).

Both files are named by their content's hash, so a browser keeps them for a year and a
changed brand is a new URL (within the few seconds the workers cache clients and logos).
The pages' strict CSP stays as it is: ``style-src 'self'`` and ``img-src 'self'`` cover
them, and nothing is inline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from flask import Blueprint, Flask, Response, abort, g, url_for

from linksvc import errors
from linksvc.clients import branding
from linksvc.clients.registry import Client
from linksvc.links.service import LinkService
from linksvc.services import services
from linksvc.store import db

bp = Blueprint("branding", __name__)

#: A year, and never revalidated: the URL changes when the content does.
IMMUTABLE = "public, max-age=31536000, immutable"
_CLIENT_ID_RE = re.compile(r"cl_[0-9a-f]{16}")


@dataclass(frozen=True)
class PageBrand:
    """What a page shows of the client whose link it is."""

    app_name: str
    logo_url: str | None
    stylesheet_url: str | None
    support_url: str | None
    support_email: str | None


def _service() -> LinkService:
    return services().links


def _logos() -> branding.LogoCache:
    return services().logos


def logo_of(client_id: str) -> branding.Logo | None:
    """The client's logo, through the per-process cache (a few seconds stale at most)."""
    svc = _service()

    def load() -> branding.Logo | None:
        with db.read(svc.engine) as conn:
            return branding.load_logo(conn, client_id)

    return _logos().get(load, client_id)


def logo_path(client_id: str, logo: branding.Logo) -> str:
    return url_for("branding.logo", client_id=client_id, sha256=logo.sha256, ext=logo.extension)


def stylesheet_path(client: Client) -> str | None:
    if client.brand_color is None:
        return None
    _, digest = branding.stylesheet(client.brand_color)
    return url_for("branding.stylesheet", client_id=client.id, digest=digest)


def page_brand(client: Client) -> PageBrand:
    logo = logo_of(client.id)
    return PageBrand(
        app_name=client.display_name,
        logo_url=logo_path(client.id, logo) if logo is not None else None,
        stylesheet_url=stylesheet_path(client),
        support_url=client.support_url,
        support_email=client.support_email,
    )


def use(client: Client | None) -> None:
    """Show ``client``'s face on the page this request renders (its logo, colour, support
    contact). Best effort: without the database the page is plain linksvc."""
    if client is None or client.disabled:
        return
    try:
        g.linksvc_brand = page_brand(client)
    except errors.ServiceUnavailable:  # the page shows without the logo's database
        g.pop("linksvc_brand", None)


def _current_client(client_id: str) -> Client:
    if not _CLIENT_ID_RE.fullmatch(client_id):
        abort(404)
    client = _service().client(client_id)
    if client is None or client.disabled:
        abort(404)
    return client


def _immutable(resp: Response) -> Response:
    resp.headers["Cache-Control"] = IMMUTABLE
    resp.headers["X-Content-Type-Options"] = "nosniff"
    # Mail programs and other origins never fetch these (mails carry the logo inline).
    resp.headers["Cross-Origin-Resource-Policy"] = "same-origin"
    return resp


@bp.get("/branding/<client_id>/logo-<sha256>.<ext>")
def logo(client_id: str, sha256: str, ext: str) -> Response:
    found = logo_of(client_id) if _CLIENT_ID_RE.fullmatch(client_id) else None
    if found is None or found.sha256 != sha256 or found.extension != ext:
        # An old hash is gone, not redirected: its page is at most a few seconds old.
        abort(404)
    _current_client(client_id)  # a disabled client's logo is not served
    return _immutable(Response(found.data, mimetype=found.content_type))


@bp.get("/branding/<client_id>/style-<digest>.css")
def stylesheet(client_id: str, digest: str) -> Response:
    client = _current_client(client_id)
    if client.brand_color is None:
        abort(404)
    css, current = branding.stylesheet(client.brand_color)
    if digest != current:
        abort(404)
    return _immutable(Response(css, mimetype="text/css"))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)

    @app.context_processor
    def _brand() -> dict[str, PageBrand | None]:
        return {"brand": g.get("linksvc_brand")}
