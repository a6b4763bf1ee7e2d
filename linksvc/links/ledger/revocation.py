"""Revocation and supersession: one conditional UPDATE of the outstanding links in scope,
with their history and webhook events, and the approved sign-ins that a revocation ends."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from linksvc import errors
from linksvc.config import HARD_MAX_LEEWAY
from linksvc.links.ledger.records import CONSUMED, ISSUED, REVOKED, SUPERSEDED, LinkRecord
from linksvc.links.ledger.statements import add_event, get
from linksvc.store import db
from linksvc.webhooks import outbox


def change_outstanding(
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
        n = change_outstanding(
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
    on_revoked: Callable[[Connection], None] | None = None,
) -> int:
    """Revoke every outstanding link of ``subject`` (optionally of ``purposes``).
    ``on_revoked`` runs next, in the same transaction: the one-time codes of its links
    consumed but not yet exchanged are voided there (:func:`linksvc.links.codes.void_subject`),
    so that an account suspended mid-sign-in stays out."""
    with db.write(engine) as conn:
        n = change_outstanding(
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
        # its code with it, so what runs now (a fresh snapshot) sees that code.
        if on_revoked is not None:
            on_revoked(conn)
        return n
