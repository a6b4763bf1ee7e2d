"""sign-ins that complete on the device that asked (PRODUCT section 6)

Revision ID: 0005
Revises: 0003
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('sign_ins',
    sa.Column('jti', sa.String(length=43), nullable=False),
    sa.Column('id', sa.String(length=43), nullable=False),
    sa.Column('client_id', sa.String(length=40), nullable=False),
    sa.Column('state', sa.String(length=12), nullable=False),
    sa.Column('state_at', sa.BigInteger(), nullable=True),
    sa.Column('state_detail', sa.String(length=20), nullable=True),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('exp', sa.BigInteger(), nullable=False),
    sa.Column('browser', sa.String(length=64), nullable=False),
    sa.Column('match_number', sa.Integer(), nullable=False),
    sa.Column('code_hash', sa.String(length=64), nullable=False),
    sa.Column('code_failures', sa.Integer(), server_default='0', nullable=False),
    sa.Column('binding_hash', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('jti'),
    sa.UniqueConstraint('id')
    )
    with op.batch_alter_table('sign_ins', schema=None) as batch_op:
        batch_op.create_index('ix_sign_ins_exp', ['exp'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('sign_ins', schema=None) as batch_op:
        batch_op.drop_index('ix_sign_ins_exp')

    op.drop_table('sign_ins')
