"""short links: links.handle_hash, the keyed hash of a short link's handle

A short link (``<base>/l/<handle>``, PRODUCT §8) names the same ledger row as its JWT; the
row keeps the handle's keyed hash (linksvc/handles.py) in a new nullable column, indexed
where it is set. A column rather than a table of its own: the mint stays one INSERT, the
page's lookup one SELECT that returns the row, and the purge (SQLite's batches,
PostgreSQL's day partitions) takes the hash with its row. The index is not unique: on
PostgreSQL ``links`` is partitioned by ``exp`` (0007), where a unique index must include
the partition key, and 128 random bits do not collide in practice. Partitions created
later get the index when they are attached (linksvc/partitions.py).

Adding a nullable column without a default changes only the catalog. Building the partial
index reads the ledger once (every existing row is NULL, so it writes nothing) and holds
off writes to ``links`` meanwhile: seconds for a big ledger. Frozen: this migration
imports nothing of the application.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

SET = sa.text("handle_hash IS NOT NULL")


def upgrade() -> None:
    op.add_column("links", sa.Column("handle_hash", sa.String(length=64), nullable=True))
    op.create_index(
        "ix_links_handle_hash",
        "links",
        ["handle_hash"],
        postgresql_where=SET,
        sqlite_where=SET,
    )


def downgrade() -> None:
    op.drop_index("ix_links_handle_hash", table_name="links")
    with op.batch_alter_table("links", schema=None) as batch_op:
        batch_op.drop_column("handle_hash")
