"""webhook_outbox.traceparent: the W3C trace context of the request that queued an event

With tracing on (linksvc/tracing.py), the relay's delivery of an event continues the trace
of the request that created it: the request's ``traceparent`` (``00-<trace id>-<span
id>-<flags>``, 55 characters, no secret) is written with the event's outbox rows. NULL when
tracing is off, and for every row written before this migration.

Adding a nullable column without a default changes only the catalog. Frozen: this
migration imports nothing of the application.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("webhook_outbox", sa.Column("traceparent", sa.String(length=55), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("webhook_outbox", schema=None) as batch_op:
        batch_op.drop_column("traceparent")
