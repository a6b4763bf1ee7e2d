"""The front door: ``GET /`` (what this is, its version, where to go), ``GET /api/v1/docs``
(the OpenAPI document rendered by Swagger UI) and ``GET /problems`` (what each problem
``code`` means; every problem ``type`` URI points at a section of it).

Swagger UI's files come from the PyPI package ``flask-swagger-ui`` (only its ``dist``
folder; not its blueprint, whose page has an inline script) and are served from here, so
the page needs no CDN and keeps a CSP without inline script: the start-up code is
``static/api-docs.js``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from flask import Blueprint, Flask, Response, abort, current_app, send_from_directory, url_for
from markdown_it import MarkdownIt
from markupsafe import Markup

from linksvc import __version__
from linksvc.web.html import render_page
from linksvc.web.problems import PROBLEMS

bp = Blueprint("docs", __name__)

#: The Swagger UI files the docs page loads; nothing else of the package is served.
SWAGGER_FILES = frozenset({"swagger-ui.css", "swagger-ui-bundle.js"})

#: The docs page runs Swagger UI: scripts and styles from this origin only (no inline
#: script, no eval), data: images for its icons, and fetches of the OpenAPI document (and
#: "Try it out") to this origin only.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def swagger_dist() -> Path:
    import flask_swagger_ui

    return Path(flask_swagger_ui.__file__).resolve().parent / "dist"


@bp.get("/")
def landing() -> Response:
    return render_page("landing.html", version=__version__)


@bp.get("/api/v1/docs")
def api_docs() -> Response:
    return render_page(
        "api_docs.html",
        content_security_policy=DOCS_CSP,
        openapi_url=url_for("api.openapi"),
    )


@bp.get("/api/v1/docs/assets/<name>")
def api_docs_asset(name: str) -> Response:
    if name not in SWAGGER_FILES:
        abort(404)
    resp = send_from_directory(swagger_dist(), name, max_age=86400)
    resp.headers["Cache-Control"] = "public, max-age=86400"
    return resp


@cache
def problem_sections() -> list[tuple[str, int, str, Markup]]:
    """Each problem type as ``(code, status, title, explanation as HTML)``, rendered once.
    The explanations are our own Markdown; raw HTML in them is escaped all the same."""
    md = MarkdownIt("commonmark", {"html": False})
    return [
        (code, p.status, p.title, Markup(md.render(p.explanation)))
        for code, p in sorted(PROBLEMS.items())
    ]


@bp.get("/problems")
def problems() -> Response:
    return render_page("problems.html", problems=problem_sections())


@bp.get("/favicon.ico")
def favicon() -> Response:
    """Browsers ask for it on every page; answering spares a 404 in every access log."""
    return send_from_directory(str(current_app.static_folder), "favicon.ico", max_age=86400)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
