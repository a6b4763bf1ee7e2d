"""Consuming a link, once: the conditional UPDATE whose row count picks the single winner
of a race, the losers told why, a replay by another browser handled by the client's policy,
and the settling of a link held by a sign-in step."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.engine import Connection, Engine

from linksvc import errors
from linksvc.links.ledger.records import CONSUMED, ISSUED, REVOKED, LinkRecord, from_row
from linksvc.links.ledger.revocation import change_outstanding
from linksvc.links.ledger.statements import (
    CONSUME,
    CONSUME_EMIT,
    SETTLE,
    add_event,
    add_rejection,
    change_with_event,
    get,
)
from linksvc.store import db
from linksvc.webhooks import outbox


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
    row = conn.execute(SETTLE, {"k_jti": jti, "k_state": state, "k_now": now, "k_via": via}).first()
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
            rows = db.run(engine, CONSUME, params)
            changed = rows[0] if rows else None
        elif sink.endpoints:
            event = outbox.Event(
                "link.consumed", client_id, jti, purpose, subject, at=now, facts={"via": via}
            )
            changed = change_with_event(
                engine, (CONSUME, CONSUME_EMIT), params, event, returns=True
            )
        if changed is not None:
            return from_row(changed)
    failure: errors.LinkError | None = None
    with db.write(engine) as conn:
        # RETURNING hands the winner its row in the same statement: no second read.
        rows = db.run(conn, CONSUME, params)
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
            won = from_row(rows[0])
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
        revoked = change_outstanding(
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
