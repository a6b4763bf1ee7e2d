"""Download links: ``GET /d/<token>`` consumes the link and answers ``303`` to a URL that
lives seconds — a SigV4-presigned S3 URL, or linksvc's own ``/dl/<grant>`` for local files.

Order matters: the storage URL is made, and the object looked up, *before* the link is
consumed, so a storage outage or a missing object answers without burning the link.
``HEAD`` never consumes. Links minted with ``confirm: true`` show a page first and consume
on its (CSRF-protected) button. Also the mint-time check of the ``download`` object
(:func:`check_download`), installed as the link service's ``download_checker``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import mimetypes
import re
import secrets
from typing import Any, cast
from urllib.parse import urlsplit

from babel.numbers import format_decimal
from flask import Blueprint, Flask, Response, current_app, redirect, request, send_file
from itsdangerous import BadSignature, URLSafeTimedSerializer

from linksvc import errors
from linksvc.clients.registry import Client
from linksvc.config import Settings
from linksvc.downloads import storage
from linksvc.i18n import catalogs as i18n
from linksvc.i18n.catalogs import N_, ngettext
from linksvc.i18n.catalogs import gettext as _
from linksvc.links import handles, ledger
from linksvc.links.service import LinkService
from linksvc.services import services
from linksvc.store import db
from linksvc.web import branding as branding_pages
from linksvc.web.html import register_error_pages, render_page

log = logging.getLogger("linksvc.downloads")

bp = Blueprint("downloads", __name__)

DOWNLOAD_FIELDS = frozenset({"key", "bucket", "filename", "content_type"})
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
CSRF_COOKIE = "linksvc_dl_csrf"
CSRF_SALT = "linksvc.download-confirm"
#: The per-browser cookie that tells the browser that consumed a download link from any
#: other (the replay policy, PRODUCT §7): 256 random bits, set with the response that
#: consumes (or the confirmation page), HttpOnly. SameSite=Lax, not Strict: a click in a
#: webmail is a cross-site navigation, and the same browser clicking the mail's link again
#: must be recognised. It grants nothing — only its keyed hash is stored, with the
#: consumption (``links.completion_hash``) — so an attacker gains nothing by holding one.
BROWSER_COOKIE = "linksvc_dl_browser"
#: Its name where the base URL is https (Secure, host-only, ``Path=/``: nobody can plant it).
HOST_BROWSER_COOKIE = "__Host-" + BROWSER_COOKIE
BROWSER_COOKIE_AGE = 400 * 86400  # what browsers allow at most
_BROWSER_RE = re.compile(r"[A-Za-z0-9_-]{43}")


def init_app(app: Flask) -> None:
    found = services(app)
    store = found.storage
    found.links.download_checker = lambda client, download: check_download(store, client, download)
    app.register_blueprint(bp)


# -- minting: the shape, the client's prefixes, the object --------------------------


def _refuse(code: str, detail: str, field: str, kind: str = "invalid") -> errors.RequestRefused:
    return errors.RequestRefused(code, detail, kind=kind, field=field)


def prefix_allows(
    prefixes: tuple[str, ...], *, bucket: str | None, key: str, default_bucket: str | None
) -> bool:
    """Whether a client's ``--download-prefix`` list allows ``bucket``/``key``.

    Each entry is ``prefix`` (in the configured bucket or directory) or ``bucket:prefix``;
    ``:prefix`` names the configured storage explicitly, for prefixes containing ':'.
    The match is a plain string prefix, so end a folder with '/'. No entries: any key of
    the configured storage, but no other bucket.
    """
    if not prefixes:
        return bucket == default_bucket
    for entry in prefixes:
        if ":" in entry:
            entry_bucket, prefix = entry.split(":", 1)
            entry_bucket = entry_bucket or default_bucket  # type: ignore[assignment]
        else:
            entry_bucket, prefix = default_bucket, entry  # type: ignore[assignment]
        if entry_bucket == bucket and key.startswith(prefix):
            return True
    return False


def resolved_allowed(
    store: storage.LocalStorage | storage.S3Storage, client: Client, key: str
) -> bool:
    """Whether the file ``key`` resolves to (symlinks followed) is still within ``client``'s
    prefixes: a symlink in ``reports/`` pointing at ``other/`` must not serve ``other/``.
    Object stores have no symlinks."""
    if not isinstance(store, storage.LocalStorage) or not client.download_prefixes:
        return True
    return prefix_allows(
        client.download_prefixes, bucket=None, key=store.resolved_key(key), default_bucket=None
    )


def check_download(
    store: storage.LocalStorage | storage.S3Storage, client: Client, download: dict[str, Any]
) -> dict[str, Any]:
    """Validate a mint's ``download`` object and return what the ledger keeps:
    ``{storage, bucket, key, filename, content_type, size}``. Raises RequestRefused
    (422 for shape, ``invalid_key`` for path escapes, ``object_not_found``; 403
    ``download_not_allowed`` outside the client's prefixes) or ServiceUnavailable."""
    if not isinstance(download, dict):
        raise _refuse("invalid_field", "download must be an object.", "download")
    for name in download:
        if name not in DOWNLOAD_FIELDS:
            raise _refuse("unknown_field", f"Unknown field 'download.{name}'.", f"download.{name}")
    for name in DOWNLOAD_FIELDS:
        if download.get(name) is not None and not isinstance(download[name], str):
            raise _refuse("invalid_field", f"download.{name} must be a string.", f"download.{name}")
    key = download.get("key")
    if key is None:
        raise _refuse("missing_field", "download.key is required.", "download.key")
    storage.check_key(key)
    bucket = download.get("bucket")
    if bucket is not None:
        if store.kind != "s3":
            raise _refuse(
                "invalid_field", "download.bucket is only used with S3 storage.", "download.bucket"
            )
        if not _BUCKET_RE.fullmatch(bucket) or ".." in bucket:
            raise _refuse(
                "invalid_field", "download.bucket is not a valid bucket name.", "download.bucket"
            )
    bucket = bucket or store.default_bucket
    filename = storage.check_filename(
        download["filename"] if download.get("filename") is not None else key.rsplit("/", 1)[-1]
    )
    content_type = download.get("content_type")
    if content_type is not None:
        storage.check_content_type(content_type)
    if not prefix_allows(
        client.download_prefixes, bucket=bucket, key=key, default_bucket=store.default_bucket
    ):
        raise _refuse(
            "download_not_allowed",
            "This client may not link that object (see its download prefixes).",
            "download.key",
            kind="forbidden",
        )
    try:
        info = store.stat(bucket, key)
    except storage.ObjectMissing:
        raise _refuse("object_not_found", "No such object in storage.", "download.key") from None
    if not resolved_allowed(store, client, key):
        raise _refuse(
            "download_not_allowed",
            "That object is a link to a file outside this client's download prefixes.",
            "download.key",
            kind="forbidden",
        )
    return {
        "storage": store.kind,
        "bucket": info.bucket,
        "key": key,
        "filename": filename,
        "content_type": content_type,
        "size": info.size,
    }


# -- pages ------------------------------------------------------------------------------


def _service() -> LinkService:
    return services().links


def _store() -> storage.LocalStorage | storage.S3Storage:
    return services().storage


def _settings() -> Settings:
    return cast(Settings, current_app.config["LINKSVC"])


def actor_hash() -> str | None:
    """A keyed hash of the requester's address for the ledger: tells requests apart in an
    audit without keeping anyone's IP address in clear."""
    key = _settings().secret_key
    if key is None or not request.remote_addr:
        return None
    return hmac.new(key, b"actor:" + request.remote_addr.encode(), hashlib.sha256).hexdigest()


def _browser_cookie() -> tuple[str, str]:
    """The browser cookie's name and path for this deployment."""
    if _settings().base_url.startswith("https://"):
        return HOST_BROWSER_COOKIE, "/"
    return BROWSER_COOKIE, "/d/"


def _browser() -> tuple[str, bool]:
    """This browser's cookie value, and whether it is new (and must be set). A caller
    without one (a first visit, a download tool keeping no cookies) gets a fresh value, so
    it counts as another browser than any before it."""
    value = request.cookies.get(_browser_cookie()[0], "")
    if _BROWSER_RE.fullmatch(value):
        return value, False
    return secrets.token_urlsafe(32), True


def browser_hash(value: str) -> str:
    """What the ledger keeps of a browser cookie: an HMAC under the service secret, so a
    database dump gives no cookie and matches none without the secret."""
    key = _settings().secret_key
    if key is None:
        raise errors.NotInitialised("LINKSVC_SECRET_KEY")
    return hmac.new(key, b"linksvc.downloads.browser|" + value.encode(), hashlib.sha256).hexdigest()


def _remember_browser(resp: Response, value: str, new: bool) -> Response:
    if new:
        name, path = _browser_cookie()
        resp.set_cookie(
            name,
            value,
            max_age=BROWSER_COOKIE_AGE,
            path=path,
            secure=_settings().base_url.startswith("https:"),
            httponly=True,
            samesite="Lax",
        )
    return resp


def _problem_page(status: int, reason: str, title: str, advice: str) -> Response:
    # ``title`` and ``advice`` are English source text (N_), translated here.
    return render_page("failure.html", status, reason=reason, title=_(title), advice=_(advice))


def _missing_page() -> Response:
    return _problem_page(
        404,
        "file_missing",
        N_("This file is no longer available"),
        N_("The link was not used up. Ask the sender for a new link."),
    )


register_error_pages(bp)


@bp.errorhandler(storage.ObjectMissing)
def _object_missing(exc: storage.ObjectMissing) -> Response:
    return _missing_page()


@bp.errorhandler(errors.RequestRefused)
def _refused(exc: errors.RequestRefused) -> Response:
    # Only reachable when a stored key no longer passes the path checks (a file swapped for
    # a symlink after minting): to the user that is a file that is not there.
    return _missing_page()


def _verify(
    token: str | handles.Handle, now: int, *, record: bool, browser: str | None = None
) -> Any:
    """Verify a download token. With ``record``, a refusal is noted in the link's history;
    with ``browser`` too (the request would consume the link) a used link presented by
    another browser than the one that consumed it is a replay (``link.replayed`` and the
    client's replay policy, as for an API redemption)."""
    svc = _service()
    try:
        return svc.verify(token, purposes=["download"], audience=None, now=now, via="download")
    except errors.LinkError as exc:
        # A replay or a late click on a real link shows up in that link's history.
        if record and exc.jti is not None and not isinstance(exc, errors.UnknownLink):
            redemption = False
            if browser is not None and isinstance(exc, errors.Used):
                rec = ledger.get(svc.engine, exc.jti)
                # The GET of a link that confirms first only shows a page: not a redemption.
                redemption = rec is not None and (request.method == "POST" or not rec.confirm)
            ledger.record_rejection(
                svc.engine,
                exc.jti,
                None,
                exc.reason,
                now,
                via="download",
                actor=actor_hash(),
                redemption=redemption,
                completion_hash=browser_hash(browser) if browser is not None else None,
            )
        raise


@bp.route("/d/<path:token>", methods=["GET", "HEAD"])
def download(token: str) -> Response:
    now = _service().now()
    link = _service().page_link(token)  # a short link's handle, or the JWT: one path from here
    if request.method == "HEAD":
        # Mail scanners and link previews send HEAD: answer the state, consume nothing.
        _verify(link, now, record=False)
        return Response(status=200, mimetype="text/html")
    browser, new = _browser()
    v = _verify(link, now, record=True, browser=browser)
    if v.record.confirm:
        return _remember_browser(_confirm_page(v), browser, new)
    return _remember_browser(_deliver(link, v.record, now, browser), browser, new)


@bp.post("/d/<path:token>")
def confirm(token: str) -> Response:
    now = _service().now()
    link = _service().page_link(token)
    browser, new = _browser()
    v = _verify(link, now, record=True, browser=browser)
    if not _csrf_ok(v.claims.jti):
        return _problem_page(
            403,
            "csrf",
            N_("This page has expired"),
            N_("Open the link from your e-mail again and press the button once."),
        )
    return _remember_browser(_deliver(link, v.record, now, browser), browser, new)


def _csrf_serializer() -> URLSafeTimedSerializer:
    key = _settings().secret_key
    if key is None:
        raise errors.NotInitialised("secret key")
    return URLSafeTimedSerializer(key, salt=CSRF_SALT)


def _csrf_ok(jti: str) -> bool:
    """Double submit: the form token is signed, names this link, and carries the nonce of
    the (SameSite=Strict, HttpOnly) cookie set with the page; a cross-site form has neither."""
    form_token = request.form.get("csrf", "")
    cookie = request.cookies.get(CSRF_COOKIE, "")
    if not form_token or not cookie or len(form_token) > 512:
        return False
    try:
        payload = _csrf_serializer().loads(form_token, max_age=_settings().max_ttl["download"] + 60)
    except BadSignature:
        return False
    return (
        isinstance(payload, dict)
        and payload.get("j") == jti
        and isinstance(payload.get("n"), str)
        and hmac.compare_digest(payload["n"], cookie)
    )


_PAGE_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action {form_action}; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _size_text(size: int | None) -> str | None:
    if size is None:
        return None
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            if unit == "bytes":
                return ngettext("%(num)d byte", "%(num)d bytes", size)
            # Digits and the decimal sign as the page's language writes them; units are SI.
            return f"{format_decimal(round(value, 1), locale=i18n.current())} {unit}"
        value /= 1000
    return None  # pragma: no cover


def _confirm_page(v: Any) -> Response:
    rec = v.record
    d = rec.download or {}
    info = _store().stat(d.get("bucket"), d["key"])  # ObjectMissing → the missing page
    client = _service().client(rec.client_id)
    i18n.use(rec.locale, client.locale if client else None)
    branding_pages.use(client)
    nonce = secrets.token_urlsafe(16)
    resp = render_page(
        "download_confirm.html",
        200,
        title=_("Download a file"),
        app_name=client.display_name if client else _("An application"),
        filename=d.get("filename"),
        size_text=_size_text(info.size if info.size is not None else d.get("size")),
        csrf=_csrf_serializer().dumps({"j": rec.jti, "n": nonce}),
    )
    # Chrome checks form-action against the redirect that follows the post: allow the
    # storage origin the button will send the browser to, and nothing else.
    probe = _store().presigned_url(
        info,
        jti=rec.jti,
        expires_in=1,
        disposition="attachment",
        content_type=None,
        now=_service().now(),
    )
    resp.headers["Content-Security-Policy"] = _PAGE_CSP.format(
        form_action=" ".join(
            dict.fromkeys(("'self'", _origin(_settings().base_url), _origin(probe)))
        )
    )
    resp.set_cookie(
        CSRF_COOKIE,
        nonce,
        max_age=_settings().max_ttl["download"] + 60,
        path="/d/",
        secure=_settings().base_url.startswith("https:"),
        httponly=True,
        samesite="Strict",
    )
    return resp


def _deliver(
    token: str | handles.Handle, rec: ledger.LinkRecord, now: int, browser: str
) -> Response:
    """Make the storage URL, check the object, then consume (keeping the keyed hash of
    ``browser``, the browser's cookie, with the consumption); only then redirect."""
    svc, store, s = _service(), _store(), _settings()
    d = rec.download or {}
    if d.get("storage") != store.kind:
        # Minted before the storage backend was switched: the object is not where we look.
        raise errors.ServiceUnavailable(
            "storage", "This link points to storage that is not configured."
        )
    # Never longer than the link itself had left (at least 1 s when inside the leeway).
    expires_in = max(1, min(s.download_url_seconds, rec.exp - now))
    info = storage.ObjectInfo(bucket=d.get("bucket"), key=d["key"], size=d.get("size"), etag=None)
    url = store.presigned_url(
        info,
        jti=rec.jti,
        expires_in=expires_in,
        disposition=storage.content_disposition(d["filename"]),
        content_type=d.get("content_type"),
        now=now,
    )
    store.stat(d.get("bucket"), d["key"])
    _check_resolved(svc, store, rec, d["key"])
    v = svc.redeem(
        token,
        purposes=["download"],
        audience=None,
        now=now,
        via="download",
        actor=actor_hash(),
        completion_hash=browser_hash(browser),
    )
    log.info(
        "download redirected",
        extra={
            "jti": v.record.jti,
            "client": v.record.client_id,
            "outcome": "redirected",
            "storage": store.kind,
            "expires_in": expires_in,
        },
    )
    return cast(Response, redirect(url, 303))


def _check_resolved(
    svc: LinkService, store: storage.LocalStorage | storage.S3Storage, rec: Any, key: str
) -> None:
    """Again when serving: a file swapped after minting for a symlink that leaves the
    client's prefixes is, to the user, a file that is not there (and the link is not spent)."""
    if not isinstance(store, storage.LocalStorage):
        return
    client = svc.client(rec.client_id)
    if client is None or not resolved_allowed(store, client, key):
        log.warning(
            "download refused: resolves outside the client's prefixes",
            extra={"jti": rec.jti, "client": rec.client_id, "outcome": "rejected"},
        )
        raise storage.ObjectMissing(key)


@bp.route("/dl/<grant>", methods=["GET", "HEAD"])
def grant(grant: str) -> Response:
    """Stream a local file for a grant made by ``_deliver``: Range/206, ETag, the same
    Content-Disposition. Forged → 403; past its few seconds → 410."""
    store = _store()
    if not isinstance(store, storage.LocalStorage):
        return _problem_page(
            404, "not_found", N_("Page not found"), N_("Check the address, or request a new link.")
        )
    svc = _service()
    try:
        jti = store.open_grant(grant, now=svc.now())
    except storage.GrantRefused as exc:
        if exc.reason == "expired":
            return _problem_page(
                410,
                "expired",
                N_("This download link has expired"),
                N_("Download links work for a few seconds only. Ask the sender for a new link."),
            )
        return _problem_page(
            403,
            "invalid",
            N_("This download link is not valid"),
            N_("It may be incomplete or mistyped. Ask the sender for a new link."),
        )
    with db.read(svc.engine) as conn:
        rec = ledger.get(conn, jti)
    # A grant exists only for a link consumed by a download; anything else is forged or stale.
    if (
        rec is None
        or rec.purpose != "download"
        or rec.state != ledger.CONSUMED
        or rec.state_via != "download"
        or not rec.download
        or rec.download.get("storage") != "local"
    ):
        return _problem_page(
            403,
            "invalid",
            N_("This download link is not valid"),
            N_("It may be incomplete or mistyped. Ask the sender for a new link."),
        )
    # The grant's own expiry is signed, but a grant can never outlive the window that began
    # when the link was consumed: even a forged-with-a-leaked-secret grant cannot re-open a
    # consumed file for hours.
    if rec.state_at is None or svc.now() > rec.state_at + _settings().download_url_seconds:
        return _problem_page(
            410,
            "expired",
            N_("This download link has expired"),
            N_("Download links work for a few seconds only. Ask the sender for a new link."),
        )
    d = rec.download
    path = storage.file_path_for_serving(store, d["key"])
    _check_resolved(svc, store, rec, d["key"])
    mimetype = (
        d.get("content_type")
        or mimetypes.guess_type(d["filename"])[0]
        or "application/octet-stream"
    )
    if "," in request.headers.get("Range", ""):
        # Werkzeug answers multi-range requests with 416; ignoring Range (200, whole file)
        # is what RFC 9110 allows and what download tools cope with.
        request.environ.pop("HTTP_RANGE", None)
    resp = send_file(path, mimetype=mimetype, conditional=True, etag=True, max_age=None)
    resp.headers["Content-Disposition"] = storage.content_disposition(d["filename"])
    resp.headers["Cache-Control"] = "private, no-store"
    # The file is the client's, served from our origin: never let it run as a page here.
    resp.headers["Content-Security-Policy"] = "default-src 'none'; sandbox; frame-ancestors 'none'"
    return resp
