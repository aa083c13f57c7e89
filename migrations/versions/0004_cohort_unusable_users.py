"""Cohort batches count the entries of `users` without a usable user_id

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


def downgrade() -> None:
    with op.batch_alter_table('cohort_batches', schema=None) as batch_op:
        batch_op.drop_column('unusable_examples')
        batch_op.drop_column('unusable_reasons')
        batch_op.drop_column('unusable_users')
