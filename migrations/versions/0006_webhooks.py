"""webhooks: endpoints, per-client settings, the outbox and its delivery attempts

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0004'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('webhook_endpoints',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('client_id', sa.String(length=40), nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('events', sa.Text(), nullable=True),
    sa.Column('secret_enc', sa.LargeBinary(), nullable=False),
    sa.Column('old_secret_enc', sa.LargeBinary(), nullable=True),
    sa.Column('old_secret_until', sa.BigInteger(), nullable=True),
    sa.Column('disabled', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('disabled_reason', sa.String(length=40), nullable=True),
    sa.Column('disabled_at', sa.BigInteger(), nullable=True),
    sa.Column('failing_since', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('webhook_endpoints', schema=None) as batch_op:
        batch_op.create_index('ix_webhook_endpoints_client', ['client_id'], unique=False)

    op.create_table('webhook_clients',
    sa.Column('client_id', sa.String(length=40), nullable=False),
    sa.Column('on_replay', sa.String(length=20), nullable=True),
    sa.Column('swept_until', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('client_id')
    )
    op.create_table('webhook_outbox',
    sa.Column('id', BigId, autoincrement=True, nullable=False),
    sa.Column('msg_id', sa.String(length=40), nullable=False),
    sa.Column('endpoint_id', sa.String(length=40), nullable=False),
    sa.Column('client_id', sa.String(length=40), nullable=False),
    sa.Column('event_type', sa.String(length=40), nullable=False),
    sa.Column('jti', sa.String(length=43), nullable=True),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('state', sa.String(length=10), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('next_attempt_at', sa.BigInteger(), nullable=False),
    sa.Column('lease_token', sa.String(length=40), nullable=True),
    sa.Column('lease_until', sa.BigInteger(), nullable=True),
    sa.Column('delivered_at', sa.BigInteger(), nullable=True),
    sa.Column('last_status', sa.Integer(), nullable=True),
    sa.Column('last_error', sa.String(length=200), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('msg_id', 'endpoint_id', name='uq_webhook_outbox_msg_endpoint')
    )
    with op.batch_alter_table('webhook_outbox', schema=None) as batch_op:
        batch_op.create_index('ix_webhook_outbox_client', ['client_id', 'id'], unique=False)
        batch_op.create_index('ix_webhook_outbox_due', ['state', 'next_attempt_at'], unique=False)
        batch_op.create_index('ix_webhook_outbox_link', ['endpoint_id', 'jti', 'id'], unique=False)

    op.create_table('webhook_attempts',
    sa.Column('id', BigId, autoincrement=True, nullable=False),
    sa.Column('outbox_id', BigId, nullable=False),
    sa.Column('at', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.Integer(), nullable=True),
    sa.Column('error', sa.String(length=200), nullable=True),
    sa.Column('duration_ms', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('webhook_attempts', schema=None) as batch_op:
        batch_op.create_index('ix_webhook_attempts_outbox', ['outbox_id', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('webhook_attempts', schema=None) as batch_op:
        batch_op.drop_index('ix_webhook_attempts_outbox')
    op.drop_table('webhook_attempts')
    with op.batch_alter_table('webhook_outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_webhook_outbox_link')
        batch_op.drop_index('ix_webhook_outbox_due')
        batch_op.drop_index('ix_webhook_outbox_client')
    op.drop_table('webhook_outbox')
    op.drop_table('webhook_clients')
    with op.batch_alter_table('webhook_endpoints', schema=None) as batch_op:
        batch_op.drop_index('ix_webhook_endpoints_client')
    op.drop_table('webhook_endpoints')
