"""What the ledger tells of links: a link's history (stored events, with ``minted`` and
``consumed`` derived from its row), a subject's links page by page, and the ``viewed``
note a page writes when it shows a link."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from linksvc import errors
from linksvc.links.ledger.records import CONSUMED, Event, LinkRecord, from_mapping
from linksvc.links.ledger.statements import COUNT_EVENTS, add_event
from linksvc.store import db
from linksvc.webhooks import outbox


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
            n = conn.execute(COUNT_EVENTS, {"k_jti": rec.jti, "k_event": "viewed"}).scalar_one()
        if n < limit:
            sink = sinks.get(engine, rec.client_id)
            with db.write(engine) as conn:
                add_event(conn, rec.jti, "viewed", now, via=via, actor=actor)
                if sink is not None:
                    sink.emit_link(conn, "link.viewed", rec, now=now, facts=facts(n))
    except errors.ServiceUnavailable:
        pass


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
    page = [from_mapping(r) for r in rows[:limit]]
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
