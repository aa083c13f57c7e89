"""Cohort batches count failed attempts

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 02:47:29.582798
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op


revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('cohort_batches', schema=None) as batch_op:
        batch_op.add_column(sa.Column('attempts', sa.Integer(), server_default='0', nullable=False))



def downgrade() -> None:
    with op.batch_alter_table('cohort_batches', schema=None) as batch_op:
        batch_op.drop_column('attempts')

