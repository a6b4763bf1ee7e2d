"""The ledger's statements, each defined once and built once (constructing a Core
statement per call costs more CPU than running it), run by :func:`linksvc.store.db.run`
wherever the caller chooses: alone in autocommit on the hot connection, or in the caller's
transaction. With them, the reads of a link and the writes of its history events, which
every transition shares."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from linksvc.links.ledger.records import CONSUMED, ISSUED, LINK_COLUMNS, LinkRecord, from_row
from linksvc.store import db
from linksvc.webhooks import outbox

_EVENT_COLUMNS = ("jti", "at", "event", "reason", "via", "actor")

_INSERT_EVENT = db.Statement(
    sa.insert(db.link_events).values({k: sa.bindparam(k) for k in _EVENT_COLUMNS})
)

INSERT_LINK = db.Statement(
    sa.insert(db.links).values(
        {
            c: sa.bindparam(c)
            for c in LINK_COLUMNS
            if c not in ("state_at", "state_via", "completion_hash")
        }
    )
)

LOCK = sa.select(sa.func.pg_advisory_xact_lock(sa.bindparam("k", type_=sa.BigInteger())))

_SELECT_LINK = sa.select(db.links).where(db.links.c.jti == sa.bindparam("k_jti"))

_GET = db.Statement(_SELECT_LINK)

_GET_AT = db.Statement(_SELECT_LINK.where(db.links.c.exp == sa.bindparam("k_exp")))

# The condition of the partial index (migration 0010) repeated, so the planner may use it.
_GET_BY_HANDLE = db.Statement(
    sa.select(db.links).where(
        db.links.c.handle_hash == sa.bindparam("k_handle"), db.links.c.handle_hash.is_not(None)
    )
)

CONSUME = db.Statement(
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


def _with_event(change: Any, *returning: Any) -> db.Statement:
    """``change`` (an INSERT or UPDATE of links ``RETURNING`` the row) and the webhook
    outbox rows of its event, as one PostgreSQL statement: ``WITH c AS (change RETURNING …),
    e AS (INSERT INTO webhook_outbox … SELECT … FROM c) SELECT … FROM c`` — the change and its
    event in one round trip, committed together. Bound with :meth:`outbox.Event.params`."""
    changed = change.cte("changed")
    return db.Statement(
        sa.select(*(changed.c[c.name] for c in returning)).add_cte(
            outbox.insert_from(changed).cte("emitted")
        ),
        writes=True,
    )


# For clients with webhooks, on PostgreSQL. SQLite has no data-modifying CTE (and no
# network round trip to save): there the event is a second statement in one transaction.
INSERT_LINK_EMIT = _with_event(
    INSERT_LINK.stmt.returning(db.links.c.jti, db.links.c.client_id),  # type: ignore[attr-defined]
    db.links.c.jti,
)

CONSUME_EMIT = _with_event(CONSUME.stmt, *db.links.c)

_EMIT = db.Statement(outbox.EMIT)


def change_with_event(
    engine: Engine,
    change: tuple[db.Statement, db.Statement],
    params: Mapping[str, Any],
    event: outbox.Event,
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
        rows = db.run(engine, change[1], {**params, **event.params()})
        return rows[0] if rows else None
    with db.driver_transaction(engine) as tx:
        rows = db.run(tx, change[0], params)
        if rows or not returns:
            db.run(tx, _EMIT, event.params())
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


COUNT_EVENTS = (
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
    seen = conn.execute(COUNT_EVENTS, {"k_jti": jti, "k_event": "rejected"}).scalar_one()
    if seen < MAX_REJECTION_EVENTS:
        add_event(conn, jti, "rejected", now, reason=reason, via=via, actor=actor)


SETTLE = (
    sa.update(db.links)
    .where(db.links.c.jti == sa.bindparam("k_jti"), db.links.c.state == ISSUED)
    .values(
        state=sa.bindparam("k_state"),
        state_at=sa.bindparam("k_now"),
        state_via=sa.bindparam("k_via"),
    )
    .returning(db.links.c.purpose, db.links.c.subject)
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
    return from_row(rows[0]) if rows else None


def get_by_handle(on: db.On, handle_hash: str) -> LinkRecord | None:
    """The link whose short-link handle hashes to ``handle_hash`` (linksvc.links.handles). On
    PostgreSQL it probes each day's partial index (only short links are in it), as a lookup
    by ``jti`` alone does."""
    rows = db.run(on, _GET_BY_HANDLE, {"k_handle": handle_hash})
    return from_row(rows[0]) if rows else None
