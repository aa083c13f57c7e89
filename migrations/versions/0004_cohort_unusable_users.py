"""Cohort batches count the entries of `users` without a usable user_id; computed_time in 64 bits

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 09:12:41.208114
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('cohort_batches', schema=None) as batch_op:
        batch_op.add_column(sa.Column('unusable_users', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('unusable_reasons', sa.JSON(), server_default='{}', nullable=False))
        batch_op.add_column(sa.Column('unusable_examples', sa.JSON(), server_default='[]', nullable=False))
        batch_op.alter_column('computed_time', existing_type=sa.Integer(), type_=sa.BigInteger(),
                              existing_nullable=False)
    # On PostgreSQL this rewrites cohort_members under an exclusive lock (seconds per million rows).
    with op.batch_alter_table('cohort_members', schema=None) as batch_op:
        batch_op.alter_column('computed_time', existing_type=sa.Integer(), type_=sa.BigInteger(),
                              existing_nullable=False)


def downgrade() -> None:
    # Fails on PostgreSQL once a computed_time past 2038 is stored: 32 bits cannot hold it.
    with op.batch_alter_table('cohort_members', schema=None) as batch_op:
        batch_op.alter_column('computed_time', existing_type=sa.BigInteger(), type_=sa.Integer(),
                              existing_nullable=False)
    with op.batch_alter_table('cohort_batches', schema=None) as batch_op:
        batch_op.alter_column('computed_time', existing_type=sa.BigInteger(), type_=sa.Integer(),
                              existing_nullable=False)
        batch_op.drop_column('unusable_examples')
        batch_op.drop_column('unusable_reasons')
        batch_op.drop_column('unusable_users')
