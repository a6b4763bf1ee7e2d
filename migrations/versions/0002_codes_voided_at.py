"""codes.voided_at: a code voided before its exchange (subject revoked, client disabled)

Revision ID: 0002
Revises: 0006
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("codes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("voided_at", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("codes", schema=None) as batch_op:
        batch_op.drop_column("voided_at")
