"""partitioned ledger: links by day of exp, link_events by day of at (PostgreSQL)

On PostgreSQL the two tables become range-partitioned, one partition per UTC day plus a
default one (as linksvc/partitions.py names them), every row and every state carried across in the same
transaction; the primary keys take the partition key in (links (jti, exp), link_events
(id, at)), as a partitioned table requires. On SQLite only the primary key of links
changes, to match the models; SQLite's purge keeps deleting in batches.

The copy holds the old tables' lock for its duration — 8–12 s for 100,000 links and their
history on a shared, busy 2-core machine (tests/test_partitions.py) — so a big
ledger wants a quiet moment, and a purge first.

Revision ID: 0007
Revises: 0002
Create Date: 2026-12-01
"""

import datetime
import time

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0002"
branch_labels = None
depends_on = None

# The indexes of each table, as the models name them: (name, columns).
INDEXES = {
    "links": [
        ("ix_links_client_subject", "client_id, subject, purpose, state"),
        ("ix_links_exp", "exp"),
    ],
    "link_events": [("ix_link_events_jti", "jti, id")],
}
PARTITIONED_PK = {"links": "jti, exp", "link_events": "id, at"}
PLAIN_PK = {"links": "jti", "link_events": "id"}

# Frozen from linksvc/partitions.py as it was when this migration was written: a migration
# never imports the application, whose modules move and change after it.
DAY = 86400
AHEAD_DAYS = 7
KEYS = {"links": "exp", "link_events": "at"}


def _day_name(table: str, day_start: int) -> str:
    d = datetime.datetime.fromtimestamp(day_start, datetime.UTC)
    return f"{table}_p{d:%Y%m%d}"


def _create_day(conn: sa.Connection, table: str, day_start: int) -> None:
    """Create and attach the (empty) partition of ``table`` for the day at ``day_start``."""
    name = _day_name(table, day_start)
    key = KEYS[table]
    lo, hi = day_start, day_start + DAY
    conn.exec_driver_sql(
        f'CREATE TABLE "{name}" (LIKE "{table}" INCLUDING DEFAULTS INCLUDING CONSTRAINTS)'
    )
    conn.exec_driver_sql(
        f'ALTER TABLE "{table}" ATTACH PARTITION "{name}" FOR VALUES FROM ({lo}) TO ({hi})'
    )


def _move(conn: sa.Connection, table: str, *, partitioned: bool) -> None:
    """Rebuild ``table`` in the other shape, keeping every row (and the id sequence)."""
    old = f"{table}_{'unpartitioned' if partitioned else 'partitioned'}"
    x = conn.exec_driver_sql
    x(f'ALTER TABLE "{table}" RENAME TO "{old}"')
    x(f'ALTER TABLE "{old}" DROP CONSTRAINT "{table}_pkey"')  # its name is needed again
    for name, _ in INDEXES[table]:
        x(f'DROP INDEX "{name}"')
    by = f" PARTITION BY RANGE ({KEYS[table]})" if partitioned else ""
    x(f'CREATE TABLE "{table}" (LIKE "{old}" INCLUDING DEFAULTS){by}')
    if partitioned:
        x(f'CREATE TABLE "{table}_default" PARTITION OF "{table}" DEFAULT')
        key = KEYS[table]
        data_days = conn.exec_driver_sql(
            f'SELECT DISTINCT {key} / {DAY} * {DAY} FROM "{old}"'
        ).scalars()
        now = int(time.time())
        today = now - now % DAY
        wanted = set(data_days) | {today + i * DAY for i in range(AHEAD_DAYS + 1)}
        for day in sorted(wanted):
            _create_day(conn, table, day)
    # Rows first, then the keys and indexes: one build per index instead of one per row.
    x(f'INSERT INTO "{table}" SELECT * FROM "{old}"')
    pk = PARTITIONED_PK[table] if partitioned else PLAIN_PK[table]
    x(f'ALTER TABLE "{table}" ADD CONSTRAINT "{table}_pkey" PRIMARY KEY ({pk})')
    for name, cols in INDEXES[table]:
        x(f'CREATE INDEX "{name}" ON "{table}" ({cols})')
    if table == "link_events":
        x('ALTER SEQUENCE "link_events_id_seq" OWNED BY "link_events"."id"')
    x(f'DROP TABLE "{old}" CASCADE')
    x(f'ANALYZE "{table}"')


def _sqlite_links(pk: tuple[str, ...]) -> sa.Table:
    """``links`` as SQLite holds it, with the primary key ``pk`` (for the batch rebuild)."""
    return sa.Table(
        "links",
        sa.MetaData(),
        sa.Column("jti", sa.String(43), nullable=False),
        sa.Column("client_id", sa.String(40), nullable=False),
        sa.Column("purpose", sa.String(20), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("kid", sa.String(64), nullable=False),
        sa.Column("iat", sa.BigInteger(), nullable=False),
        sa.Column("exp", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("state_at", sa.BigInteger(), nullable=True),
        sa.Column("state_via", sa.String(40), nullable=True),
        sa.Column("state_detail", sa.String(64), nullable=True),
        sa.Column("redirect_uri", sa.Text(), nullable=True),
        sa.Column("download", sa.Text(), nullable=True),
        sa.Column("data", sa.Text(), nullable=True),
        sa.Column("confirm", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("completion_hash", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint(*pk),
        sa.Index("ix_links_client_subject", "client_id", "subject", "purpose", "state"),
        sa.Index("ix_links_exp", "exp"),
    )


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        for table in ("links", "link_events"):
            _move(conn, table, partitioned=True)
    else:
        with op.batch_alter_table(
            "links", recreate="always", copy_from=_sqlite_links(("jti", "exp"))
        ):
            pass


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        for table in ("links", "link_events"):
            _move(conn, table, partitioned=False)
    else:
        with op.batch_alter_table("links", recreate="always", copy_from=_sqlite_links(("jti",))):
            pass
