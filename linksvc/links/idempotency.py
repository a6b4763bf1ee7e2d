"""Idempotent minting: one ``Idempotency-Key`` of one client names at most one link.

A mint that carries the header first *claims* the key (one row keyed on the client and a
hash of the key, inserted or found in one write transaction, so of any number of
concurrent requests exactly one claims it), mints as usual, then *completes* the claim
with the link's facts. Every later request with the key and the same body is answered
from the claim: the same jti and claims (the token is signed afresh — tokens are never
stored — and both strings name the one ledger row, consumed once); no second mail, no
second supersede. Another body is refused. A mint that fails releases its claim, so a
retry can mint; a claim left pending by a worker that died is taken over after
:data:`PENDING_SECONDS`.

Known window: a worker killed between the mint's commit and the completion (a few
milliseconds, or a hung mail server past the worker timeout) leaves a pending claim whose
takeover mints a second link.

This module knows nothing of Flask; ``now`` is always a parameter.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from linksvc.store import db

#: How long a key names its link.
WINDOW_SECONDS = 24 * 3600
#: A claim still pending after this long belongs to a request that died; it may be taken over.
#: Far above anything a mint may take (database timeouts of seconds, mail within the worker timeout).
PENDING_SECONDS = 120
#: What a key may be: 1-255 characters of the URL-safe and base64 alphabets (UUIDs, ULIDs,
#: random tokens). Anything else is refused rather than normalised, so two spellings never
#: name one key.
KEY_RE = re.compile(r"[A-Za-z0-9._:~+/=-]{1,255}")

NEW, PENDING, DONE, MISMATCH = "new", "pending", "done", "mismatch"


@dataclasses.dataclass(frozen=True)
class Claim:
    """What :func:`claim` found: ``new`` (this request mints), ``pending`` (another request
    with the key is minting), ``done`` (answer ``link``), ``mismatch`` (another body)."""

    outcome: str
    key_hash: str
    created_at: int
    link: dict[str, Any] | None = None


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def _canonical(body: dict[str, Any]) -> bytes:
    # Member order and absent-versus-null do not matter.
    return json.dumps(
        {k: v for k, v in body.items() if v is not None},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode("ascii")


def request_hash(body: dict[str, Any], *, secret: bytes) -> str:
    """A keyed hash of the parsed request. Keyed because a body may name a recipient
    (``email``): a plain hash in a database dump would confirm a guessed address offline."""
    key = hmac.new(secret, b"linksvc.idempotency.request", hashlib.sha256).digest()
    return hmac.new(key, _canonical(body), hashlib.sha256).hexdigest()


def legacy_request_hash(body: dict[str, Any]) -> str:
    """The unkeyed hash rows held before :func:`request_hash` was keyed. Compared, never
    stored, so that a retry of a request made just before the upgrade is still recognised
    rather than refused as another body; such rows are gone :data:`WINDOW_SECONDS` later,
    and this can go one release after."""
    return hashlib.sha256(_canonical(body)).hexdigest()


_T = db.idempotency_keys


def _row(conn: Connection, client_id: str, khash: str) -> sa.RowMapping | None:
    return (
        conn.execute(sa.select(_T).where(_T.c.client_id == client_id, _T.c.key_hash == khash))
        .mappings()
        .first()
    )


def _insert_if_absent(conn: Connection, values: dict[str, Any]) -> bool:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt: Any = pg_insert(_T).values(**values).on_conflict_do_nothing()
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(_T).values(**values).on_conflict_do_nothing()
    # RETURNING, not rowcount: psycopg reports no row count for INSERT … ON CONFLICT here.
    return conn.execute(stmt.returning(_T.c.key_hash)).first() is not None


def _link(row: sa.RowMapping) -> dict[str, Any]:
    return {
        "jti": row["jti"],
        "purpose": row["purpose"],
        "subject": row["subject"],
        "iat": row["iat"],
        "exp": row["exp"],
        "superseded": row["superseded"],
        "emailed": bool(row["emailed"]),
    }


def claim(
    engine: Engine,
    *,
    client_id: str,
    key: str,
    body_hash: str,
    now: int,
    legacy_hash: str | None = None,
) -> Claim:
    """Claim ``key`` for this request, or say who has it. Of concurrent callers with one
    key exactly one gets ``new``: on PostgreSQL the losing INSERT waits for the winner's
    commit and then does nothing; SQLite serialises write transactions. A row holding
    ``legacy_hash`` (:func:`legacy_request_hash`) is the same body too."""
    khash = key_hash(key)
    fresh = {
        "client_id": client_id,
        "key_hash": khash,
        "request_hash": body_hash,
        "created_at": now,
    }
    with db.write(engine) as conn:
        if _insert_if_absent(conn, fresh):
            return Claim(NEW, khash, now)
        row = _row(conn, client_id, khash)
        if row is None:  # pragma: no cover - deleted between the two statements; try once more
            if _insert_if_absent(conn, fresh):
                return Claim(NEW, khash, now)
            row = _row(conn, client_id, khash)
            assert row is not None
        stale = row["created_at"] < now - WINDOW_SECONDS or (
            row["jti"] is None and row["created_at"] < now - PENDING_SECONDS
        )
        if stale:
            # Conditional on the row as read: of two takers, one changes it.
            taken = conn.execute(
                sa.update(_T)
                .where(
                    _T.c.client_id == client_id,
                    _T.c.key_hash == khash,
                    _T.c.created_at == row["created_at"],
                )
                .values(
                    request_hash=body_hash,
                    created_at=now,
                    jti=None,
                    purpose=None,
                    subject=None,
                    iat=None,
                    exp=None,
                    superseded=None,
                    emailed=False,
                )
            ).rowcount
            if taken == 1:
                return Claim(NEW, khash, now)
            row = _row(conn, client_id, khash)
            assert row is not None
        if not (
            hmac.compare_digest(row["request_hash"], body_hash)
            or (legacy_hash is not None and hmac.compare_digest(row["request_hash"], legacy_hash))
        ):
            return Claim(MISMATCH, khash, row["created_at"])
        if row["jti"] is None:
            return Claim(PENDING, khash, row["created_at"])
        return Claim(DONE, khash, row["created_at"], _link(row))


def complete(
    engine: Engine,
    *,
    client_id: str,
    claim: Claim,
    jti: str,
    purpose: str,
    subject: str,
    iat: int,
    exp: int,
    superseded: int,
    emailed: bool,
) -> None:
    """Record the link a claimed key minted; from now on the key answers it."""
    with db.write(engine) as conn:
        conn.execute(
            sa.update(_T)
            .where(
                _T.c.client_id == client_id,
                _T.c.key_hash == claim.key_hash,
                _T.c.created_at == claim.created_at,
            )
            .values(
                jti=jti,
                purpose=purpose,
                subject=subject,
                iat=iat,
                exp=exp,
                superseded=superseded,
                emailed=emailed,
            )
        )


def release(engine: Engine, *, client_id: str, claim: Claim) -> None:
    """Give up a claim whose mint failed, so that a retry may mint."""
    with db.write(engine) as conn:
        conn.execute(
            sa.delete(_T).where(
                _T.c.client_id == client_id,
                _T.c.key_hash == claim.key_hash,
                _T.c.created_at == claim.created_at,
                _T.c.jti.is_(None),
            )
        )


def purge(engine: Engine, *, now: int, batch_size: int = 1000) -> int:
    """Delete keys older than the window, in batches. Returns how many."""
    cutoff = now - WINDOW_SECONDS - PENDING_SECONDS

    def batch(conn: Connection) -> int | None:
        rows = conn.execute(
            sa.select(_T.c.client_id, _T.c.key_hash)
            .where(_T.c.created_at < cutoff)
            .limit(batch_size)
        ).all()
        if not rows:
            return None
        return sum(
            conn.execute(
                sa.delete(_T).where(
                    _T.c.client_id == client_id, _T.c.key_hash == khash, _T.c.created_at < cutoff
                )
            ).rowcount
            for client_id, khash in rows
        )

    return db.in_batches(engine, batch)[0]
