"""The ledger: every minted link, its state, and its history.

Single use rests on one conditional UPDATE (``issued`` → ``consumed`` where the state is
still ``issued``) whose row count decides the winner, committed before the caller
answers. Keyed on ``jti``, never on the token string, which is never stored.
This module knows nothing of Flask; ``now`` is always a parameter.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from linksvc import errors
from linksvc.config import HARD_MAX_CODE_TTL, HARD_MAX_LEEWAY, HARD_MAX_TTL
from linksvc.i18n import locales
from linksvc.store import db, partitions
from linksvc.webhooks import outbox

ISSUED, CONSUMED, REVOKED, SUPERSEDED = "issued", "consumed", "revoked", "superseded"


@dataclasses.dataclass(frozen=True)
class LinkRecord(locales.L10n):
    jti: str
    client_id: str
    purpose: str
    subject: str
    kid: str
    iat: int
    exp: int
    state: str = ISSUED
    state_at: int | None = None
    state_via: str | None = None
    state_detail: str | None = None
    redirect_uri: str | None = None
    download: dict[str, Any] | None = None
    data: Any = None
    confirm: bool = False
    completion_hash: str | None = None
    #: The S256 challenge of the flow's ``code_verifier`` (linksvc.links.codes): its one-time code
    #: is exchanged only with the matching verifier, by the browser session that started it.
    code_challenge: str | None = None
    #: The language and time zone of the link's pages and mail, ``"<locale>|<zone>"`` (either
    #: side may be empty): one optional column, never in the token (PRODUCT §8).
    l10n: str | None = None
    #: A short link's handle, as its keyed hash (linksvc.links.handles); None for a JWT-only link.
    handle_hash: str | None = None


#: How ``links.state_detail`` holds a link's code challenge while it is issued or consumed.
#: That column otherwise only says why a link was revoked or superseded, which ends any
#: flow, so the two never need the row at once; a column of its own needs a migration.
CHALLENGE_PREFIX = "S256:"
#: An S256 challenge: BASE64URL(SHA-256(code_verifier)), 43 characters (RFC 7636).
CHALLENGE_RE = re.compile(r"[A-Za-z0-9_-]{43}")


def stored_challenge(challenge: str | None) -> str | None:
    """What ``links.state_detail`` holds for a flow bound to ``challenge`` (None: unbound)."""
    return None if challenge is None else CHALLENGE_PREFIX + challenge


@dataclasses.dataclass(frozen=True)
class Event:
    at: int
    event: str
    reason: str | None
    via: str | None


def _record(row: Mapping[str, Any] | sa.RowMapping) -> LinkRecord:
    detail: str | None = row["state_detail"]
    challenge: str | None = None
    if row["state"] in (ISSUED, CONSUMED) and detail and detail.startswith(CHALLENGE_PREFIX):
        challenge = detail[len(CHALLENGE_PREFIX) :]
        detail = None
    return LinkRecord(
        jti=row["jti"],
        client_id=row["client_id"],
        purpose=row["purpose"],
        subject=row["subject"],
        kid=row["kid"],
        iat=row["iat"],
        exp=row["exp"],
        state=row["state"],
        state_at=row["state_at"],
        state_via=row["state_via"],
        state_detail=detail,
        redirect_uri=row["redirect_uri"],
        download=json.loads(row["download"]) if row["download"] else None,
        data=json.loads(row["data"]) if row["data"] is not None else None,
        confirm=bool(row["confirm"]),
        completion_hash=row["completion_hash"],
        code_challenge=challenge,
        l10n=row["l10n"],
        handle_hash=row["handle_hash"],
    )


# The statements, each defined once and built once (constructing a Core statement per call
# costs more CPU than running it), run by :func:`linksvc.store.db.run` wherever the caller
# chooses: alone in autocommit on the hot connection, or in the caller's transaction.
_LINK_COLUMNS = tuple(c.name for c in db.links.c)
_EVENT_COLUMNS = ("jti", "at", "event", "reason", "via", "actor")
_INSERT_EVENT = db.Statement(
    sa.insert(db.link_events).values({k: sa.bindparam(k) for k in _EVENT_COLUMNS})
)
_INSERT_LINK = db.Statement(
    sa.insert(db.links).values(
        {
            c: sa.bindparam(c)
            for c in _LINK_COLUMNS
            if c not in ("state_at", "state_via", "completion_hash")
        }
    )
)
_LOCK = sa.select(sa.func.pg_advisory_xact_lock(sa.bindparam("k", type_=sa.BigInteger())))
_SELECT_LINK = sa.select(db.links).where(db.links.c.jti == sa.bindparam("k_jti"))
_GET = db.Statement(_SELECT_LINK)
_GET_AT = db.Statement(_SELECT_LINK.where(db.links.c.exp == sa.bindparam("k_exp")))
# The condition of the partial index (migration 0010) repeated, so the planner may use it.
_GET_BY_HANDLE = db.Statement(
    sa.select(db.links).where(
        db.links.c.handle_hash == sa.bindparam("k_handle"), db.links.c.handle_hash.is_not(None)
    )
)
_CONSUME = db.Statement(
    sa.update(db.links)
    .where(
        db.links.c.jti == sa.bindparam("k_jti"),
        # The token's exp: on PostgreSQL the planner then touches one day's partition.
        db.links.c.exp == sa.bindparam("k_exp"),
        db.links.c.state == ISSUED,
        db.links.c.client_id == sa.bindparam("k_client"),
        db.links.c.purpose == sa.bindparam("k_purpose"),
        db.links.c.subject == sa.bindparam("k_subject"),
    )
    .values(
        state=CONSUMED,
        state_at=sa.bindparam("k_now"),
        state_via=sa.bindparam("k_via"),
        completion_hash=sa.bindparam("k_hash"),
    )
    .returning(*db.links.c)
)


def _link(row: Sequence[Any]) -> LinkRecord:
    """The record of a row of ``links`` (all its columns, in order)."""
    return _record(dict(zip(_LINK_COLUMNS, row, strict=True)))


def _with_event(change: Any, *returning: Any) -> db.Statement:
    """``change`` (an INSERT or UPDATE of links ``RETURNING`` the row) and the webhook
    outbox rows of its event, as one PostgreSQL statement: ``WITH c AS (change RETURNING …),
    e AS (INSERT INTO webhook_outbox … SELECT … FROM c) SELECT … FROM c`` — the change and its
    event in one round trip, committed together. Bound with :func:`outbox.bind_params`."""
    changed = change.cte("changed")
    return db.Statement(
        sa.select(*(changed.c[c.name] for c in returning)).add_cte(
            outbox.insert_from(changed).cte("emitted")
        ),
        writes=True,
    )


# For clients with webhooks, on PostgreSQL. SQLite has no data-modifying CTE (and no
# network round trip to save): there the event is a second statement in one transaction.
_INSERT_LINK_EMIT = _with_event(
    _INSERT_LINK.stmt.returning(db.links.c.jti, db.links.c.client_id),  # type: ignore[attr-defined]
    db.links.c.jti,
)
_CONSUME_EMIT = _with_event(_CONSUME.stmt, *db.links.c)
_EMIT = db.Statement(outbox.EMIT)


def _change_with_event(
    engine: Engine,
    change: tuple[db.Statement, db.Statement],
    params: Mapping[str, Any],
    event: Mapping[str, Any],
    *,
    returns: bool,
) -> Any:
    """Run a link change and its webhook event as one committed unit, on the hot
    connection: on PostgreSQL ``change[1]``, the one statement that does both, in
    autocommit; on SQLite ``change[0]`` then the outbox insert, between ``BEGIN IMMEDIATE``
    and ``COMMIT`` (one commit, one fsync). With ``returns``, the event is written only if
    the change returned a row (a conditional UPDATE that matched). Returns the change's
    first row, or None."""
    if engine.dialect.name == "postgresql":
        rows = db.run(engine, change[1], {**params, **event})
        return rows[0] if rows else None
    with db.driver_transaction(engine) as tx:
        rows = db.run(tx, change[0], params)
        if rows or not returns:
            db.run(tx, _EMIT, event)
    return rows[0] if rows else None


def add_event(
    on: db.On,
    jti: str,
    event: str,
    now: int,
    *,
    reason: str | None = None,
    via: str | None = None,
    actor: str | None = None,
) -> None:
    """Write an event in the link's history, where ``on`` says (:func:`linksvc.store.db.run`)."""
    db.run(
        on,
        _INSERT_EVENT,
        {"jti": jti, "at": now, "event": event, "reason": reason, "via": via, "actor": actor},
    )


_COUNT_EVENTS = (
    sa.select(sa.func.count())
    .select_from(db.link_events)
    .where(
        db.link_events.c.jti == sa.bindparam("k_jti"),
        db.link_events.c.event == sa.bindparam("k_event"),
    )
)

#: A leaked link replayed in a loop must not grow its history without bound.
MAX_REJECTION_EVENTS = 20


def add_rejection(
    conn: Connection,
    jti: str,
    now: int,
    *,
    reason: str,
    via: str | None = None,
    actor: str | None = None,
) -> None:
    """Note a refused attempt in the link's history, up to :data:`MAX_REJECTION_EVENTS`."""
    seen = conn.execute(_COUNT_EVENTS, {"k_jti": jti, "k_event": "rejected"}).scalar_one()
    if seen < MAX_REJECTION_EVENTS:
        add_event(conn, jti, "rejected", now, reason=reason, via=via, actor=actor)


def note_view(
    engine: Engine,
    rec: LinkRecord,
    now: int,
    *,
    via: str,
    actor: str | None,
    limit: int,
    sinks: outbox.SinkCache,
    facts: Callable[[int], dict[str, Any]],
) -> None:
    """Note that ``rec`` was shown (a ``viewed`` event, and ``link.viewed`` for a client with
    webhooks, whose facts are ``facts(earlier_views)``), for its first ``limit`` views only.
    Best effort: a page still shows when the history cannot be written."""
    try:
        with db.read(engine) as conn:
            n = conn.execute(_COUNT_EVENTS, {"k_jti": rec.jti, "k_event": "viewed"}).scalar_one()
        if n < limit:
            sink = sinks.get(engine, rec.client_id)
            with db.write(engine) as conn:
                add_event(conn, rec.jti, "viewed", now, via=via, actor=actor)
                if sink is not None:
                    sink.emit_link(conn, "link.viewed", rec, now=now, facts=facts(n))
    except errors.ServiceUnavailable:
        pass


_SETTLE = (
    sa.update(db.links)
    .where(db.links.c.jti == sa.bindparam("k_jti"), db.links.c.state == ISSUED)
    .values(
        state=sa.bindparam("k_state"),
        state_at=sa.bindparam("k_now"),
        state_via=sa.bindparam("k_via"),
    )
    .returning(db.links.c.purpose, db.links.c.subject)
)


def settle(
    conn: Connection,
    jti: str,
    state: str,
    *,
    now: int,
    via: str,
    sink: outbox.Sink | None = None,
    facts: Mapping[str, Any] | None = None,
) -> bool:
    """Move the issued link ``jti`` to ``state`` (``consumed`` or ``revoked``) for a flow
    that holds it (a sign-in step), in the caller's transaction ``conn``, with its history
    event and its ``link.consumed`` / ``link.revoked`` webhook (facts: ``facts``, then
    ``via``). False, and nothing written, when the link had already left ``issued``: the
    caller then rolls its own step back."""
    row = conn.execute(
        _SETTLE, {"k_jti": jti, "k_state": state, "k_now": now, "k_via": via}
    ).first()
    if row is None:
        return False
    event = "consumed" if state == CONSUMED else "revoked"
    add_event(conn, jti, event, now, via=via)
    if sink is not None:
        sink.emit(
            conn,
            "link." + event,
            jti=jti,
            purpose=row.purpose,
            subject=row.subject,
            now=now,
            facts={**(facts or {}), "via": via},
        )
    return True


def record_mint(
    conn: Connection,
    rec: LinkRecord,
    *,
    supersede: bool,
    now: int,
    sink: outbox.Sink | None = None,
) -> int:
    """Insert ``rec``; with ``supersede``, first retire the same client's outstanding links
    for this subject and purpose. Returns how many were superseded. With ``sink``, the
    webhook events (``link.superseded``, ``link.minted``) go into the same transaction."""
    superseded = 0
    if supersede:
        superseded = supersede_older(conn, rec, now=now, check_self=False, sink=sink)
    # No "minted" event: the row itself says when and how (see history()).
    db.run(conn, _INSERT_LINK, _link_values(rec))
    if sink is not None:
        sink.emit_link(
            conn,
            "link.minted",
            rec,
            now=now,
            facts={"expires_at": outbox.iso(rec.exp), "superseded": superseded},
        )
    return superseded


def _link_values(rec: LinkRecord) -> dict[str, Any]:
    return {
        "jti": rec.jti,
        "client_id": rec.client_id,
        "purpose": rec.purpose,
        "subject": rec.subject,
        "kid": rec.kid,
        "iat": rec.iat,
        "exp": rec.exp,
        "state": ISSUED,
        "state_detail": stored_challenge(rec.code_challenge),
        "redirect_uri": rec.redirect_uri,
        "download": json.dumps(rec.download) if rec.download is not None else None,
        "data": json.dumps(rec.data) if rec.data is not None else None,
        "confirm": rec.confirm,
        "l10n": rec.l10n,
        "handle_hash": rec.handle_hash,
    }


def insert_link(engine: Engine, rec: LinkRecord, *, sink: outbox.Sink | None = None) -> None:
    """Record a mint that supersedes nothing: one INSERT in autocommit, durable when it
    returns (see :func:`linksvc.store.db.execute`). With a ``sink`` that has endpoints,
    ``link.minted`` is written with it (:func:`_change_with_event`)."""
    if sink is None or not sink.endpoints:
        db.run(engine, _INSERT_LINK, _link_values(rec))
        return
    event = outbox.bind_params(
        "link.minted",
        client_id=rec.client_id,
        jti=rec.jti,
        purpose=rec.purpose,
        subject=rec.subject,
        now=rec.iat,
        facts={"expires_at": outbox.iso(rec.exp), "superseded": 0},
    )
    _change_with_event(
        engine,
        (_INSERT_LINK, _INSERT_LINK_EMIT),
        _link_values(rec),
        event,
        returns=False,
    )


def lock_subject(conn: Connection, client_id: str, subject: str, purpose: str) -> None:
    """Serialise supersession for one (client, subject, purpose) until the transaction ends.

    Two concurrent mints each see only committed rows, so without a lock both would find
    nothing to supersede and both links would stay issued. On PostgreSQL a transaction-level
    advisory lock, keyed by a stable 64-bit hash, makes the second wait for the first; a
    unique index cannot do it, as ``links`` is partitioned by ``exp`` and a unique index on
    a partitioned table must include the partition key. SQLite needs nothing: every write
    transaction starts with ``BEGIN IMMEDIATE`` and so holds the database's one write lock.
    """
    if conn.dialect.name != "postgresql":
        return
    digest = hashlib.blake2b(
        f"{client_id}\0{subject}\0{purpose}".encode(), digest_size=8, person=b"linksvc.sup"
    ).digest()
    conn.execute(_LOCK, {"k": int.from_bytes(digest, "big", signed=True)})


def supersede_older(
    conn: Connection,
    rec: LinkRecord,
    *,
    now: int,
    check_self: bool,
    sink: outbox.Sink | None = None,
) -> int:
    """Retire the other outstanding links of ``rec``'s client, subject and purpose, under
    :func:`lock_subject`. With ``check_self`` (``rec`` is already recorded, its mail just
    accepted), nothing happens unless ``rec`` is itself still issued: of links minted
    concurrently, the first to get here wins and the others find themselves superseded.
    Returns how many were superseded."""
    lock_subject(conn, rec.client_id, rec.subject, rec.purpose)
    if check_self:
        current = get(conn, rec.jti)
        if current is None or current.state != ISSUED:
            return 0
    return _change_outstanding(
        conn,
        SUPERSEDED,
        now,
        via="mint",
        detail=rec.jti,
        client_id=rec.client_id,
        subject=rec.subject,
        purposes=[rec.purpose],
        except_jti=rec.jti,
        sink=sink,
    )


def get(on: db.On, jti: str, exp: int | None = None) -> LinkRecord | None:
    """The link ``jti``, read where ``on`` says (:func:`linksvc.store.db.run`): given the engine,
    as committed now, by one SELECT on the hot connection, no transaction. With the token's
    ``exp`` (known once the token is verified) it reads one partition of the PostgreSQL
    ledger instead of probing each."""
    if exp is not None:
        rows = db.run(on, _GET_AT, {"k_jti": jti, "k_exp": exp})
    else:
        rows = db.run(on, _GET, {"k_jti": jti})
    return _link(rows[0]) if rows else None


def get_by_handle(on: db.On, handle_hash: str) -> LinkRecord | None:
    """The link whose short-link handle hashes to ``handle_hash`` (linksvc.links.handles). On
    PostgreSQL it probes each day's partial index (only short links are in it), as a lookup
    by ``jti`` alone does."""
    rows = db.run(on, _GET_BY_HANDLE, {"k_handle": handle_hash})
    return _link(rows[0]) if rows else None


def events(conn: Connection, jti: str, limit: int = 50) -> list[Event]:
    e = db.link_events.c
    rows = conn.execute(
        sa.select(e.at, e.event, e.reason, e.via).where(e.jti == jti).order_by(e.id).limit(limit)
    )
    return [Event(*r) for r in rows]


def links_of(
    conn: Connection,
    *,
    client_id: str,
    subject: str,
    states: Collection[str] | None,
    purposes: Collection[str] | None,
    before: tuple[int, str] | None,
    limit: int,
) -> tuple[list[LinkRecord], tuple[int, str] | None]:
    """A subject's links, newest first (by ``iat``, then ``jti``), at most ``limit``, after
    the position ``before`` (keyset pagination: stable while links are minted). Returns the
    page and the position of its last link when more follow, else None."""
    t = db.links.c
    cond = [t.client_id == client_id, t.subject == subject]
    if states:
        cond.append(t.state.in_(list(states)))
    if purposes:
        cond.append(t.purpose.in_(list(purposes)))
    if before is not None:
        iat, jti = before
        cond.append(sa.or_(t.iat < iat, sa.and_(t.iat == iat, t.jti < jti)))
    rows = (
        conn.execute(
            sa.select(db.links).where(*cond).order_by(t.iat.desc(), t.jti.desc()).limit(limit + 1)
        )
        .mappings()
        .all()
    )
    page = [_record(r) for r in rows[:limit]]
    more = len(rows) > limit
    return page, ((page[-1].iat, page[-1].jti) if more and page else None)


#: Stored events that can only follow a consumption, so sort after it within its second.
_AFTER_CONSUMED = {("exchanged", None), ("rejected", "used")}


def history(conn: Connection, rec: LinkRecord, limit: int = 50) -> list[Event]:
    """The link's history: its stored events, with ``minted`` and ``consumed`` derived from
    the row itself (the hot path does not write them twice). A link recorded before that
    change, or consumed on a page (whose event carries the actor), has them stored; they
    are then not added again."""
    stored = events(conn, rec.jti, limit)
    kinds = {e.event for e in stored}
    out = [] if "minted" in kinds else [Event(rec.iat, "minted", None, "api")]
    if rec.state != CONSUMED or "consumed" in kinds or rec.state_at is None:
        return (out + stored)[:limit]
    consumed = Event(rec.state_at, "consumed", None, rec.state_via)
    placed = False
    for e in stored:
        after = (e.event, e.reason if e.event == "rejected" else None) in _AFTER_CONSUMED
        if not placed and (e.at > consumed.at or (e.at == consumed.at and after)):
            out.append(consumed)
            placed = True
        out.append(e)
    if not placed:
        out.append(consumed)
    return out[:limit]


def check_outstanding(
    rec: LinkRecord | None, *, jti: str, client_id: str, purpose: str, subject: str
) -> LinkRecord:
    """Step 4 of verification: the link is ours, matches its token, and is still ``issued``."""
    if (
        rec is None
        or rec.client_id != client_id
        or rec.purpose != purpose
        or rec.subject != subject
    ):
        # A well-signed token with no matching row is not one we recorded: treat as unknown.
        raise errors.UnknownLink(jti=jti)
    if rec.state != ISSUED:
        raise errors.state_error(rec.state, jti, rec.state_at)
    return rec


def consume(
    engine: Engine,
    *,
    jti: str,
    exp: int,
    client_id: str,
    purpose: str,
    subject: str,
    now: int,
    via: str,
    actor: str | None = None,
    completion_hash: str | None = None,
    sink: outbox.Sink | None = None,
    on_consumed: Callable[[Connection, LinkRecord], None] | None = None,
) -> LinkRecord:
    """Consume a link once: exactly one caller racing for ``jti`` gets its record back;
    every other gets :class:`~linksvc.errors.Used` (or the state it is in). With ``sink``,
    ``link.consumed`` (or ``link.replayed``, and the client's replay policy) is written in
    the same transaction. ``on_consumed`` runs in the consuming transaction too (the one-time
    code is stored there, so a revocation either comes first or finds the code to void).

    Without a sink, an ``actor`` or ``on_consumed`` (an API redemption) the winner's change
    is one conditional ``UPDATE … RETURNING`` in autocommit: atomic and durable on its own, one
    round trip, and no ``consumed`` event (the row says it; see :func:`history`). A page
    press keeps its actor in a ``consumed`` event, in one transaction with the change.
    The row is read again only on the losing path, to say why.
    """
    params = {
        "k_jti": jti,
        "k_exp": exp,
        "k_client": client_id,
        "k_purpose": purpose,
        "k_subject": subject,
        "k_now": now,
        "k_via": via,
        "k_hash": completion_hash,
    }
    if actor is None and on_consumed is None:
        changed: Any = None
        if sink is None:
            rows = db.run(engine, _CONSUME, params)
            changed = rows[0] if rows else None
        elif sink.endpoints:
            event = outbox.bind_params(
                "link.consumed",
                client_id=client_id,
                jti=jti,
                purpose=purpose,
                subject=subject,
                now=now,
                facts={"via": via},
            )
            changed = _change_with_event(
                engine, (_CONSUME, _CONSUME_EMIT), params, event, returns=True
            )
        if changed is not None:
            return _link(changed)
    failure: errors.LinkError | None = None
    with db.write(engine) as conn:
        # RETURNING hands the winner its row in the same statement: no second read.
        rows = db.run(conn, _CONSUME, params)
        if rows:
            if actor is not None:
                add_event(conn, jti, "consumed", now, via=via, actor=actor)
            if sink is not None:
                sink.emit(
                    conn,
                    "link.consumed",
                    jti=jti,
                    purpose=purpose,
                    subject=subject,
                    now=now,
                    facts={"via": via},
                )
            won = _link(rows[0])
            if on_consumed is not None:
                on_consumed(conn, won)
            return won
        rec = get(conn, jti, exp)
        try:
            check_outstanding(rec, jti=jti, client_id=client_id, purpose=purpose, subject=subject)
            failure = errors.Used(
                jti=jti
            )  # pragma: no cover - nothing matched, yet the row looks issued
        except errors.LinkError as exc:
            failure = exc
        if rec is not None and rec.client_id == client_id:
            # Committed with the transaction: the history shows the replay attempt.
            add_rejection(conn, jti, now, reason=failure.reason, via=via, actor=actor)
            if sink is not None and rec.state == CONSUMED:
                _replayed(conn, rec, now, via=via, completion_hash=completion_hash, sink=sink)
    raise failure


def same_browser(rec: LinkRecord, completion_hash: str | None) -> bool:
    """Whether the browser presenting ``rec`` again is the one that consumed it: the
    presentation carries the keyed hash of the same per-browser cookie
    (``links.completion_hash``, written by the consumption). An API caller carries none."""
    return (
        completion_hash is not None
        and rec.completion_hash is not None
        and hmac.compare_digest(rec.completion_hash, completion_hash)
    )


def _replayed(
    conn: Connection,
    rec: LinkRecord,
    now: int,
    *,
    via: str,
    completion_hash: str | None,
    sink: outbox.Sink,
) -> None:
    """A consumed link presented again by another browser or caller: a sign it leaked.
    ``link.replayed``, and with the client's ``revoke-subject`` policy every outstanding
    link of the subject revoked.

    The browser that consumed it pressing again — a double click, a second tab, the mail's
    link clicked next day — is no replay, however late: the link is still refused as
    ``used``, but nothing leaked and nothing is revoked (:func:`same_browser`)."""
    if same_browser(rec, completion_hash):
        return
    revoked = 0
    if sink.on_replay == outbox.REVOKE_SUBJECT:
        revoked = _change_outstanding(
            conn,
            REVOKED,
            now,
            via="replay",
            detail=rec.jti,
            client_id=rec.client_id,
            subject=rec.subject,
            sink=sink,
        )
        add_event(conn, rec.jti, "replay_revoked", now, reason=f"revoked {revoked}", via="replay")
    sink.emit_link(
        conn,
        "link.replayed",
        rec,
        now=now,
        facts={
            "via": via,
            "consumed_at": outbox.iso(rec.state_at) if rec.state_at else None,
            "revoked_subject_links": revoked,
        },
    )


def record_rejection(
    engine: Engine,
    jti: str,
    client_id: str | None,
    reason: str,
    now: int,
    *,
    via: str,
    actor: str | None = None,
    redemption: bool = False,
    completion_hash: str | None = None,
) -> None:
    """Note a refused attempt against a link we know, in its history. Best effort.

    With ``redemption`` the attempt would have consumed the link (a download link's GET),
    so a consumed link presented by another browser than the one that consumed it (see
    :func:`same_browser`; ``completion_hash`` is this browser's) is a replay, handled as
    :func:`consume` handles one, in the same transaction."""
    try:
        with db.write(engine) as conn:
            rec = get(conn, jti)
            if rec is not None and (client_id is None or rec.client_id == client_id):
                add_rejection(conn, jti, now, reason=reason, via=via, actor=actor)
                if redemption and rec.state == CONSUMED:
                    sink = outbox.load_sink(conn, rec.client_id)
                    if sink is not None:
                        _replayed(
                            conn, rec, now, via=via, completion_hash=completion_hash, sink=sink
                        )
    except errors.ServiceUnavailable:
        pass


def _change_outstanding(
    conn: Connection,
    state: str,
    now: int,
    *,
    via: str,
    detail: str | None = None,
    client_id: str,
    subject: str | None = None,
    purposes: Collection[str] | None = None,
    jti: str | None = None,
    except_jti: str | None = None,
    sink: outbox.Sink | None = None,
) -> int:
    t = db.links
    # A token still verifies up to the clock-skew leeway past its exp, so a link in that
    # window must still be revocable (and supersedable); the largest leeway allowed covers it.
    scope = [t.c.client_id == client_id]
    if subject is not None:
        scope.append(t.c.subject == subject)
    if purposes:
        scope.append(t.c.purpose.in_(list(purposes)))
    if jti is not None:
        scope.append(t.c.jti == jti)
    if except_jti is not None:
        scope.append(t.c.jti != except_jti)
    cond = [*scope, t.c.state == ISSUED, t.c.exp >= now - HARD_MAX_LEEWAY]
    # One conditional UPDATE: under READ COMMITTED PostgreSQL re-checks the condition on a
    # row changed meanwhile, so a link consumed concurrently stays consumed.
    changed: list[Any] = list(
        conn.execute(
            sa.update(t)
            .where(*cond)
            .values(state=state, state_at=now, state_via=via, state_detail=detail)
            .returning(t.c.jti, t.c.purpose, t.c.subject)
        )
    )
    if state == REVOKED:
        # After the UPDATE above, in a statement of its own: a sign-in approved meanwhile
        # (its link no longer issued above) is seen here, committed, and ended.
        changed = [*changed, *end_approved_sign_ins(conn, now, via=via, detail=detail, where=scope)]
    event = "revoked" if state == REVOKED else "superseded"
    for j, _purpose, _subject, *_ in changed:
        add_event(conn, j, event, now, via=via)
    if sink is not None:
        facts = {"via": via, **({"by": detail} if state == SUPERSEDED else {})}
        for j, p, subj, *_ in changed:
            sink.emit(conn, "link." + event, jti=j, purpose=p, subject=subj, now=now, facts=facts)
    return len(changed)


#: How long after its link's ``exp`` the binding browser may still complete an approved
#: sign-in (``linksvc.signins.flow.COMPLETE_GRACE``): it polls every few seconds.
SIGN_IN_COMPLETE_GRACE = 60
#: The sign-in states (``linksvc.signins.flow``) that a revocation reads and writes.
SIGN_IN_APPROVED, SIGN_IN_ENDED = "approved", "ended"


def end_approved_sign_ins(
    conn: Connection,
    now: int,
    *,
    via: str,
    where: Collection[Any],
    detail: str | None = None,
) -> list[tuple[str, str, str, str]]:
    """End the approved, not yet completed sign-ins (``linksvc.signins.flow``) of the links
    matching ``where`` (conditions on ``links``): each sign-in becomes ``ended`` and its
    link, which the approval consumed, ``revoked``. Returns (jti, purpose, subject,
    client id) of each link so revoked; the caller writes their events.

    An approval consumes the link, yet nobody is signed in until the browser that asked
    completes it; a revocation (of the subject, the link, the client or the key) in
    between must stop that completion, or an account suspended mid-sign-in gets in.
    The sign-in row is changed first, by one conditional UPDATE, as each completion
    changes it first (``approved`` → ``completed``): whichever commits first wins, and a
    completion that won has made its code, which the revocation voids (or which its
    exchange refuses)."""
    s, t = db.sign_ins, db.links
    live = now - SIGN_IN_COMPLETE_GRACE
    ended = (
        conn.execute(
            sa.update(s)
            .where(
                s.c.state == SIGN_IN_APPROVED,
                s.c.exp >= live,
                s.c.jti.in_(
                    # exp: on PostgreSQL only the partitions of links still completable.
                    sa.select(t.c.jti).where(t.c.state == CONSUMED, t.c.exp >= live, *where)
                ),
            )
            .values(state=SIGN_IN_ENDED, state_at=now, state_detail="revoked")
            .returning(s.c.jti)
        )
        .scalars()
        .all()
    )
    if not ended:
        return []
    return [
        (j, p, subj, c)
        for j, p, subj, c in conn.execute(
            sa.update(t)
            .where(t.c.jti.in_(ended), t.c.exp >= live, t.c.state == CONSUMED)
            .values(state=REVOKED, state_at=now, state_via=via, state_detail=detail)
            .returning(t.c.jti, t.c.purpose, t.c.subject, t.c.client_id)
        )
    ]


def end_approved_sign_ins_of(
    conn: Connection,
    now: int,
    *,
    via: str,
    client_id: str | None = None,
    kids: Collection[str] = (),
) -> int:
    """:func:`end_approved_sign_ins` of a client being disabled, or of the links signed by
    the keys ``kids`` being removed, with the history and webhook events of each revoked
    link (as any revocation writes them). Returns how many were ended."""
    t = db.links
    where: list[Any] = []
    if client_id is not None:
        where.append(t.c.client_id == client_id)
    if kids:
        where.append(t.c.kid.in_(list(kids)))
    if not where:
        raise ValueError("a client or keys")
    changed = end_approved_sign_ins(conn, now, via=via, where=where)
    sinks: dict[str, outbox.Sink | None] = {}
    for j, p, subj, client in changed:
        add_event(conn, j, "revoked", now, via=via)
        if client not in sinks:
            sinks[client] = outbox.load_sink(conn, client)
        sink = sinks[client]
        if sink is not None:
            sink.emit(
                conn, "link.revoked", jti=j, purpose=p, subject=subj, now=now, facts={"via": via}
            )
    return len(changed)


def revoke(
    engine: Engine, *, jti: str, client_id: str, now: int, sink: outbox.Sink | None = None
) -> tuple[LinkRecord, int]:
    """Revoke one link of ``client_id``. Returns its record and 1, or 0 if it had already
    left ``issued`` by revocation or supersession (idempotent). Raises UnknownLink / Used."""
    with db.write(engine) as conn:
        rec = get(conn, jti)
        if rec is None or rec.client_id != client_id:
            raise errors.UnknownLink(jti=jti)
        # A consumed link may still be revoked while the sign-in its approval consumed it
        # for is not completed (see end_approved_sign_ins).
        n = _change_outstanding(
            conn, REVOKED, now, via="api", client_id=client_id, jti=jti, sink=sink
        )
        rec2 = get(conn, jti)
        assert rec2 is not None
        if rec2.state == CONSUMED:
            raise errors.Used(jti=jti, at=rec2.state_at)
        return rec2, n


def revoke_subject(
    engine: Engine,
    *,
    client_id: str,
    subject: str,
    purposes: Collection[str] | None,
    now: int,
    sink: outbox.Sink | None = None,
) -> int:
    """Revoke every outstanding link of ``subject`` (optionally of ``purposes``), and void
    the one-time codes of its links consumed but not yet exchanged: an account suspended
    mid-sign-in stays out."""
    with db.write(engine) as conn:
        n = _change_outstanding(
            conn,
            REVOKED,
            now,
            via="subject",
            client_id=client_id,
            subject=subject,
            purposes=purposes,
            sink=sink,
        )
        # After the UPDATE above: a consume racing it holds the link's row until it commits
        # its code with it, so this statement (a fresh snapshot) sees that code.
        t, c = db.links, db.codes
        cond = [
            t.c.client_id == client_id,
            t.c.subject == subject,
            t.c.state == CONSUMED,
            # A live code was made at most its lifetime ago, by a consume within the leeway
            # past the link's exp: older links cannot have one (and their partitions are skipped).
            t.c.exp >= now - HARD_MAX_CODE_TTL - HARD_MAX_LEEWAY,
        ]
        if purposes:
            cond.append(t.c.purpose.in_(list(purposes)))
        conn.execute(
            sa.update(c)
            .where(
                c.c.client_id == client_id,
                c.c.used_at.is_(None),
                c.c.voided_at.is_(None),
                c.c.expires_at > now,
                c.c.jti.in_(sa.select(t.c.jti).where(*cond)),
            )
            .values(voided_at=now)
        )
        return n


#: The shortest retention ``purge`` accepts. A purged link must fail as ``expired`` before
#: the ledger is asked (verification checks ``exp`` first), so its row may go only once no
#: node could still accept its token: past ``exp`` plus the largest leeway (60 s), with
#: ample room for the clock of the host running the purge to differ from the nodes'.
MIN_RETENTION_SECONDS = 3600


def purge(
    engine: Engine,
    *,
    now: int,
    retention_seconds: int,
    batch_size: int = 1000,
    max_batches: int | None = None,
) -> dict[str, int]:
    """Delete links whose ``exp`` is more than ``retention_seconds`` ago, with their events,
    and codes expired as long ago, in transactions of at most ``batch_size`` rows each so it
    can run beside live traffic. Returns how many links, events and codes it removed.

    Rows of links that could still be redeemed, and of used, revoked or superseded links
    within retention, are never touched: they are what answers a replay with ``used``.
    ``max_batches`` bounds the work of one run per table (the next run continues).

    On PostgreSQL's partitioned ledger (migration 0007) links and events go a day at a time,
    as whole partitions, and the partitions of the days ahead are created; codes are still
    deleted in batches. The counts then include ``partitions_dropped`` and
    ``partitions_created`` (always 0 on SQLite).
    """
    if retention_seconds < MIN_RETENTION_SECONDS:
        raise ValueError(f"retention must be at least {MIN_RETENTION_SECONDS} seconds")
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    t, e, c = db.links, db.link_events, db.codes
    cutoff = now - retention_seconds
    removed = dict.fromkeys(
        ("links", "events", "codes", "batches", "partitions_dropped", "partitions_created"), 0
    )

    with db.read(engine) as conn:
        partitioned = partitions.is_partitioned(conn)
    if partitioned:
        # PostgreSQL's partitioned ledger (linksvc.store.partitions): a day of links goes whole once
        # its last second is past the cutoff, so a row is kept for between the retention and
        # a day more. Every link left then expires at or after the cutoff's day, so its events
        # all happened after that day's start minus the longest lifetime and leeway.
        removed.update(
            partitions.maintain(
                engine,
                now=now,
                links_cutoff=cutoff,
                events_cutoff=partitions.day_of(cutoff) - HARD_MAX_TTL - HARD_MAX_LEEWAY,
            )
        )
    else:

        def links_batch(conn: Connection) -> int | None:
            jtis = [
                r[0]
                for r in conn.execute(sa.select(t.c.jti).where(t.c.exp < cutoff).limit(batch_size))
            ]
            if not jtis:
                return None
            # The condition again in the DELETE: only what is past the cutoff, whatever was read.
            gone = conn.execute(
                sa.delete(t).where(t.c.jti.in_(jtis), t.c.exp < cutoff).returning(t.c.jti)
            )
            gone_jtis = gone.scalars().all()
            removed["links"] += len(gone_jtis)
            if gone_jtis:
                removed["events"] += conn.execute(
                    sa.delete(e).where(e.c.jti.in_(gone_jtis))
                ).rowcount
            return 0

        # An attempt noted in a link's history while the link was being purged leaves an event
        # behind. An event older than the cutoff minus the longest lifetime and leeway can only
        # belong to a purged link; such events are the oldest ids, found through the primary key.
        event_cutoff = cutoff - HARD_MAX_TTL - HARD_MAX_LEEWAY

        def events_batch(conn: Connection) -> int | None:
            rows = conn.execute(sa.select(e.c.id, e.c.at).order_by(e.c.id).limit(batch_size)).all()
            ids = [i for i, at in rows if at < event_cutoff]
            if not ids:
                return None
            return conn.execute(sa.delete(e).where(e.c.id.in_(ids))).rowcount

        removed["batches"] += db.in_batches(engine, links_batch, max_batches=max_batches)[1]
        n, runs = db.in_batches(engine, events_batch, max_batches=max_batches)
        removed["events"] += n
        removed["batches"] += runs

    def codes_batch(conn: Connection) -> int | None:
        hashes = [
            r[0]
            for r in conn.execute(
                sa.select(c.c.code_hash).where(c.c.expires_at < cutoff).limit(batch_size)
            )
        ]
        if not hashes:
            return None
        return conn.execute(
            sa.delete(c).where(c.c.code_hash.in_(hashes), c.c.expires_at < cutoff)
        ).rowcount

    removed["codes"], runs = db.in_batches(engine, codes_batch, max_batches=max_batches)
    removed["batches"] += runs
    return removed
