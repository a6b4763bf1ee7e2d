"""idempotency keys for minting

Revision ID: 0004
Revises: 0005
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("client_id", sa.String(length=40), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("jti", sa.String(length=43), nullable=True),
        sa.Column("purpose", sa.String(length=20), nullable=True),
        sa.Column("subject", sa.String(length=255), nullable=True),
        sa.Column("iat", sa.BigInteger(), nullable=True),
        sa.Column("exp", sa.BigInteger(), nullable=True),
        sa.Column("superseded", sa.Integer(), nullable=True),
        sa.Column("emailed", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("client_id", "key_hash"),
    )
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.create_index("ix_idempotency_keys_created_at", ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.drop_index("ix_idempotency_keys_created_at")
    op.drop_table("idempotency_keys")
