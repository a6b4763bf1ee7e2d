"""The partitioned ledger on PostgreSQL: ``links`` by day of ``exp``, ``link_events`` by day
of ``at``, so that purge drops a day's rows whole instead of deleting them one by one.

Each table has one partition per UTC day (``links_p20261201`` holds ``exp`` in
[2026-12-01 00:00, 2026-12-02 00:00)) and a default partition that catches a row whose
day has no partition yet, so a mint never fails for want of one; :func:`ensure_ahead`
creates the days ahead and moves any row found in the default partition into its day. It
runs on its own schedule (``flask --app app partitions``, hourly: docs/deploy.md), and
``purge`` runs it too; each change locks one table first, in a short transaction of its
own, and is retried on a lock timeout or a deadlock (:func:`lock`). The history is
partitioned by the event's time, not by its link's ``exp``: every
writer of an event knows ``at`` and none needs to know ``exp``, and since a link's events
all happen after it was minted (``at`` >= ``iat`` >= ``exp`` - the longest lifetime), a day
of events can go once every link that day's events could belong to is past retention.

Partitioning costs nothing on the hot path when the statement names ``exp`` (a redemption
knows it from the verified token: the planner keeps one partition); a lookup by ``jti``
alone (status, the browser pages) probes each partition's primary-key index once, which is
cheap for the handful of days a ledger holds. SQLite has none of this: its ``purge``
deletes in batches.
"""

from __future__ import annotations

import datetime
import functools
import logging
import re
import time
from collections.abc import Callable
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger("linksvc.partitions")
T = TypeVar("T")

DAY = 86400
#: Days of partitions kept ready past today. ``flask --app app partitions`` runs hourly (and
#: ``purge`` runs it too): a week of missed runs still mints into real partitions (and past
#: that, or after a clock jump, into the default one, whose rows the next run moves).
AHEAD_DAYS = 7
#: The tables and the column each is partitioned by.
KEYS = {"links": "exp", "link_events": "at"}
#: Serialises partition maintenance between concurrent purges (advisory lock key).
MAINTENANCE_LOCK = 7_252_018_007

_NAME = re.compile(r"^(links|link_events)_p(\d{8})$")


def is_partition_name(name: str) -> bool:
    """True for the names partitions of the ledger get (so schema comparisons skip them)."""
    return bool(_NAME.match(name)) or name in {f"{t}_default" for t in KEYS}


def day_name(table: str, day_start: int) -> str:
    d = datetime.datetime.fromtimestamp(day_start, datetime.UTC)
    return f"{table}_p{d:%Y%m%d}"


def day_of(t: int) -> int:
    """The start (UTC midnight, epoch seconds) of the day holding ``t``."""
    return t - t % DAY


def is_partitioned(conn: Connection, table: str = "links") -> bool:
    if conn.dialect.name != "postgresql":
        return False
    return bool(
        conn.execute(
            sa.text(
                "SELECT 1 FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
                "WHERE c.relname = :t AND c.relnamespace = current_schema()::regnamespace"
            ),
            {"t": table},
        ).first()
    )


def days(conn: Connection, table: str) -> dict[int, str]:
    """The day partitions of ``table``: {day start: partition name}."""
    names = conn.execute(
        sa.text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = CAST(:t AS regclass)"
        ),
        {"t": table},
    ).scalars()
    out = {}
    for name in names:
        m = _NAME.match(name)
        if m and m.group(1) == table:
            d = datetime.datetime.strptime(m.group(2), "%Y%m%d").replace(tzinfo=datetime.UTC)
            out[int(d.timestamp())] = name
    return out


def lock(conn: Connection, table: str) -> None:
    """Lock ``table`` (the parent alone) against every other use until the transaction ends.

    Taken before any other change of a partition's maintenance, so that maintenance holds
    nothing while it waits: every statement of the service reaches a partition through its
    parent, locking the parent first, so it either finishes before this lock is granted or
    waits for it before it has planned — and then plans against the partitions as they are
    once maintenance has committed. Without it, moving a day's rows out of the default
    partition row-locks them and ATTACH then waits for the redemptions that wait for those
    row locks: a deadlock, a valid link answered 503 (issue 24); and a statement planned
    against the old partitions could look for a moved row where it no longer is."""
    conn.exec_driver_sql(f'LOCK TABLE ONLY "{table}" IN ACCESS EXCLUSIVE MODE')


def create_day(conn: Connection, table: str, day_start: int) -> str:
    """Create and attach the partition of ``table`` for the day at ``day_start`` (idempotent),
    first moving into it any rows of that day the default partition caught. Takes
    :func:`lock` first: run it in a transaction of its own, one table at a time
    (:func:`ensure_ahead`), never holding a lock the service may be waiting for."""
    name = day_name(table, day_start)
    key = KEYS[table]
    lo, hi = day_start, day_start + DAY
    if conn.execute(sa.text("SELECT to_regclass(:n)"), {"n": name}).scalar() is not None:
        return name
    lock(conn, table)
    # A table of the same shape, filled and then attached: ATTACH takes a lighter lock on the
    # parent than CREATE ... PARTITION OF, and builds the (empty) partition's indexes.
    conn.exec_driver_sql(
        f'CREATE TABLE "{name}" (LIKE "{table}" INCLUDING DEFAULTS INCLUDING CONSTRAINTS)'
    )
    conn.exec_driver_sql(
        f'WITH moved AS (DELETE FROM "{table}_default" WHERE {key} >= {lo} AND {key} < {hi} '
        f'RETURNING *) INSERT INTO "{name}" SELECT * FROM moved'
    )
    # The constraint lets ATTACH skip scanning the new partition.
    conn.exec_driver_sql(
        f'ALTER TABLE "{name}" ADD CONSTRAINT "{name}_range" CHECK ({key} >= {lo} AND {key} < {hi})'
    )
    conn.exec_driver_sql(
        f'ALTER TABLE "{table}" ATTACH PARTITION "{name}" FOR VALUES FROM ({lo}) TO ({hi})'
    )
    conn.exec_driver_sql(f'ALTER TABLE "{name}" DROP CONSTRAINT "{name}_range"')
    return name


def create_partitioned(conn: Connection, table: str) -> None:
    """Make ``table`` (already created, empty, ``PARTITION BY``) its default partition."""
    conn.exec_driver_sql(f'CREATE TABLE "{table}_default" PARTITION OF "{table}" DEFAULT')


def missing(conn: Connection, table: str, *, now: int, ahead_days: int = AHEAD_DAYS) -> list[int]:
    """The days of ``table`` from today to ``ahead_days`` ahead, and every day the default
    partition holds rows of, that have no partition yet (day starts, oldest first)."""
    key = KEYS[table]
    wanted = {day_of(now) + i * DAY for i in range(ahead_days + 1)}
    wanted |= set(
        conn.execute(
            sa.text(f'SELECT DISTINCT {key} / {DAY} * {DAY} FROM "{table}_default"')
        ).scalars()
    )
    return sorted(wanted - days(conn, table).keys())


def ensure(conn: Connection, *, now: int, ahead_days: int = AHEAD_DAYS) -> list[str]:
    """Create the :func:`missing` partitions of both tables in the caller's transaction (a
    migration, a test, a bench on an idle database). Beside traffic use :func:`ensure_ahead`.
    Returns the names created."""
    return [
        create_day(conn, table, day)
        for table in KEYS
        for day in missing(conn, table, now=now, ahead_days=ahead_days)
    ]


#: A try at a maintenance lock waits this long at most: the statements that queue behind a
#: waiting ACCESS EXCLUSIVE request must not reach the service's own lock timeout.
LOCK_TIMEOUT_MS = 500
#: Tries per maintenance transaction (lock timeout or deadlock), with a growing pause.
TRIES = 8
_RETRY_SQLSTATES = ("40P01", "55P03")  # deadlock_detected, lock_not_available
_pause = time.sleep  # between tries (a test replaces it)


def _in_maintenance(
    engine: Engine,
    work: Callable[[Connection], T],
    *,
    lock_timeout_ms: int = LOCK_TIMEOUT_MS,
    tries: int = TRIES,
) -> T:
    """Run ``work`` in a transaction of its own under the maintenance advisory lock (one
    maintainer at a time), retried when its lock wait times out or it is chosen as a
    deadlock's victim: the service's statements then go ahead, and the next try waits for
    them to finish. Other database trouble, or the last failure, raises ServiceUnavailable."""
    from linksvc import errors
    from linksvc.store import db

    attempt = 0
    while True:
        try:
            with db.write(engine) as conn:
                db.advisory_xact_lock(conn, MAINTENANCE_LOCK)
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
                # Counting or moving a big day's rows may take longer than the service's
                # statement timeout.
                conn.exec_driver_sql("SET LOCAL statement_timeout = 0")
                return work(conn)
        except errors.ServiceUnavailable as exc:
            orig = getattr(exc.__cause__, "orig", None)
            if getattr(orig, "sqlstate", None) not in _RETRY_SQLSTATES or attempt + 1 == tries:
                raise
            log.info(
                "partition maintenance retried",
                extra={"outcome": "retry", "reason": getattr(orig, "sqlstate", None)},
            )
            _pause(min(2.0, 0.05 * 2**attempt))
            attempt += 1


def _create_day_in(conn: Connection, *, table: str, day_start: int) -> str:
    return create_day(conn, table, day_start)


def ensure_ahead(
    engine: Engine,
    *,
    now: int,
    ahead_days: int = AHEAD_DAYS,
    lock_timeout_ms: int = LOCK_TIMEOUT_MS,
) -> list[str]:
    """Create the :func:`missing` partitions beside live traffic: each day of each table in
    a short transaction of its own (:func:`create_day` locks one table only, first), retried
    on a lock timeout or a deadlock. What ``flask --app app partitions`` and ``purge`` run.
    Returns the names created."""
    from linksvc.store import db

    created = []
    for table in KEYS:
        with db.read(engine) as conn:
            todo = missing(conn, table, now=now, ahead_days=ahead_days)
        for day in todo:
            work = functools.partial(_create_day_in, table=table, day_start=day)
            created.append(_in_maintenance(engine, work, lock_timeout_ms=lock_timeout_ms))
    return created


def _count(conn: Connection, name: str) -> int:
    return int(conn.execute(sa.text(f'SELECT count(*) FROM "{name}"')).scalar_one())


def drop_before(
    engine: Engine, table: str, cutoff: int, *, lock_timeout_ms: int = LOCK_TIMEOUT_MS
) -> tuple[list[str], int]:
    """Drop every day partition of ``table`` whose whole day is before ``cutoff``; delete the
    default partition's rows before it. Returns the partitions dropped and the rows removed.

    The rows are counted, and the default partition's old rows deleted, first, each in a
    transaction of its own that locks no table; then one transaction takes :func:`lock`
    and only changes the catalog (DETACH, DROP), so the exclusive lock is held for an
    instant and nothing is held while it is awaited."""
    from linksvc.store import db

    with db.read(engine) as conn:
        counts = {
            n: _count(conn, n) for d, n in sorted(days(conn, table).items()) if d + DAY <= cutoff
        }

    def delete_old(conn: Connection) -> int:
        # Rows past the cutoff expired long ago: no statement of the service updates them.
        return conn.execute(
            sa.text(f'DELETE FROM "{table}_default" WHERE {KEYS[table]} < :c'), {"c": cutoff}
        ).rowcount

    rows = _in_maintenance(engine, delete_old, lock_timeout_ms=lock_timeout_ms)

    def detach(conn: Connection) -> list[str]:
        gone = [n for d, n in sorted(days(conn, table).items()) if d + DAY <= cutoff]
        if gone:
            lock(conn, table)
        for name in gone:
            conn.exec_driver_sql(f'ALTER TABLE "{table}" DETACH PARTITION "{name}"')
            conn.exec_driver_sql(f'DROP TABLE "{name}"')
        return gone

    gone = _in_maintenance(engine, detach, lock_timeout_ms=lock_timeout_ms)
    # A day another purge dropped meanwhile is not counted twice; none can gain rows.
    return gone, rows + sum(counts.get(name, 0) for name in gone)


def maintain(
    engine: Engine,
    *,
    now: int,
    links_cutoff: int,
    events_cutoff: int,
    lock_timeout_ms: int = LOCK_TIMEOUT_MS,
) -> dict[str, int]:
    """One purge of the partitioned ledger: partitions ahead (:func:`ensure_ahead`), then
    whole days past the cutoffs dropped (:func:`drop_before`), each change in a short
    transaction of its own under the maintenance lock. The brief exclusive lock a change
    needs on a table waits at most ``lock_timeout_ms`` for the statements in flight (they
    last milliseconds), which queue behind it meanwhile, and is tried again if it times out."""
    report = {"links": 0, "events": 0, "partitions_dropped": 0, "partitions_created": 0}
    report["partitions_created"] = len(
        ensure_ahead(engine, now=now, lock_timeout_ms=lock_timeout_ms)
    )
    for table, cutoff, field in (
        ("links", links_cutoff, "links"),
        ("link_events", events_cutoff, "events"),
    ):
        dropped, rows = drop_before(engine, table, cutoff, lock_timeout_ms=lock_timeout_ms)
        report[field] += rows
        report["partitions_dropped"] += len(dropped)
    return report
