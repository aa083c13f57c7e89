"""Cohort batches record when a run claimed them

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 12:00:00.000000

`cohort_batches.claimed_at` is when the latest run of a batch started. The run counts its attempt and
sets it in a transaction of its own before applying anything, so a run that is killed or times out is
still counted, and another run does not start the batch while the claim is recent. Existing rows get
NULL: not claimed.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('cohort_batches', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('cohort_batches', schema=None) as batch_op:
        batch_op.drop_column('claimed_at')
