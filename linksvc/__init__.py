"""linksvc: single-use, short-lived signed links."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, g, request
from werkzeug.sansio.utils import host_is_trusted

from linksvc import config as config_mod
from linksvc import errors
from linksvc.links.keys import KeyRing
from linksvc.links.service import LinkService
from linksvc.ops import logs, tracing
from linksvc.services import KEY as SERVICES_KEY
from linksvc.services import Services
from linksvc.store import db
from linksvc.web.http import problem, security_headers

#: The service's version, shown on the landing page.
__version__ = "1.0.0"

log = logging.getLogger("linksvc.app")


def create_app(config: config_mod.Settings | Mapping[str, str] | None = None) -> Flask:
    """Build the application.

    ``config`` is a :class:`~linksvc.config.Settings`, a mapping of ``LINKSVC_*``
    variables (used *instead of* the environment, for tests), or ``None`` to read the
    environment. An invalid setting raises :class:`~linksvc.config.ConfigError`.
    """
    settings = config if isinstance(config, config_mod.Settings) else config_mod.load(config)
    settings.instance_path.mkdir(parents=True, exist_ok=True)

    app = Flask(
        __name__,
        instance_path=str(settings.instance_path),
        template_folder="../templates",
        static_folder="../static",
    )
    app.config.update(MAX_CONTENT_LENGTH=settings.max_body_bytes, JSON_SORT_KEYS=False)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.config["LINKSVC"] = settings
    logs.configure(settings.log_level)

    engine = db.make_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        statement_timeout_ms=settings.db_statement_timeout_ms,
        connect_timeout=settings.db_connect_timeout,
    )
    max_lifetime = max(settings.max_ttl.values()) + settings.leeway
    keyring = KeyRing(
        engine,
        settings.key_encryption_key,
        refresh_seconds=settings.key_refresh_seconds,
        max_lifetime=max_lifetime,
    )
    links = LinkService(settings, engine, keyring)

    from linksvc import cli
    from linksvc.clients import branding
    from linksvc.downloads import storage
    from linksvc.downloads import views as downloads
    from linksvc.i18n import catalogs as i18n
    from linksvc.mail import delivery as mail
    from linksvc.mail import devoutbox
    from linksvc.ops import health as ops
    from linksvc.ops import metrics
    from linksvc.signins import flow as signins
    from linksvc.signins import pages as signin_pages
    from linksvc.web import api, docs, openapi, pages, ratelimit
    from linksvc.web import branding as branding_pages
    from linksvc.webhooks import cli as webhooks_cli

    # The services every configuration has; each concern's init_app below adds its own.
    services = Services(
        links=links,
        storage=storage.from_settings(settings),
        signins=signins.SignIns(links),
        logos=branding.LogoCache(),
        catalogs=i18n.Catalogs(),
    )
    app.extensions[SERVICES_KEY] = services

    # The request id comes first, so that every later hook (and every log line) has it.
    @app.before_request
    def _request_id() -> None:
        rid = request.environ.get("HTTP_X_REQUEST_ID", "")
        g.request_id = rid = (
            rid
            if 0 < len(rid) <= 64 and rid.isascii() and rid.isprintable()
            else os.urandom(8).hex()  # secrets.token_hex(8), without its two calls
        )
        logs.REQUEST_ID.set(rid)

    @app.teardown_request
    def _end_request_id(_exc: BaseException | None) -> None:
        logs.REQUEST_ID.set(None)

    app.register_blueprint(ops.bp)
    app.register_blueprint(api.bp)
    # Each concern registers its own blueprint, hooks and services; order matters only in
    # that rate limits and metrics wrap the blueprints registered before them.
    for module in (
        i18n,
        branding_pages,
        pages,
        signin_pages,
        downloads,
        mail,
        devoutbox,
        docs,
        ratelimit,
        metrics,
        openapi,
        webhooks_cli,
    ):
        module.init_app(app)
    cli.init_app(app)
    # Last: it wraps the mail transport and storage made above (nothing at all when off).
    tracing.init_app(app)

    hosts = settings.trusted_hosts

    # The same few Host values arrive on every request; werkzeug's check IDNA-encodes both
    # sides each time. A bounded cache of its answers, per app.
    @functools.lru_cache(maxsize=256)
    def _trusted(host: str | None) -> bool:
        return host_is_trusted(host, hosts)

    @app.before_request
    def _trusted_host() -> Response | None:
        # Only the base URL's host (LINKSVC_BASE_URL): a forged Host could otherwise steer
        # a redirect built from it (/l//x answers 308 to the normalised path). Health
        # probes and metrics scrapes often name the node's address, and build no URL.
        if not hosts or request.path in ("/healthz", "/readyz", "/metrics"):
            return None
        if _trusted(request.environ.get("HTTP_HOST")):
            return None
        log.info(
            "untrusted host refused", extra={"outcome": "rejected", "reason": "untrusted_host"}
        )
        return problem(400, "untrusted_host", "This service does not answer for that host name.")

    @app.after_request
    def _headers(resp: Response) -> Response:
        return security_headers(resp, g.get("request_id", ""))

    @app.errorhandler(404)
    def _not_found(exc: Any) -> Any:
        page = services.html_http_error  # linksvc.web.pages: HTML for browser paths
        if page is not None and not request.path.startswith(
            ("/api/", "/.well-known/", "/healthz", "/readyz", "/metrics")
        ):
            return page(exc)
        return problem(404, "not_found", "No such resource.")

    @app.errorhandler(405)
    def _method(exc: Any) -> Any:
        page = services.html_http_error
        if page is not None and not request.path.startswith(
            ("/api/", "/.well-known/", "/healthz", "/readyz", "/metrics")
        ):
            return page(exc)
        resp = problem(405, "method_not_allowed", "Method not allowed.")
        if getattr(
            exc, "valid_methods", None
        ):  # RFC 9110: a 405 names the methods that are allowed
            resp.headers["Allow"] = ", ".join(sorted(exc.valid_methods))
        return resp

    @app.errorhandler(errors.ServiceUnavailable)
    def _unavailable(exc: errors.ServiceUnavailable) -> Any:
        resp = problem(503, "unavailable", exc.detail)
        resp.headers["Retry-After"] = "5"
        return resp

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Any:
        from werkzeug.exceptions import HTTPException

        if isinstance(exc, HTTPException):
            return problem(exc.code or 500, "http_error", exc.description or "")
        # Never a stack trace to the client; the log has the type, not the request body.
        traced = services.trace_error
        if traced is not None:
            traced(exc)
        log.error(
            "unhandled error",
            extra={"error": type(exc).__name__, "path_kind": request.path.split("/")[1]},
        )
        return problem(500, "internal_error", "Something went wrong on our side.")

    return app
