"""The link service: minting, verifying, redeeming and revoking, on top of the token,
key, client and ledger modules. Flask-free; the blueprints call it with parsed input
and the current time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from collections.abc import Callable, Collection
from typing import Any
from urllib.parse import unquote

from sqlalchemy.engine import Connection, Engine

from linksvc import errors
from linksvc.clients import registry as clients
from linksvc.clients.registry import Client
from linksvc.config import PAGE_PURPOSES, PURPOSES, Settings
from linksvc.links import codes, handles, ledger, tokens
from linksvc.links.keys import KeyRing
from linksvc.ops import logs
from linksvc.store import db
from linksvc.webhooks import outbox

log = logging.getLogger("linksvc.links")

#: An address anywhere in the subject: a local-part character, an at sign (or its
#: full-width and small forms), a domain character — "victim@localhost", "x:victim@ex.com@y".
_ADDRESS_LIKE = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-][@\uff20\ufe6b][A-Za-z0-9\[]")


def looks_like_address(subject: str) -> bool:
    """Whether ``subject`` holds something that reads as an e-mail address once
    percent-decoded (up to three times: ``victim%2540example.com``). Opaque ids
    (``user-42``, UUIDs, ``auth0|5f…``, ``tenant/42``) do not."""
    text = subject
    for _ in range(3):
        decoded = unquote(text)
        if decoded == text:
            break
        text = decoded
    return _ADDRESS_LIKE.search(text) is not None


#: A subject as minted: opaque, printable ASCII, no spaces, not starting with ``/`` — so
#: that every subject is addressable in the subject routes (``<path:subject>``: ``tenant/42``
#: or ``tenant%2F42``; Werkzeug's path converter cannot match a leading ``/``).
SUBJECT_RE = re.compile(r"(?!/)[\x21-\x7e]{1,255}")
#: A client id as the registry makes it (``cl_`` and 16 hex digits), or any short printable
#: ASCII id an operator gave; the column holds 40.
CLIENT_ID_RE = re.compile(r"[\x21-\x7e]{1,40}")
SUBJECT_RULE = (
    "subject must be 1-255 printable ASCII characters without spaces, not starting with '/'."
)


MAX_DATA_DEPTH = 32


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value, without recursion (so any input is safe to measure)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if level > MAX_DATA_DEPTH:
                return level
            stack.extend(
                (child, level + 1) for child in (item.values() if isinstance(item, dict) else item)
            )
    return deepest


def _strict_json(value: Any) -> bool:
    """Whether ``value`` serialises as strict JSON: ``json.dumps(allow_nan=False)`` accepts
    it and its strings are valid Unicode (no lone surrogates)."""
    try:
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (ValueError, TypeError):  # UnicodeEncodeError is a ValueError
        return False
    return True


@dataclasses.dataclass(frozen=True)
class Minted:
    token: str
    url: str
    record: ledger.LinkRecord
    superseded: int


@dataclasses.dataclass(frozen=True)
class Verified:
    claims: tokens.Claims
    record: ledger.LinkRecord


class LinkService:
    """Everything the API and the pages do with links, given settings, a database and keys."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        keyring: KeyRing,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.keyring = keyring
        self.clock = clock
        #: Hook for the download storage backend: ``check(client, download) -> download``.
        self.download_checker: Callable[[Client, dict[str, Any]], dict[str, Any]] | None = None
        #: Called as ``fn(action, outcome, purposes, client_id)`` after every mint, verify and
        #: redeem, success or not (linksvc.ops.metrics counts them). Must be cheap and never raise.
        self.observers: list[Callable[[str, str, Collection[str], str | None], None]] = []
        #: API key → client, for a few seconds (see :class:`clients.ClientCache`).
        self.client_cache = clients.ClientCache()
        #: client id → its webhook wishes, for a few seconds (see :class:`outbox.SinkCache`).
        self.sinks = outbox.SinkCache()

    def now(self) -> int:
        return int(self.clock())

    # -- minting ---------------------------------------------------------------------

    def mint(
        self,
        client: Client,
        *,
        purpose: str,
        subject: str,
        ttl: int | None = None,
        redirect_uri: str | None = None,
        download: dict[str, Any] | None = None,
        data: Any = None,
        confirm: bool = False,
        now: int | None = None,
        defer_supersede: bool = False,
        code_challenge: str | None = None,
        l10n: str | None = None,
        handle_seed: str | None = None,
    ) -> Minted:
        """Mint a link. With ``defer_supersede`` (its mail is still to be sent) the older
        links it would supersede stay issued until :meth:`supersede` is called. With
        ``code_challenge`` (a sign-in or reset link) its one-time code is exchanged only
        with the matching ``code_verifier`` (linksvc.links.codes). For a client whose links are
        short, ``handle_seed`` (the mint's Idempotency-Key) makes the handle one that
        :meth:`resign` can tell again (:func:`handles.derive`)."""
        now = self.now() if now is None else now
        s = self.settings
        if purpose not in PURPOSES:
            raise errors.RequestRefused(
                "invalid_field", f"purpose must be one of {', '.join(PURPOSES)}", field="purpose"
            )
        if purpose not in client.purposes:
            raise errors.RequestRefused(
                "purpose_not_allowed",
                f"This client may not mint {purpose} links.",
                kind="forbidden",
                field="purpose",
            )
        if not SUBJECT_RE.fullmatch(subject):
            raise errors.RequestRefused("invalid_field", SUBJECT_RULE, field="subject")
        # Claims are readable by anyone who holds the link, so an e-mail address there leaks.
        if not client.allow_pii_subject and looks_like_address(subject):
            raise errors.RequestRefused(
                "subject_looks_like_pii",
                "subject looks like an e-mail address; use an opaque user id.",
                field="subject",
            )
        ceiling = s.ttl_ceiling(purpose)
        if ttl is None:
            ttl = min(300, ceiling)
        elif not 1 <= ttl <= ceiling:
            raise errors.RequestRefused(
                "ttl_out_of_range",
                f"ttl must be between 1 and {ceiling} seconds for {purpose}.",
                field="ttl",
            )
        if purpose in PAGE_PURPOSES:
            if download is not None:
                raise errors.RequestRefused(
                    "invalid_field", "download is only for download links.", field="download"
                )
            if redirect_uri is None and len(client.redirect_uris) == 1:
                redirect_uri = client.redirect_uris[0]
            elif redirect_uri is None and len(client.redirect_uris) > 1:
                raise errors.RequestRefused(
                    "redirect_uri_required",
                    "This client has several redirect URIs; name one.",
                    field="redirect_uri",
                )
            # Exact match only: prefix or pattern matching is how open redirects are born.
            if redirect_uri is not None and redirect_uri not in client.redirect_uris:
                raise errors.RequestRefused(
                    "redirect_uri_not_allowed",
                    "redirect_uri is not registered for this client.",
                    kind="forbidden",
                    field="redirect_uri",
                )
            if confirm:
                raise errors.RequestRefused(
                    "invalid_field",
                    "confirm is only for download links (sign-in and reset links always confirm).",
                    field="confirm",
                )
            if code_challenge is not None and not ledger.CHALLENGE_RE.fullmatch(code_challenge):
                raise errors.RequestRefused(
                    "invalid_field",
                    "code_challenge must be the S256 challenge of a code_verifier: 43 base64url "
                    "characters (RFC 7636).",
                    field="code_challenge",
                )
        else:
            if code_challenge is not None:
                raise errors.RequestRefused(
                    "invalid_field",
                    "code_challenge is only for sign-in and reset links (download links end "
                    "in no code).",
                    field="code_challenge",
                )
            if redirect_uri is not None:
                raise errors.RequestRefused(
                    "invalid_field",
                    "redirect_uri is not used by download links.",
                    field="redirect_uri",
                )
            if download is None:
                raise errors.RequestRefused(
                    "download_required",
                    "A download link needs a download object.",
                    field="download",
                )
            if self.download_checker is None:
                raise errors.ServiceUnavailable("storage", "Download storage is not configured.")
            download = self.download_checker(client, download)
        if data is not None and _depth(data) > MAX_DATA_DEPTH:
            # Deep nesting parses, but re-serialising it deeper in the stack at redemption
            # could exhaust the recursion limit after the link is consumed.
            raise errors.RequestRefused(
                "data_too_deep", f"data may nest at most {MAX_DATA_DEPTH} levels.", field="data"
            )
        if data is not None and not _strict_json(data):
            # 1e400 parses as a float infinity and would come back as Infinity, which strict
            # parsers refuse — after the link is spent. Refuse it (and lone surrogates) now.
            raise errors.RequestRefused(
                "invalid_field",
                "data must be plain JSON: finite numbers, valid Unicode strings.",
                field="data",
            )
        if data is not None and len(json.dumps(data, separators=(",", ":"))) > s.max_data_bytes:
            raise errors.RequestRefused(
                "data_too_large",
                f"data must serialise to at most {s.max_data_bytes} bytes.",
                field="data",
            )

        key = self.keyring.signing_key()
        claims = tokens.Claims(
            iss=s.issuer,
            aud=client.id,
            sub=subject,
            pur=purpose,
            jti=tokens.new_jti(),
            iat=now,
            nbf=now,
            exp=now + ttl,
        )
        token = tokens.sign(claims, key)
        handle = handle_hash = None
        if client.link_format == "short":
            secret = self._secret()
            raw = (
                handles.new()
                if handle_seed is None
                else handles.derive(secret, client_id=client.id, seed=handle_seed, jti=claims.jti)
            )
            handle, handle_hash = handles.encode(raw), handles.digest(secret, raw)
        rec = ledger.LinkRecord(
            jti=claims.jti,
            client_id=client.id,
            purpose=purpose,
            subject=subject,
            kid=key.kid,
            iat=now,
            exp=claims.exp,
            redirect_uri=redirect_uri,
            download=download,
            data=data,
            confirm=confirm,
            code_challenge=code_challenge,
            l10n=l10n,  # checked by the caller (linksvc.i18n.locales.link_l10n)
            handle_hash=handle_hash,
        )
        sink = self.sinks.get(self.engine, client.id)
        supersede = purpose in s.supersede_purposes and not defer_supersede
        if not supersede:
            # Nothing to retire: one INSERT, durable on return (with its webhook event in the
            # same statement on PostgreSQL, the same transaction on SQLite).
            ledger.insert_link(self.engine, rec, sink=sink)
            superseded = 0
        else:
            with db.write(self.engine) as conn:
                superseded = ledger.record_mint(conn, rec, supersede=supersede, now=now, sink=sink)
        path = "d" if purpose == "download" else "l"
        logs.info(
            log,
            "link minted",
            jti=rec.jti,
            client=client.id,
            purpose=purpose,
            outcome="minted",
            superseded=superseded,
        )
        for fn in self.observers:
            fn("mint", "minted", (purpose,), client.id)
        return Minted(
            token=token,
            url=f"{s.base_url}/{path}/{handle or token}",
            record=rec,
            superseded=superseded,
        )

    def _secret(self) -> bytes:
        if self.settings.secret_key is None:
            raise errors.NotInitialised("LINKSVC_SECRET_KEY")
        return self.settings.secret_key

    def supersede(self, minted: Minted, now: int | None = None) -> Minted:
        """The deferred half of a mint with ``defer_supersede``: once its mail has been
        accepted, retire the older links of its subject (a failed mail leaves them working)."""
        rec = minted.record
        if rec.purpose not in self.settings.supersede_purposes:
            return minted
        now = self.now() if now is None else now
        sink = self.sinks.get(self.engine, rec.client_id)
        with db.write(self.engine) as conn:
            n = ledger.supersede_older(conn, rec, now=now, check_self=True, sink=sink)
        if n:
            log.info(
                "links superseded",
                extra={"jti": rec.jti, "client": rec.client_id, "superseded": n},
            )
        return dataclasses.replace(minted, superseded=n)

    def resign(
        self,
        client: Client,
        *,
        jti: str,
        purpose: str,
        subject: str,
        iat: int,
        exp: int,
        handle_seed: str | None = None,
    ) -> tuple[str, str]:
        """A token and URL for an already minted link (an idempotent mint's replay): the
        same claims, signed afresh with the current key. Tokens are never stored; both
        strings name the one ledger row, which is consumed once. A short link minted with
        ``handle_seed`` gets its handle again; any other link a JWT URL (which works too)."""
        claims = tokens.Claims(
            iss=self.settings.issuer,
            aud=client.id,
            sub=subject,
            pur=purpose,
            jti=jti,
            iat=iat,
            nbf=iat,
            exp=exp,
        )
        token = tokens.sign(claims, self.keyring.signing_key())
        path = "d" if purpose == "download" else "l"
        handle = None
        if client.link_format == "short" and handle_seed is not None:
            secret = self._secret()
            raw = handles.derive(secret, client_id=client.id, seed=handle_seed, jti=jti)
            rec = ledger.get(self.engine, jti, exp)
            # Only if the row holds this handle: minted before the client chose short links,
            # it has none.
            if rec is not None and rec.handle_hash == handles.digest(secret, raw):
                handle = handles.encode(raw)
        return token, f"{self.settings.base_url}/{path}/{handle or token}"

    # -- verifying and redeeming -------------------------------------------------------

    def check_token(
        self, token: Any, *, purposes: Collection[str], audience: str | None, now: int
    ) -> tokens.Claims:
        """Steps 1-3 of verification (no ledger). Raises LinkError.

        With ``audience=None`` (the end-user pages and downloads, where no client is
        authenticated) the token's client must exist and be enabled: a disabled
        application's links stop working everywhere, as its API key does.

        ``token`` may be a short link's :class:`handles.Handle` (only the pages make one,
        :meth:`page_link`): its ledger row stands in for the signed claims, and meets the
        same claim checks, including that the key which signed its JWT is still ours.
        """
        s = self.settings
        if isinstance(token, handles.Handle):
            return self._check_handle(token, purposes=purposes, audience=audience, now=now)
        claims = tokens.verify(
            token,
            keys=self.keyring,
            issuer=s.issuer,
            purposes=purposes,
            audience=audience,
            now=now,
            leeway=s.leeway,
            ceilings=s.max_ttl,
        ).claims
        # Every claim that reaches the database in its minted form (the jti is checked by
        # tokens.verify): a well-signed lone surrogate or NUL would make the driver raise.
        if not SUBJECT_RE.fullmatch(claims.sub) or not CLIENT_ID_RE.fullmatch(claims.aud):
            raise errors.InvalidClaims(
                "Token sub or aud is not of the minted form.", jti=claims.jti
            )
        if audience is None:
            client = self.client(claims.aud)
            if client is None or client.disabled:
                raise errors.UnknownLink(jti=claims.jti)
        return claims

    def page_link(self, segment: str) -> str | handles.Handle:
        """What a page's path segment names: a short link's :class:`handles.Handle` (its
        keyed hash), else the segment itself, a JWT (or nothing, refused as malformed)."""
        return handles.from_path(self.settings.secret_key, segment) or segment

    def _check_handle(
        self,
        handle: handles.Handle,
        *,
        purposes: Collection[str],
        audience: str | None,
        now: int,
    ) -> tokens.Claims:
        rec = ledger.get_by_handle(self.engine, handle.digest)
        if rec is None:
            # Nothing is known: the same page as any invalid link, no jti, no history.
            raise errors.UnknownLink()
        # A removed key ends the links it signed, in either form.
        self.keyring.verification_key(rec.kid)
        claims = tokens.check_claims(
            {
                "iss": self.settings.issuer,
                "aud": rec.client_id,
                "sub": rec.subject,
                "pur": rec.purpose,
                "jti": rec.jti,
                "iat": rec.iat,
                "nbf": rec.iat,
                "exp": rec.exp,
            },
            issuer=self.settings.issuer,
            purposes=purposes,
            audience=audience,
            now=now,
            leeway=self.settings.leeway,
            ceilings=self.settings.max_ttl,
        )
        if audience is None:
            client = self.client(claims.aud)
            if client is None or client.disabled:
                raise errors.UnknownLink(jti=claims.jti)
        return claims

    def verify(
        self,
        token: Any,
        *,
        purposes: Collection[str],
        audience: str | None,
        now: int | None = None,
        via: str = "api",
    ) -> Verified:
        """Full verification, ledger included, consuming nothing."""
        now = self.now() if now is None else now
        try:
            claims = self.check_token(token, purposes=purposes, audience=audience, now=now)
            rec = ledger.check_outstanding(
                ledger.get(self.engine, claims.jti, claims.exp),
                jti=claims.jti,
                client_id=claims.aud,
                purpose=claims.pur,
                subject=claims.sub,
            )
        except errors.LinkError as exc:
            self._rejected(exc, audience, now, via=via, action="verify", purposes=purposes)
            raise
        for fn in self.observers:
            fn("verify", "valid", (rec.purpose,), rec.client_id)
        return Verified(claims, rec)

    def redeem(
        self,
        token: Any,
        *,
        purposes: Collection[str],
        audience: str | None,
        now: int | None = None,
        via: str = "api",
        actor: str | None = None,
        completion_hash: str | None = None,
        on_consumed: Callable[[Connection, ledger.LinkRecord], None] | None = None,
    ) -> Verified:
        """Verify and consume, once. Raises LinkError (``used`` for every loser of a race).
        ``on_consumed`` runs in the consuming transaction (see :func:`ledger.consume`)."""
        now = self.now() if now is None else now
        try:
            claims = self.check_token(token, purposes=purposes, audience=audience, now=now)
            rec = ledger.consume(
                self.engine,
                jti=claims.jti,
                exp=claims.exp,
                client_id=claims.aud,
                purpose=claims.pur,
                subject=claims.sub,
                now=now,
                via=via,
                actor=actor,
                completion_hash=completion_hash,
                sink=self.sinks.get(self.engine, claims.aud),
                on_consumed=on_consumed,
            )
        except errors.LinkError as exc:
            # consume() has already written the history of a link that left ``issued``.
            self._rejected(
                exc,
                audience,
                now,
                via=via,
                action="redeem",
                purposes=purposes,
                recorded=isinstance(exc, (errors.Used, errors.Revoked, errors.Superseded)),
            )
            raise
        logs.info(
            log,
            "link redeemed",
            jti=rec.jti,
            client=rec.client_id,
            purpose=rec.purpose,
            outcome="consumed",
            via=via,
        )
        for fn in self.observers:
            fn("redeem", "consumed", (rec.purpose,), rec.client_id)
        return Verified(claims, rec)

    def _rejected(
        self,
        exc: errors.LinkError,
        audience: str | None,
        now: int,
        *,
        via: str,
        action: str,
        recorded: bool = False,
        purposes: Collection[str] = (),
    ) -> None:
        logs.info(
            log,
            "link rejected",
            jti=exc.jti,
            client=audience,
            outcome="rejected",
            reason=exc.reason,
            action=action,
            via=via,
        )
        for fn in self.observers:
            fn(action, exc.reason, purposes, audience)
        # Only a token that passed the signature check names a jti; note the attempt in its history.
        if (
            exc.jti is not None
            and not recorded
            and action == "redeem"
            and not isinstance(exc, errors.UnknownLink)
        ):
            ledger.record_rejection(self.engine, exc.jti, audience, exc.reason, now, via=via)

    # -- state and revocation --------------------------------------------------------

    def status(self, client: Client, jti: str) -> tuple[ledger.LinkRecord, list[ledger.Event]]:
        with db.read(self.engine) as conn:
            rec = ledger.get(conn, jti)
            if rec is None or rec.client_id != client.id:
                raise errors.UnknownLink(jti=jti)
            return rec, ledger.history(conn, rec)

    def revoke(
        self, client: Client, jti: str, now: int | None = None
    ) -> tuple[ledger.LinkRecord, int]:
        now = self.now() if now is None else now
        rec, n = ledger.revoke(
            self.engine,
            jti=jti,
            client_id=client.id,
            now=now,
            sink=self.sinks.get(self.engine, client.id),
        )
        log.info(
            "link revoked",
            extra={"jti": jti, "client": client.id, "outcome": "revoked", "count": n},
        )
        return rec, n

    def revoke_subject(
        self, client: Client, subject: str, purposes: Collection[str] | None, now: int | None = None
    ) -> int:
        now = self.now() if now is None else now

        def void_codes(conn: Connection) -> None:
            codes.void_subject(
                conn, client_id=client.id, subject=subject, purposes=purposes, now=now
            )

        n = ledger.revoke_subject(
            self.engine,
            client_id=client.id,
            subject=subject,
            purposes=purposes,
            now=now,
            sink=self.sinks.get(self.engine, client.id),
            on_revoked=void_codes,
        )
        log.info("subject revoked", extra={"client": client.id, "outcome": "revoked", "count": n})
        return n

    def links_of(
        self,
        client: Client,
        subject: str,
        *,
        states: Collection[str] | None = None,
        purposes: Collection[str] | None = None,
        before: tuple[int, str] | None = None,
        limit: int = 50,
    ) -> tuple[list[ledger.LinkRecord], tuple[int, str] | None]:
        """The subject's links of this client, newest first, and where the next page starts."""
        with db.read(self.engine) as conn:
            return ledger.links_of(
                conn,
                client_id=client.id,
                subject=subject,
                states=states,
                purposes=purposes,
                before=before,
                limit=limit,
            )

    def client_by_key(self, api_key: str) -> Client | None:
        """The enabled client holding ``api_key``; a found client is cached for a few seconds,
        so disabling a client or rotating its key takes effect within that bound."""
        key_hash = clients.hash_api_key(api_key)
        client = self.client_cache.get(key_hash)
        if client is None:
            with db.read(self.engine) as conn:
                client = clients.by_api_key_hash(conn, key_hash)
            if client is not None:
                self.client_cache.put(key_hash, client)
        return client

    def client(self, client_id: str) -> Client | None:
        with db.read(self.engine) as conn:
            return clients.get(conn, client_id)

    def ready(self) -> bool:
        return db.ping(self.engine)
