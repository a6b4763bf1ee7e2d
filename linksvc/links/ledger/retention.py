"""Retention: links and their events go once no node could still accept their tokens,
in batches (SQLite) or a day's partition at a time (PostgreSQL)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from linksvc.config import HARD_MAX_LEEWAY, HARD_MAX_TTL
from linksvc.store import db, partitions

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
    in transactions of at most ``batch_size`` rows each so it can run beside live traffic.
    Returns how many links and events it removed (``flask purge`` adds the codes,
    :func:`linksvc.links.codes.purge`, and the other tables' own retention).

    Rows of links that could still be redeemed, and of used, revoked or superseded links
    within retention, are never touched: they are what answers a replay with ``used``.
    ``max_batches`` bounds the work of one run per table (the next run continues).

    On PostgreSQL's partitioned ledger (migration 0007) links and events go a day at a time,
    as whole partitions, and the partitions of the days ahead are created. The counts then
    include ``partitions_dropped`` and ``partitions_created`` (always 0 on SQLite).
    """
    if retention_seconds < MIN_RETENTION_SECONDS:
        raise ValueError(f"retention must be at least {MIN_RETENTION_SECONDS} seconds")
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    t, e = db.links, db.link_events
    cutoff = now - retention_seconds
    removed = dict.fromkeys(
        ("links", "events", "batches", "partitions_dropped", "partitions_created"), 0
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
    return removed
