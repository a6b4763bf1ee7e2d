"""The internal JSON API under ``/api/v1``: parse, call the link service, answer.

Errors are ``application/problem+json`` with a stable ``code``, mapped in one place
(:func:`_handle`). The token is never echoed, logged or stored.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any, cast

from flask import Blueprint, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter, PathConverter

from linksvc import errors
from linksvc.clients import branding
from linksvc.clients.registry import BRAND_FIELDS, Client, ClientError
from linksvc.clients.registry import update as update_client
from linksvc.config import PURPOSES
from linksvc.formats import iso
from linksvc.i18n import locales
from linksvc.links import codes, idempotency
from linksvc.links.service import SUBJECT_RE, SUBJECT_RULE, LinkService, Verified
from linksvc.links.tokens import JTI_RE
from linksvc.services import services
from linksvc.signins import flow as signins
from linksvc.store import db
from linksvc.web import bodies, contract, cursors
from linksvc.web import branding as branding_pages
from linksvc.web.contract import BadRequest
from linksvc.web.http import KIND_STATUS, link_error_problem, problem

bp = Blueprint("api", __name__, url_prefix="/api/v1")


class JtiConverter(BaseConverter):
    """A ``/links/<jti>`` segment: anything but the names of the calls beside it, so that
    ``GET /links/redeem`` is a 405 whose ``Allow`` lists only ``/links/redeem``'s methods
    (the route of ``<jti>`` had matched it too and added GET and DELETE)."""

    regex = r"(?!(?:redeem|verify)\Z)[^/]+"


class SubjectConverter(PathConverter):
    """A ``<path:…>`` whose characters include line breaks: werkzeug's ``.`` stops at them,
    so a subject with a control character found no route (an undocumented 404) instead of
    the 422 every other bad subject gets."""

    regex = r"[^/][\s\S]*?"


@bp.record_once
def _converters(state: Any) -> None:
    # Registered before the blueprint's rules are added (record_once runs first).
    state.app.url_map.converters.setdefault("jti", JtiConverter)
    state.app.url_map.converters.setdefault("subject", SubjectConverter)


def service() -> LinkService:
    return services().links


def _answer(body: contract.Answer, status: int = 200) -> Response:
    """``jsonify`` for the hot calls: the same compact JSON, encoded from the answer's model
    (linksvc.web.contract), and a Response, without the provider's per-call dispatch."""
    return Response(contract.encode(body) + b"\n", status, mimetype="application/json")


# -- request parsing (linksvc.web.bodies, linksvc.web.contract) ---------------------------------


def purpose_field(value: str) -> str:
    if value not in PURPOSES:
        raise BadRequest(
            422, "invalid_field", f"purpose must be one of {', '.join(PURPOSES)}.", field="purpose"
        )
    return value


# -- authentication -------------------------------------------------------------------


@bp.before_request
def authenticate() -> Response | None:
    if request.endpoint == "api.openapi":
        return None
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return problem(401, "unauthorized", "Send your API key as 'Authorization: Bearer <key>'.")
    try:
        client = service().client_by_key(key.strip())
    except errors.ServiceUnavailable as exc:
        return _unavailable(exc)
    if client is None:
        return problem(401, "unauthorized", "The API key is not valid.")
    g.client = client
    return None


def current_client() -> Client:
    return cast(Client, g.client)


# -- error mapping: the one place ----------------------------------------------------


@bp.errorhandler(BadRequest)
def _bad_request(exc: BadRequest) -> Response:
    return problem(exc.status, exc.code, exc.detail, field=exc.field)


@bp.errorhandler(errors.LinkError)
def _link_error(exc: errors.LinkError) -> Response:
    return link_error_problem(exc)


@bp.errorhandler(errors.RequestRefused)
def _refused(exc: errors.RequestRefused) -> Response:
    return problem(KIND_STATUS.get(exc.kind, 422), exc.code, exc.detail, field=exc.field)


@bp.errorhandler(errors.ServiceUnavailable)
def _unavailable(exc: errors.ServiceUnavailable) -> Response:
    resp = problem(503, "unavailable", exc.detail)
    resp.headers["Retry-After"] = "5"
    return resp


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    code = {
        404: "not_found",
        405: "method_not_allowed",
        413: "body_too_large",
        415: "unsupported_media_type",
        400: "bad_request",
    }.get(exc.code or 500, "error")
    return problem(exc.code or 500, code, exc.description or "")


# -- the calls -----------------------------------------------------------------------


MINT = contract.Decoder(contract.MintRequest)


@bp.post("/links")
def mint() -> Response | tuple[Response, int]:
    f = bodies.body_as(MINT)
    client = current_client()
    idem_key = request.headers.get("Idempotency-Key")
    if idem_key is not None:
        replay = _idempotency_claim(client, idem_key, contract.as_dict(f))
        if replay is not None:
            return replay, replay.status_code
    purpose_field(f.purpose)
    l10n = locales.link_l10n(f.locale, f.timezone, client.locale)
    wired = services()
    mailer = wired.mailer
    if f.email is not None:
        if mailer is None:
            raise BadRequest(
                422, "mail_unavailable", "This service does not send mail.", field="email"
            )
        mailer.check_address(f.email)  # refuse before anything is minted
    # Rate limits (linksvc.web.ratelimit): raise RateLimited before the mint changes anything.
    guard = wired.mint_guard
    if guard is not None:
        guard(client, f.subject, f.purpose, f.email)
    minted = service().mint(
        client,
        purpose=f.purpose,
        subject=f.subject,
        ttl=f.ttl,
        redirect_uri=f.redirect_uri,
        download=f.download,
        data=f.data,
        # A mailed download link confirms unless told not to: a mail scanner's GET must not
        # spend it. The links it supersedes stay working until its mail has been accepted.
        confirm=(f.email is not None and f.purpose == "download")
        if f.confirm is None
        else f.confirm,
        defer_supersede=f.email is not None,
        code_challenge=f.code_challenge,
        l10n=l10n,
        handle_seed=idem_key,
    )
    if f.email is not None and mailer is not None:
        mailer(client, minted, f.email)
        minted = service().supersede(minted)
    rec = minted.record
    body = contract.MintedLink(
        url=minted.url,
        token=minted.token,
        jti=rec.jti,
        purpose=rec.purpose,
        subject=rec.subject,
        issued_at=iso(rec.iat),
        expires_at=iso(rec.exp),
        superseded=minted.superseded,
    )
    if f.email is not None:
        body.emailed = True
    if idem_key is not None:
        _idempotency_complete(client, minted, emailed=f.email is not None)
    return _answer(body, 201)


# -- idempotent minting (linksvc.links.idempotency) -----------------------------------------

#: How long a request waits for another request with its key to finish minting.
IDEMPOTENCY_WAIT_SECONDS = 5.0


def _idempotency_claim(
    client: Client,
    key: str,
    f: dict[str, Any],
    replay: Callable[[Client, dict[str, Any], str], Response] | None = None,
) -> Response | None:
    """Claim ``key`` for this mint (None: go on and mint), or the answer of the link it
    already names. A request whose twin is still minting waits for it, a few seconds."""
    if not idempotency.KEY_RE.fullmatch(key):
        raise BadRequest(
            400,
            "invalid_idempotency_key",
            "Idempotency-Key must be 1-255 characters of letters, digits and ._:~+/=-.",
        )
    svc = service()
    secret = svc.settings.secret_key
    if secret is None:
        raise errors.NotInitialised("LINKSVC_SECRET_KEY")
    body_hash = idempotency.request_hash(f, secret=secret)
    legacy_hash = idempotency.legacy_request_hash(f)
    deadline = time.monotonic() + IDEMPOTENCY_WAIT_SECONDS
    pause = 0.02
    while True:
        c = idempotency.claim(
            svc.engine,
            client_id=client.id,
            key=key,
            body_hash=body_hash,
            legacy_hash=legacy_hash,
            now=svc.now(),
        )
        if c.outcome == idempotency.NEW:
            g.idempotency_claim = c
            return None
        if c.outcome == idempotency.MISMATCH:
            raise BadRequest(
                422,
                "idempotency_mismatch",
                "This Idempotency-Key was used with another request body; use a new key.",
            )
        if c.outcome == idempotency.DONE and c.link is not None:
            return (replay or _idempotency_replay)(client, c.link, key)
        if time.monotonic() + pause > deadline:
            resp = problem(
                409,
                "idempotency_in_progress",
                "A request with this Idempotency-Key is still being processed; retry shortly.",
            )
            resp.headers["Retry-After"] = "1"
            return resp
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


def _idempotency_replay(client: Client, link: dict[str, Any], key: str) -> Response:
    token, url = service().resign(
        client,
        jti=link["jti"],
        purpose=link["purpose"],
        subject=link["subject"],
        iat=link["iat"],
        exp=link["exp"],
        handle_seed=key,
    )
    body: dict[str, Any] = {
        "url": url,
        "token": token,
        "jti": link["jti"],
        "purpose": link["purpose"],
        "subject": link["subject"],
        "issued_at": iso(link["iat"]),
        "expires_at": iso(link["exp"]),
        "superseded": link["superseded"] or 0,
    }
    if link["emailed"]:
        body["emailed"] = True
    resp = jsonify(body)
    resp.status_code = 201  # the answer of the original request, again
    resp.headers["Idempotent-Replayed"] = "true"
    return resp


def _idempotency_complete(client: Client, minted: Any, *, emailed: bool) -> None:
    c: idempotency.Claim = g.pop("idempotency_claim")
    rec = minted.record
    try:
        idempotency.complete(
            service().engine,
            client_id=client.id,
            claim=c,
            jti=rec.jti,
            purpose=rec.purpose,
            subject=rec.subject,
            iat=rec.iat,
            exp=rec.exp,
            superseded=minted.superseded,
            emailed=emailed,
        )
    except errors.ServiceUnavailable:
        # The link is minted (and mailed): answer it. The claim stays pending, so a retry
        # with this key waits, then is refused as in progress rather than minting again.
        current_app.logger.warning(
            "idempotency key not completed", extra={"jti": rec.jti, "client": client.id}
        )


@bp.teardown_request
def _release_idempotency_claim(exc: BaseException | None) -> None:
    # A mint that claimed a key and then failed (refused, mail failed, database down)
    # gives the key back, so that the retry it invites can mint.
    c: idempotency.Claim | None = g.pop("idempotency_claim", None)
    if c is not None:
        # Should the database be down, the claim is taken over after PENDING_SECONDS.
        with contextlib.suppress(errors.ServiceUnavailable):
            idempotency.release(service().engine, client_id=current_client().id, claim=c)


TOKEN = contract.Decoder(contract.TokenRequest)


def _token_call(call: Callable[..., Verified]) -> Verified:
    """``call`` (the service's verify or redeem) on the body's token, for this client."""
    f = bodies.body_as(TOKEN)
    purpose_field(f.purpose)
    return call(f.token, purposes=[f.purpose], audience=current_client().id)


@bp.post("/links/verify")
def verify() -> Response:
    v = _token_call(service().verify)
    c = v.claims
    return _answer(
        contract.Verified(
            valid=True,
            jti=c.jti,
            purpose=c.pur,
            subject=c.sub,
            state=v.record.state,
            issued_at=iso(c.iat),
            expires_at=iso(c.exp),
            claims=contract.Claims(
                iss=c.iss,
                aud=c.aud,
                sub=c.sub,
                pur=c.pur,
                jti=c.jti,
                iat=c.iat,
                nbf=c.nbf,
                exp=c.exp,
            ),
        )
    )


@bp.post("/links/redeem")
def redeem() -> Response:
    v = _token_call(service().redeem)
    rec = v.record
    return _answer(
        contract.Redeemed(
            subject=rec.subject,
            purpose=rec.purpose,
            jti=rec.jti,
            data=rec.data,
            redeemed_at=iso(rec.state_at),
        )
    )


def _check_jti(jti: str) -> str:
    # Only the minted form can name a link; anything else (a NUL byte, which PostgreSQL
    # refuses in text, or a 10 kB string) is answered before it reaches the database.
    if not JTI_RE.fullmatch(jti):
        raise errors.UnknownLink()
    return jti


@bp.get("/links/<jti:jti>")
def status(jti: str) -> Response:
    rec, events = service().status(current_client(), _check_jti(jti))
    return _answer(
        contract.LinkStatus(
            jti=rec.jti,
            purpose=rec.purpose,
            subject=rec.subject,
            state=rec.state,
            issued_at=iso(rec.iat),
            expires_at=iso(rec.exp),
            state_changed_at=iso(rec.state_at),
            state_via=rec.state_via,
            # The language and zone of its pages and mail (PRODUCT §8); null when not given.
            locale=rec.locale,
            timezone=rec.timezone,
            events=[
                contract.LinkEvent(at=iso(e.at), event=e.event, reason=e.reason, via=e.via)
                for e in events
            ],
        )
    )


@bp.delete("/links/<jti:jti>")
def revoke(jti: str) -> Response:
    rec, n = service().revoke(current_client(), _check_jti(jti))
    return _answer(contract.Revoked(jti=rec.jti, state=rec.state, revoked=n))


REVOKE_SUBJECT = contract.Decoder(contract.RevokeSubjectRequest)


# <subject:…>: a subject may hold '/' (sent as '/' or '%2F', which the server decodes
# before routing); merge_slashes=False so 'a//b' is not redirected to another subject.
@bp.post("/subjects/<subject:subject>/revoke", merge_slashes=False)
def revoke_subject(subject: str) -> Response:
    f = bodies.body_as(REVOKE_SUBJECT, required=False)
    purposes = f.purposes
    if purposes is not None:
        if not purposes or not all(isinstance(p, str) and p in PURPOSES for p in purposes):
            raise BadRequest(
                422,
                "invalid_field",
                f"purposes must be a non-empty list of {', '.join(PURPOSES)}.",
                field="purposes",
            )
    if not SUBJECT_RE.fullmatch(subject):
        raise BadRequest(422, "invalid_field", SUBJECT_RULE, field="subject")
    n = service().revoke_subject(current_client(), subject, purposes)
    return _answer(contract.SubjectRevoked(subject=subject, revoked=n))


# -- the inventory: a subject's links -------------------------------------------------

INVENTORY_STATES = ("issued", "consumed", "revoked", "superseded")
INVENTORY_PARAMS = frozenset({"state", "purpose", "limit", "cursor"})
INVENTORY_MAX_LIMIT = 200


def _list_param(name: str, allowed: tuple[str, ...]) -> list[str] | None:
    """``?state=issued&state=revoked`` or ``?state=issued,revoked``; each value allowed."""
    raw = request.args.getlist(name)
    if not raw:
        return None
    values = [v for item in raw for v in item.split(",")]
    if not all(v in allowed for v in values):
        raise BadRequest(
            422, "invalid_field", f"{name} must be among {', '.join(allowed)}.", field=name
        )
    return values


def _cursor_key() -> bytes:
    secret = service().settings.secret_key
    if secret is None:
        raise errors.NotInitialised("LINKSVC_SECRET_KEY")
    return cursors.key(secret)


def _cursor(client_id: str, subject: str, iat: int, jti: str) -> str:
    """``next_cursor`` (linksvc.web.cursors)."""
    return cursors.encode(_cursor_key(), client_id, subject, iat, jti)


def _parse_cursor(client_id: str, subject: str, raw: str) -> tuple[int, str]:
    try:
        return cursors.decode(_cursor_key, client_id, subject, raw)
    except cursors.InvalidCursor:
        raise BadRequest(
            422, "invalid_cursor", "cursor must be a next_cursor this API returned.", field="cursor"
        ) from None


@bp.get("/subjects/<subject:subject>/links", merge_slashes=False)
def links_of(subject: str) -> Response:
    """The subject's links, newest first, a page at a time (``next_cursor`` names the next)."""
    for name in request.args:
        if name not in INVENTORY_PARAMS:
            raise BadRequest(422, "unknown_field", f"Unknown parameter {name!r}.", field=name)
    if not SUBJECT_RE.fullmatch(subject):
        raise BadRequest(422, "invalid_field", SUBJECT_RULE, field="subject")
    states = _list_param("state", INVENTORY_STATES)
    purposes = _list_param("purpose", tuple(PURPOSES))
    raw_limit = request.args.get("limit", "50")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= INVENTORY_MAX_LIMIT:
        raise BadRequest(
            422,
            "invalid_field",
            f"limit must be an integer from 1 to {INVENTORY_MAX_LIMIT}.",
            field="limit",
        )
    client = current_client()
    raw_cursor = request.args.get("cursor")
    before = _parse_cursor(client.id, subject, raw_cursor) if raw_cursor is not None else None
    page, more = service().links_of(
        client,
        subject,
        states=states,
        purposes=purposes,
        before=before,
        limit=int(raw_limit),
    )
    return _answer(
        contract.SubjectLinks(
            subject=subject,
            links=[
                contract.LinkSummary(
                    jti=rec.jti,
                    purpose=rec.purpose,
                    state=rec.state,
                    issued_at=iso(rec.iat),
                    expires_at=iso(rec.exp),
                    state_changed_at=iso(rec.state_at),
                    state_via=rec.state_via,
                )
                for rec in page
            ],
            next_cursor=_cursor(client.id, subject, *more) if more is not None else None,
        )
    )


# -- one-time codes from the hosted pages (linksvc.links.codes) -----------------------------


EXCHANGE = contract.Decoder(contract.ExchangeRequest)


@bp.post("/codes/exchange")
def exchange_code() -> Response:
    """Spend the ``code`` a hosted sign-in or reset sent to the redirect URI, once.

    ``invalid_code`` (404) for an unknown code or another client's (which is not spent),
    ``code_used`` (409), ``code_expired`` or ``code_revoked`` (410), and
    ``code_verifier_required`` or ``code_verifier_mismatch`` (422, the code is spent) when
    the ``code_verifier`` does not agree with the flow's ``code_challenge``.
    """
    f = bodies.body_as(EXCHANGE)
    verifier = f.code_verifier
    if verifier is not None and not codes.VERIFIER_RE.fullmatch(verifier):
        raise BadRequest(
            422,
            "invalid_field",
            "code_verifier must be 43-128 characters of letters, digits and -._~ (RFC 7636).",
            field="code_verifier",
        )
    svc = service()
    try:
        client = current_client()
        done = codes.exchange(
            svc.engine,
            f.code,
            client_id=client.id,
            now=svc.now(),
            sink=svc.sinks.get(svc.engine, client.id),
            code_verifier=verifier,
        )
    except codes.CodeError as exc:
        field = "code_verifier" if exc.status == 422 else None
        return problem(exc.status, exc.reason, exc.detail, field=field)
    return _answer(
        contract.Exchanged(subject=done.subject, purpose=done.purpose, jti=done.jti, data=done.data)
    )


# -- sign-ins that complete on the device that asked (linksvc.signins.flow) ---------------

SIGN_IN = contract.Decoder(contract.SignInRequest)


@bp.post("/sign-ins")
def start_sign_in() -> tuple[Response, int]:
    """Start a sign-in: mint its link, mail link and code, answer where the browser waits.

    The address goes to the mailer and nowhere else: not to the sign-in, not to a log.
    """
    f = bodies.body_as(SIGN_IN)
    client = current_client()
    l10n = locales.link_l10n(f.locale, f.timezone, client.locale)
    wired = services()
    mailer, sis = wired.mailer, wired.signins
    if mailer is None:
        raise BadRequest(422, "mail_unavailable", "This service does not send mail.", field="email")
    idem_key = request.headers.get("Idempotency-Key")
    if idem_key is not None:
        # The key's row keeps a hash of the request; the address enters it only as a keyed
        # hash, and the call's name keeps a key used on /links from answering here.
        hashed = {
            **contract.as_dict(f),
            "email": sis.address_key(f.email),
            "call": "sign-ins",
        }
        replay = _idempotency_claim(client, idem_key, hashed, replay=_sign_in_replay)
        if replay is not None:
            return replay, replay.status_code
    mailer.check_address(f.email)  # refuse before anything is minted
    guard = wired.mint_guard
    if guard is not None:
        guard(client, f.subject, "magic_link", f.email)
    address = f.email

    def send(minted: Any, code: str) -> None:
        mailer(client, minted, address, code=code)

    svc = service()
    started = sis.start(
        client,
        subject=f.subject,
        redirect_uri=f.redirect_uri,
        ip=f.ip,
        user_agent=f.user_agent,
        send=send,
        now=svc.now(),
        code_challenge=f.code_challenge,
        l10n=l10n,
    )
    if idem_key is not None:
        _idempotency_complete(client, started.minted, emailed=True)
    return jsonify(_sign_in_json(started.signin)), 201


def _sign_in_json(si: signins.SignIn) -> dict[str, Any]:
    return {
        "id": si.id,
        "wait_url": f"{service().settings.base_url}/s/{si.id}",
        "jti": si.jti,
        "subject": si.subject,
        "expires_at": iso(si.exp),
    }


def _sign_in_replay(client: Client, link: dict[str, Any], key: str) -> Response:
    """The answer of the sign-in an Idempotency-Key already names: no second link, no mail."""
    si = signins.by_jti(service().engine, link["jti"])
    if si is None or si.client_id != client.id:  # pragma: no cover - purged with its link
        raise errors.UnknownLink(jti=link["jti"])
    resp = jsonify(_sign_in_json(si))
    resp.status_code = 201
    resp.headers["Idempotent-Replayed"] = "true"
    return resp


# -- branding: the client's own face on pages and mails (linksvc.clients.branding) ------------------

#: Media types a logo may be sent as; the content decides, the header only has to be one.
LOGO_TYPES = ("image/png", "image/jpeg", "image/webp")


def _branding_json(client: Client) -> dict[str, Any]:
    svc = service()
    logo = branding_pages.logo_of(client.id)
    text = branding.button_text(client.brand_color)[0] if client.brand_color else None
    return {
        "display_name": client.display_name,
        "brand_color": client.brand_color,
        "button_text_color": text,
        "support_url": client.support_url,
        "support_email": client.support_email,
        "mail_from_name": client.mail_from_name,
        "logo_url": (
            svc.settings.base_url + branding_pages.logo_path(client.id, logo)
            if logo is not None
            else None
        ),
    }


def _fresh_client() -> Client:
    """This client as the database has it now (the key's cached copy may be seconds old)."""
    svc = service()
    client = svc.client(current_client().id)
    if client is None:  # pragma: no cover - deleted between authentication and here
        raise BadRequest(401, "unauthorized", "The API key is not valid.")
    return client


def _branding_changed(client_id: str) -> None:
    # This worker shows the change at once; the others within their caches' few seconds.
    service().client_cache.clear()
    services().logos.forget(client_id)


def _branding_refused(exc: branding.BrandingRefused) -> BadRequest:
    return BadRequest(exc.status, exc.code, exc.detail, field=exc.field)


@bp.get("/branding")
def get_branding() -> Response:
    return jsonify(_branding_json(_fresh_client()))


@bp.put("/branding")
def put_branding() -> Response:
    """Set the members present; ``null`` clears one (not ``display_name``); absent ones stay."""
    body = bodies.json_body()
    for name in body:
        if name not in BRAND_FIELDS:
            raise BadRequest(422, "unknown_field", f"Unknown field {name!r}.", field=name)
    for name, value in body.items():
        if value is None and name == "display_name":
            raise BadRequest(422, "invalid_field", "display_name cannot be cleared.", field=name)
        if value is not None and not isinstance(value, str):
            raise BadRequest(422, "invalid_field", f"Field {name!r} must be a string.", field=name)
    svc = service()
    client = current_client()
    if not body:
        return jsonify(_branding_json(_fresh_client()))  # nothing to change
    try:
        with db.write(svc.engine) as conn:
            update_client(
                conn,
                client.id,
                allow_http_redirects=not svc.settings.is_production,
                **body,
            )
    except branding.BrandingRefused as exc:
        raise _branding_refused(exc) from None
    except ClientError as exc:
        raise BadRequest(422, "invalid_field", str(exc), field="display_name") from None
    _branding_changed(client.id)
    return jsonify(_branding_json(_fresh_client()))


def _logo_body() -> bytes:
    """The request body, at most :data:`branding.MAX_LOGO_BYTES` (413 beyond, unread)."""
    limit = branding.MAX_LOGO_BYTES
    environ = request.environ
    length = request.content_length
    if length is not None and length > limit:
        raise BadRequest(413, "logo_too_large", f"A logo must be at most {limit // 1024} KiB.")
    if length is not None:
        raw: bytes = environ["wsgi.input"].read(length)
        if len(raw) < length:
            raise BadRequest(400, "bad_request", "The body ended before its Content-Length.")
    elif environ.get("wsgi.input_terminated"):
        raw = bodies.read_at_most(environ["wsgi.input"], limit + 1)
    else:
        raw = b""
    if len(raw) > limit:
        raise BadRequest(413, "logo_too_large", f"A logo must be at most {limit // 1024} KiB.")
    return raw


@bp.put("/branding/logo")
def put_logo() -> Response:
    declared = request.environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
    if declared == "image/svg+xml":
        raise BadRequest(
            415, "logo_svg_refused", "SVG logos are not accepted: send PNG, JPEG or WebP."
        )
    if declared not in LOGO_TYPES:
        raise BadRequest(
            415, "logo_unsupported_type", "Send the logo as image/png, image/jpeg or image/webp."
        )
    raw = _logo_body()
    try:
        logo = branding.process_logo(raw)
    except branding.BrandingRefused as exc:
        raise _branding_refused(exc) from None
    svc = service()
    client = current_client()
    with db.write(svc.engine) as conn:
        branding.save_logo(conn, client.id, logo, now=svc.now())
    _branding_changed(client.id)
    return jsonify(_branding_json(_fresh_client()))


@bp.delete("/branding/logo")
def delete_logo() -> Response:
    svc = service()
    client = current_client()
    with db.write(svc.engine) as conn:
        branding.clear_logo(conn, client.id)
    _branding_changed(client.id)
    return jsonify(_branding_json(_fresh_client()))
