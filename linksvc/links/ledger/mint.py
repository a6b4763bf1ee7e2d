"""Recording a mint: the link's row, and with ``supersede`` the retirement of the
same client's outstanding links for the subject and purpose, serialised per subject."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy.engine import Connection, Engine

from linksvc.links.ledger.records import ISSUED, SUPERSEDED, LinkRecord, stored_challenge
from linksvc.links.ledger.revocation import change_outstanding
from linksvc.links.ledger.statements import (
    INSERT_LINK,
    INSERT_LINK_EMIT,
    LOCK,
    change_with_event,
    get,
)
from linksvc.store import db
from linksvc.webhooks import outbox


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
    db.run(conn, INSERT_LINK, _link_values(rec))
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
    ``link.minted`` is written with it (:func:`change_with_event`)."""
    if sink is None or not sink.endpoints:
        db.run(engine, INSERT_LINK, _link_values(rec))
        return
    event = outbox.Event(
        "link.minted",
        rec.client_id,
        rec.jti,
        rec.purpose,
        rec.subject,
        at=rec.iat,
        facts={"expires_at": outbox.iso(rec.exp), "superseded": 0},
    )
    change_with_event(
        engine,
        (INSERT_LINK, INSERT_LINK_EMIT),
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
    conn.execute(LOCK, {"k": int.from_bytes(digest, "big", signed=True)})


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
    return change_outstanding(
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
