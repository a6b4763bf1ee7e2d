"""The partitioned ledger on PostgreSQL: ``links`` by day of ``exp``, ``link_events`` by day
of ``at``, so that purge drops a day's rows whole instead of deleting them one by one.

Each table has one partition per UTC day (``links_p20261201`` holds ``exp`` in
[2026-12-01 00:00, 2026-12-02 00:00)) and a default partition that catches a row whose
day has no partition yet, so a mint never fails for want of one; :func:`ensure` creates the
days ahead (``purge`` calls it) and moves any row found in the default partition into its
day. The history is partitioned by the event's time, not by its link's ``exp``: every
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
import re

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

DAY = 86400
#: Days of partitions kept ready past today. ``purge`` runs at least daily; a week of missed
#: runs still mints into real partitions (and past that, into the default one).
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


def create_day(conn: Connection, table: str, day_start: int) -> str:
    """Create and attach the partition of ``table`` for the day at ``day_start`` (idempotent),
    first moving into it any rows of that day the default partition caught."""
    name = day_name(table, day_start)
    key = KEYS[table]
    lo, hi = day_start, day_start + DAY
    if conn.execute(sa.text("SELECT to_regclass(:n)"), {"n": name}).scalar() is not None:
        return name
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


def ensure(conn: Connection, *, now: int, ahead_days: int = AHEAD_DAYS) -> list[str]:
    """Create the partitions from today to ``ahead_days`` ahead on both tables, and one for
    every day the default partition holds rows of. Returns the names created."""
    created = []
    for table, key in KEYS.items():
        have = days(conn, table)
        wanted = {day_of(now) + i * DAY for i in range(ahead_days + 1)}
        wanted |= set(
            conn.execute(
                sa.text(f'SELECT DISTINCT {key} / {DAY} * {DAY} FROM "{table}_default"')
            ).scalars()
        )
        for day in sorted(wanted - have.keys()):
            created.append(create_day(conn, table, day))
    return created


def _count(conn: Connection, name: str) -> int:
    return int(conn.execute(sa.text(f'SELECT count(*) FROM "{name}"')).scalar_one())


def drop_before(conn: Connection, table: str, cutoff: int) -> tuple[list[str], int]:
    """Drop every day partition of ``table`` whose whole day is before ``cutoff``; delete the
    default partition's rows before it. Returns the partitions dropped and the rows removed.
    The rows are counted first, so the exclusive lock DETACH takes on the parent is held
    only for the catalog changes."""
    doomed = [name for day, name in sorted(days(conn, table).items()) if day + DAY <= cutoff]
    rows = sum(_count(conn, name) for name in doomed)
    rows += conn.execute(
        sa.text(f'DELETE FROM "{table}_default" WHERE {KEYS[table]} < :c'), {"c": cutoff}
    ).rowcount
    for name in doomed:
        conn.exec_driver_sql(f'ALTER TABLE "{table}" DETACH PARTITION "{name}"')
        conn.exec_driver_sql(f'DROP TABLE "{name}"')
    return doomed, rows


def maintain(
    engine: Engine, *, now: int, links_cutoff: int, events_cutoff: int, lock_timeout_ms: int = 5000
) -> dict[str, int]:
    """One purge of the partitioned ledger: partitions ahead, whole days past the cutoffs
    dropped. Each table in a short transaction of its own under the maintenance lock; the
    brief exclusive lock that DETACH needs on the parent waits at most ``lock_timeout_ms``
    for the statements in flight (they last milliseconds), which queue behind it meanwhile."""
    from . import db

    def begin(conn: Connection) -> None:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": MAINTENANCE_LOCK})
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
        # Counting a big day's rows may take longer than the service's statement timeout.
        conn.exec_driver_sql("SET LOCAL statement_timeout = 0")

    report = {"links": 0, "events": 0, "partitions_dropped": 0, "partitions_created": 0}
    with db.write(engine) as conn:
        begin(conn)
        report["partitions_created"] = len(ensure(conn, now=now))
    for table, cutoff, field in (
        ("links", links_cutoff, "links"),
        ("link_events", events_cutoff, "events"),
    ):
        with db.write(engine) as conn:
            begin(conn)
            dropped, rows = drop_before(conn, table, cutoff)
            report[field] += rows
            report["partitions_dropped"] += len(dropped)
    return report
