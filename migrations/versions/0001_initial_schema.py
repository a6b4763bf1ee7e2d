"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-28
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('clients',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('display_name', sa.String(length=200), nullable=False),
    sa.Column('api_key_hash', sa.String(length=64), nullable=False),
    sa.Column('purposes', sa.Text(), nullable=False),
    sa.Column('redirect_uris', sa.Text(), nullable=False),
    sa.Column('download_prefixes', sa.Text(), nullable=False),
    sa.Column('mint_limit', sa.String(length=64), nullable=True),
    sa.Column('subject_limit', sa.String(length=64), nullable=True),
    sa.Column('allow_pii_subject', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('disabled', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('api_key_hash'),
    sa.UniqueConstraint('name')
    )
    op.create_table('codes',
    sa.Column('code_hash', sa.String(length=64), nullable=False),
    sa.Column('jti', sa.String(length=43), nullable=False),
    sa.Column('client_id', sa.String(length=40), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('expires_at', sa.BigInteger(), nullable=False),
    sa.Column('used_at', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('code_hash')
    )
    with op.batch_alter_table('codes', schema=None) as batch_op:
        batch_op.create_index('ix_codes_expires_at', ['expires_at'], unique=False)

    op.create_table('link_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('jti', sa.String(length=43), nullable=False),
    sa.Column('at', sa.BigInteger(), nullable=False),
    sa.Column('event', sa.String(length=20), nullable=False),
    sa.Column('reason', sa.String(length=40), nullable=True),
    sa.Column('via', sa.String(length=20), nullable=True),
    sa.Column('actor', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('link_events', schema=None) as batch_op:
        batch_op.create_index('ix_link_events_jti', ['jti', 'id'], unique=False)

    op.create_table('links',
    sa.Column('jti', sa.String(length=43), nullable=False),
    sa.Column('client_id', sa.String(length=40), nullable=False),
    sa.Column('purpose', sa.String(length=20), nullable=False),
    sa.Column('subject', sa.String(length=255), nullable=False),
    sa.Column('kid', sa.String(length=64), nullable=False),
    sa.Column('iat', sa.BigInteger(), nullable=False),
    sa.Column('exp', sa.BigInteger(), nullable=False),
    sa.Column('state', sa.String(length=12), nullable=False),
    sa.Column('state_at', sa.BigInteger(), nullable=True),
    sa.Column('state_via', sa.String(length=40), nullable=True),
    sa.Column('state_detail', sa.String(length=64), nullable=True),
    sa.Column('redirect_uri', sa.Text(), nullable=True),
    sa.Column('download', sa.Text(), nullable=True),
    sa.Column('data', sa.Text(), nullable=True),
    sa.Column('confirm', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('completion_hash', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('jti')
    )
    with op.batch_alter_table('links', schema=None) as batch_op:
        batch_op.create_index('ix_links_client_subject', ['client_id', 'subject', 'purpose', 'state'], unique=False)
        batch_op.create_index('ix_links_exp', ['exp'], unique=False)

    op.create_table('signing_keys',
    sa.Column('kid', sa.String(length=64), nullable=False),
    sa.Column('alg', sa.String(length=10), nullable=False),
    sa.Column('state', sa.String(length=10), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('activated_at', sa.BigInteger(), nullable=True),
    sa.Column('retired_at', sa.BigInteger(), nullable=True),
    sa.Column('removed_at', sa.BigInteger(), nullable=True),
    sa.Column('public_jwk', sa.Text(), nullable=False),
    sa.Column('private_key_enc', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('kid')
    )


def downgrade() -> None:
    op.drop_table('signing_keys')
    with op.batch_alter_table('links', schema=None) as batch_op:
        batch_op.drop_index('ix_links_exp')
        batch_op.drop_index('ix_links_client_subject')

    op.drop_table('links')
    with op.batch_alter_table('link_events', schema=None) as batch_op:
        batch_op.drop_index('ix_link_events_jti')

    op.drop_table('link_events')
    with op.batch_alter_table('codes', schema=None) as batch_op:
        batch_op.drop_index('ix_codes_expires_at')

    op.drop_table('codes')
    op.drop_table('clients')
