"""Each application's own face: branding columns on clients, logos, and the link format

A client has a brand colour, a support URL and e-mail, the mail's sender name and a link
format (``jwt``, as before, or ``short``); its logo, re-encoded by linksvc, lives in
``client_logos`` (one row per client, out of the hot ``clients`` row). Frozen: this migration
imports nothing of the application.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("clients", schema=None) as batch_op:
        batch_op.add_column(sa.Column("brand_color", sa.String(length=7), nullable=True))
        batch_op.add_column(sa.Column("support_url", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("support_email", sa.String(length=254), nullable=True))
        batch_op.add_column(sa.Column("mail_from_name", sa.String(length=100), nullable=True))
        batch_op.add_column(
            sa.Column("link_format", sa.String(length=8), nullable=False, server_default="jwt")
        )
    op.create_table(
        "client_logos",
        sa.Column("client_id", sa.String(length=40), primary_key=True),
        # SHA-256 of the re-encoded image: its URL, so it can be cached for a year.
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("content_type", sa.String(length=20), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("client_logos")
    with op.batch_alter_table("clients", schema=None) as batch_op:
        for name in ("link_format", "mail_from_name", "support_email", "support_url", "brand_color"):
            batch_op.drop_column(name)
