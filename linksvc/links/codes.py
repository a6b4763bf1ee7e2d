"""One-time codes: how a hosted sign-in or reset hands its result to the application.

When the user presses the button on a confirmation page, the link is consumed and the
browser is sent to the application's registered redirect URI with ``?code=…``. The
application exchanges the code once, over the authenticated API, for the subject,
purpose, jti and data of the link. A code:

- is derived, not stored: ``HMAC(secret, jti | browser nonce)``; only its SHA-256 is in
  the ``codes`` table, so a database dump holds nothing a browser could use;
- lives ``settings.code_ttl`` seconds (60 by default) and is bound to the link's client;
- is spent by one conditional UPDATE whose row count picks the single winner;
- is stored in the transaction that consumes its link, and voided before its exchange by a
  revocation of its subject, the disabling of its client or the removal of the key that
  signed its link (``410 code_revoked``): an account suspended mid-sign-in stays out.

Because the code is a function of the link and of the nonce cookie of the browser that
pressed the button, a second press from the same browser (a double click, a resubmitted
form) can re-create the very same code and reach the same completion, while any other
browser cannot. This module knows nothing of Flask; ``now`` is always a parameter.

A code travels in a URL, and a URL can be carried into another browser: an attacker who
completes a sign-in of their own and sends a victim's browser to their ``…?code=`` would
sign the victim in to the attacker's account (login CSRF), and a code that leaked from a
URL would sign its finder in. So a flow can be *bound*, as OAuth's PKCE does (RFC 7636,
S256 only): the application keeps a random ``code_verifier`` in the session of the browser
that asks, sends its ``code_challenge`` when it mints the link or starts the sign-in (kept
on the link's row, never in the token), and presents the verifier with the code. The
exchange then needs both to agree — a bound code with a wrong or no verifier, and an
unbound code presented with one (a downgrade: the attacker's code from a flow that was
never bound), are refused, and the code is spent by that attempt: it was carried into a
browser that did not start its flow, where it can never become right, and a verifier is
never guessed one try at a time.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import logging
import re
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from linksvc import errors
from linksvc.config import HARD_MAX_CODE_TTL, HARD_MAX_LEEWAY, PAGE_PURPOSES
from linksvc.links import ledger
from linksvc.store import db
from linksvc.webhooks import outbox

if TYPE_CHECKING:  # linksvc.links.service revokes through this module: no import back at run time
    from linksvc.links.service import LinkService

log = logging.getLogger("linksvc.codes")

#: A second press from the same browser this soon after the first reaches the same completion.
DOUBLE_SUBMIT_WINDOW = 10
#: Longest string accepted as a code before any lookup.
MAX_CODE_LENGTH = 128
#: RFC 7636: a verifier is 43-128 unreserved characters (its challenge: ledger.CHALLENGE_RE).
VERIFIER_RE = re.compile(r"[A-Za-z0-9._~-]{43,128}")


class CodeError(Exception):
    """A code was refused; ``reason`` is the stable code of the API answer."""

    reason = "invalid_code"
    status = 404
    default_detail = "No such code for this client."

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.default_detail)
        self.detail = detail or self.default_detail


class InvalidCode(CodeError):
    pass


class CodeUsed(CodeError):
    reason = "code_used"
    status = 409
    default_detail = "The code has already been exchanged."


class CodeExpired(CodeError):
    reason = "code_expired"
    status = 410
    default_detail = "The code has expired; the user must request a new link."


class CodeRevoked(CodeError):
    reason = "code_revoked"
    status = 410
    default_detail = (
        "The code was voided (its subject was revoked, its client disabled, its key "
        "removed, or it was presented with a wrong code_verifier); the user must request a "
        "new link."
    )


class CodeVerifierRequired(CodeError):
    """A bound flow's code presented without a verifier: it is spent (see the module)."""

    reason = "code_verifier_required"
    status = 422
    default_detail = (
        "This code's flow was started with a code_challenge: send the code_verifier kept in "
        "the session of the browser that started it. The code is spent; do not sign anyone in."
    )


class CodeVerifierMismatch(CodeError):
    """A code presented with a verifier its flow was not started with: it is spent."""

    reason = "code_verifier_mismatch"
    status = 422
    default_detail = (
        "The code_verifier does not match the code_challenge its flow was started with (or "
        "the flow was started without one): the code reached a browser that did not start "
        "its flow. The code is spent; do not sign anyone in."
    )


def challenge_of(verifier: str) -> str:
    """The S256 ``code_challenge`` of ``verifier``: BASE64URL(SHA-256(verifier)), unpadded."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclasses.dataclass(frozen=True)
class Exchanged:
    subject: str
    purpose: str
    jti: str
    data: Any
    client_id: str

    @classmethod
    def of(cls, rec: ledger.LinkRecord) -> Exchanged:
        return cls(rec.subject, rec.purpose, rec.jti, rec.data, rec.client_id)


@dataclasses.dataclass(frozen=True)
class Completion:
    """The outcome of a button press.

    ``code`` is ``None`` when there is nothing to hand over: the link has no redirect URI.
    """

    record: ledger.LinkRecord
    code: str | None
    repeated: bool


def completion_hash(nonce: str) -> str:
    """What ``links.completion_hash`` holds: the SHA-256 of the browser's nonce."""
    return hashlib.sha256(b"linksvc.nonce\x00" + nonce.encode("utf-8")).hexdigest()


def derive(secret: bytes, jti: str, nonce: str) -> str:
    """The code for ``jti`` pressed by the browser holding ``nonce`` (256 bits, base64url)."""
    key = hmac.new(
        secret, b"linksvc.code-key", hashlib.sha256
    ).digest()  # domain-separated from other uses
    mac = hmac.new(key, f"{jti}|{nonce}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def hash_code(code: str) -> str:
    return hashlib.sha256(code.encode("utf-8")).hexdigest()


def insert(conn: Connection, h: str, *, jti: str, client_id: str, now: int, ttl: int) -> None:
    """Record the code hashed ``h`` for the link ``jti``, alive ``ttl`` seconds, in ``conn``'s
    transaction (the one that consumes the link)."""
    conn.execute(
        _INSERT,
        {
            "code_hash": h,
            "jti": jti,
            "client_id": client_id,
            "created_at": now,
            "expires_at": now + ttl,
            "used_at": None,
        },
    )


_INSERT = sa.insert(db.codes)


def _void(conn: Connection, client_id: str, now: int, *where: Any) -> int:
    """Void the live codes of ``client_id`` that match ``where``. Returns how many."""
    c = db.codes.c
    return conn.execute(
        sa.update(db.codes)
        .where(
            c.client_id == client_id,
            c.used_at.is_(None),
            c.voided_at.is_(None),
            c.expires_at > now,
            *where,
        )
        .values(voided_at=now)
    ).rowcount


def void_client(conn: Connection, client_id: str, now: int) -> int:
    """Void every live code of ``client_id`` (the client is being disabled). Returns how many."""
    return _void(conn, client_id, now)


def void_subject(
    conn: Connection,
    *,
    client_id: str,
    subject: str,
    purposes: Collection[str] | None,
    now: int,
) -> int:
    """Void the live codes of ``subject``'s consumed links (of ``purposes``), in the
    transaction that revokes the subject (:func:`linksvc.links.ledger.revoke_subject`):
    nobody signs in with a code made before the revocation. Returns how many."""
    t = db.links.c
    links = [
        t.client_id == client_id,
        t.subject == subject,
        t.state == ledger.CONSUMED,
        # A live code was made at most its lifetime ago, by a consume within the leeway
        # past the link's exp: older links cannot have one (and their partitions are skipped).
        t.exp >= now - HARD_MAX_CODE_TTL - HARD_MAX_LEEWAY,
    ]
    if purposes:
        links.append(t.purpose.in_(list(purposes)))
    return _void(conn, client_id, now, db.codes.c.jti.in_(sa.select(t.jti).where(*links)))


def purge(
    engine: Engine, *, expired_before: int, batch_size: int = 1000, max_batches: int | None = None
) -> tuple[int, int]:
    """Delete the codes that expired before ``expired_before``, in batches (``flask purge``
    passes the ledger's retention cutoff: a code goes as its link goes). Returns how many,
    and how many batches ran."""
    c = db.codes.c
    expired = c.expires_at < expired_before

    def batch(conn: Connection) -> int | None:
        hashes = conn.execute(sa.select(c.code_hash).where(expired).limit(batch_size)).scalars()
        found = list(hashes)
        if not found:
            return None
        # The condition again in the DELETE: only what is expired, whatever was read.
        return conn.execute(sa.delete(db.codes).where(c.code_hash.in_(found), expired)).rowcount

    return db.in_batches(engine, batch, max_batches=max_batches)


def store(engine: Engine, code: str, *, jti: str, client_id: str, now: int, ttl: int) -> None:
    """Record ``code`` (by its hash) unless it is already recorded: a repeated press, or
    two presses racing, leave one row with the first press's expiry."""
    h = hash_code(code)
    try:
        with db.write(engine) as conn:
            exists = conn.execute(
                sa.select(db.codes.c.code_hash).where(db.codes.c.code_hash == h)
            ).first()
            if exists is None:
                insert(conn, h, jti=jti, client_id=client_id, now=now, ttl=ttl)
    except sa.exc.IntegrityError:
        pass  # the racing press inserted the same row first


_c, _l, _k, _cl = db.codes.c, db.links.c, db.signing_keys.c, db.clients.c
#: Spend a code: one conditional UPDATE, which also checks — in the same statement, so no
#: cached client or key ring can be stale — that the client is enabled and that the key
#: that signed the code's link has not been removed.
_EXCHANGE = db.Statement(
    sa.update(db.codes)
    .where(
        _c.code_hash == sa.bindparam("k_hash"),
        _c.client_id == sa.bindparam("k_client"),
        _c.used_at.is_(None),
        _c.voided_at.is_(None),
        _c.expires_at > sa.bindparam("k_now"),
        sa.exists().where(_cl.id == _c.client_id, _cl.disabled == sa.false()),
        # The link's row: its flow binding agrees with the verifier presented (both absent,
        # or the challenge of the verifier), and the key that signed it is not removed.
        sa.exists().where(
            _l.jti == _c.jti,
            sa.func.coalesce(_l.state_detail, "") == sa.bindparam("k_bind"),
            ~sa.exists().where(_k.kid == _l.kid, _k.state == "removed"),
        ),
    )
    .values(used_at=sa.bindparam("k_now"))
    .returning(_c.jti)
)
#: Spend a live code that was presented with the wrong binding (see the module).
_BURN = (
    sa.update(db.codes)
    .where(
        _c.code_hash == sa.bindparam("k_hash"),
        _c.used_at.is_(None),
        _c.voided_at.is_(None),
    )
    .values(voided_at=sa.bindparam("k_now"))
)


def exchange(
    engine: Engine,
    code: Any,
    *,
    client_id: str,
    now: int,
    sink: outbox.Sink | None = None,
    code_verifier: str | None = None,
) -> Exchanged:
    """Spend ``code`` for ``client_id``, once. Raises :class:`CodeError`.

    Another client's attempt is refused as ``invalid_code`` and does **not** spend the
    code: the condition on ``client_id`` is part of the UPDATE, so a code that leaked to
    another registered application cannot be used by it, nor burnt to lock out the user.
    ``code_verifier`` (already of the RFC 7636 form) must agree with the flow's binding;
    when it does not, the code is spent and :class:`CodeVerifierRequired` or
    :class:`CodeVerifierMismatch` raised.
    """
    if not isinstance(code, str) or not code or len(code) > MAX_CODE_LENGTH or not code.isascii():
        raise InvalidCode()
    h = hash_code(code)
    challenge = None if code_verifier is None else challenge_of(code_verifier)
    params = {
        "k_hash": h,
        "k_client": client_id,
        "k_now": now,
        "k_bind": ledger.stored_challenge(challenge) or "",
    }
    if sink is None:
        done = _exchange_fast(engine, params)
        if done is not None:
            return done
    c = db.codes
    failure: CodeError
    with db.write(engine) as conn:
        spent = db.run(conn, _EXCHANGE, params)
        row = conn.execute(sa.select(c).where(c.c.code_hash == h)).mappings().first()
        if spent and row is not None:
            rec = ledger.get(conn, row["jti"])
            if rec is None:  # purged under us: cannot happen within a code's lifetime
                raise InvalidCode()
            ledger.add_event(conn, rec.jti, "exchanged", now, via="code")
            if sink is not None:
                sink.emit_link(conn, "code.exchanged", rec, now=now)
            return Exchanged.of(rec)
        if row is None or row["client_id"] != client_id:
            if row is not None:
                log.warning(
                    "code presented by another client",
                    extra={
                        "jti": row["jti"],
                        "client": client_id,
                        "outcome": "rejected",
                        "reason": "invalid_code",
                    },
                )
            failure = InvalidCode()
        elif row["used_at"] is not None:
            failure = CodeUsed()
        elif row["voided_at"] is not None:
            failure = CodeRevoked()
        elif row["expires_at"] <= now:
            failure = CodeExpired()
        else:
            rec = ledger.get(conn, row["jti"])
            if rec is not None and rec.code_challenge != challenge:
                failure = _refuse_binding(conn, rec, h, challenge, client_id=client_id, now=now)
            else:  # its client disabled or its key removed since the press
                failure = CodeRevoked()
        log.info(
            "code rejected",
            extra={
                "jti": row["jti"] if row is not None else None,
                "client": client_id,
                "outcome": "rejected",
                "reason": failure.reason,
            },
        )
    raise failure


def _refuse_binding(
    conn: Connection,
    rec: ledger.LinkRecord,
    h: str,
    challenge: str | None,
    *,
    client_id: str,
    now: int,
) -> CodeError:
    """Spend a live code presented with the wrong binding, note it in its link's history,
    and return the error to raise once that is committed."""
    conn.execute(_BURN, {"k_hash": h, "k_now": now})
    failure: CodeError = CodeVerifierRequired() if challenge is None else CodeVerifierMismatch()
    ledger.add_rejection(conn, rec.jti, now, reason=failure.reason, via="code")
    # A warning: a code carried into a browser that did not start its flow is what a
    # login CSRF (or a leaked code) looks like from here.
    log.warning(
        "code presented with a wrong binding",
        extra={
            "jti": rec.jti,
            "client": client_id,
            "outcome": "rejected",
            "reason": failure.reason,
        },
    )
    return failure


def _exchange_fast(engine: Engine, params: dict[str, Any]) -> Exchanged | None:
    """The winning exchange of a client without webhooks, on the driver: the spending UPDATE
    (``RETURNING`` the link it names) and the ``exchanged`` event in one transaction, then
    the link's row. None when nothing was spent: :func:`exchange` then says why."""
    now = params["k_now"]
    with db.driver_transaction(engine) as tx:
        spent = db.run(tx, _EXCHANGE, params)
        if not spent:
            return None
        jti = spent[0][0]
        ledger.add_event(tx, jti, "exchanged", now, via="code")
    rec = ledger.get(engine, jti)
    if rec is None:  # purged under us: cannot happen within a code's lifetime
        raise InvalidCode()
    return Exchanged.of(rec)


def complete(
    service: LinkService,
    token: Any,
    *,
    nonce: str,
    now: int,
    via: str = "page",
    actor: str | None = None,
) -> Completion:
    """Consume a sign-in or reset link for the browser holding ``nonce`` and make its code.

    A press that loses to an earlier press *from the same browser* (same nonce, within
    :data:`DOUBLE_SUBMIT_WINDOW` seconds) gets the same completion instead of ``used``.
    Raises :class:`~linksvc.errors.LinkError` otherwise.
    """
    secret = service.settings.secret_key
    if secret is None:
        raise errors.NotInitialised("LINKSVC_SECRET_KEY")
    ch = completion_hash(nonce)
    repeated = False
    ttl = service.settings.code_ttl

    def store_code(conn: Connection, rec: ledger.LinkRecord) -> None:
        # In the consuming transaction: a revocation either comes before the consume (which
        # then fails) or after this code is committed (and voids it).
        if rec.redirect_uri is not None:
            code = derive(secret, rec.jti, nonce)
            insert(conn, hash_code(code), jti=rec.jti, client_id=rec.client_id, now=now, ttl=ttl)

    try:
        rec = service.redeem(
            token,
            purposes=PAGE_PURPOSES,
            audience=None,
            now=now,
            via=via,
            actor=actor,
            completion_hash=ch,
            on_consumed=store_code,
        ).record
    except errors.Used as exc:
        with db.read(service.engine) as conn:
            rec_or_none = ledger.get(conn, exc.jti) if exc.jti else None
        if not _same_press(rec_or_none, ch, now):
            raise
        assert rec_or_none is not None
        rec, repeated = rec_or_none, True
    if rec.redirect_uri is None:
        return Completion(rec, None, repeated)
    # The code itself was stored by the press that consumed the link (a repeated press
    # re-derives the same one, already stored, and possibly since voided or spent).
    code = derive(secret, rec.jti, nonce)
    # A repeated press goes back to the application with the same code even when the
    # application has already exchanged it: in a double click the browser may show the
    # second answer, not the first, and the application (which set its session in this very
    # browser while handling the first) recognises the signed-in browser. Re-sending a
    # spent code grants nothing: it cannot be exchanged twice.
    return Completion(rec, code, repeated)


def _same_press(rec: ledger.LinkRecord | None, ch: str, now: int) -> bool:
    return (
        rec is not None
        and rec.state == ledger.CONSUMED
        and rec.state_via == "page"
        and rec.completion_hash is not None
        and hmac.compare_digest(rec.completion_hash, ch)
        # Either order: a press that read the clock just before the winner did is still the same press.
        and rec.state_at is not None
        and abs(now - rec.state_at) <= DOUBLE_SUBMIT_WINDOW
    )
