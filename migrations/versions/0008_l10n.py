"""links.l10n and clients.locale: the language and time zone of what end users read

A link may carry a locale (BCP 47) and an IANA time zone for its pages and mail, kept in one
optional column, ``"<locale>|<zone>"``; a client has a default locale. Frozen: this
migration imports nothing of the application.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # On PostgreSQL ``links`` is partitioned (0007): ADD COLUMN on the parent reaches every
    # partition. A nullable column without a default rewrites nothing.
    op.add_column("links", sa.Column("l10n", sa.String(length=100), nullable=True))
    with op.batch_alter_table("clients", schema=None) as batch_op:
        batch_op.add_column(sa.Column("locale", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("clients", schema=None) as batch_op:
        batch_op.drop_column("locale")
    with op.batch_alter_table("links", schema=None) as batch_op:
        batch_op.drop_column("l10n")
