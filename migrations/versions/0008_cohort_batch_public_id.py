"""Cohort batches get a random public id, shown instead of the global sequence

Revision ID: 0008
Revises: 0006
Create Date: 2026-11-30 01:30:00.000000

`cohort_batches.public_id` (16 hex characters, unique per app) is the `batch_id` the webhook's answer
and the sync history show: the surrogate key `id`, a sequence shared by every app, let a tenant count
the others' batches. Joins and jobs keep using `id`. Existing batches get random ids here.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_RANDOM_ID = {
    'postgresql': "substr(md5(random()::text || id::text), 1, 16)",
    'sqlite': "lower(hex(randomblob(8)))",
}


def upgrade() -> None:
    with op.batch_alter_table('cohort_batches', schema=None) as batch_op:
        batch_op.add_column(sa.Column('public_id', sa.String(length=32), nullable=True))
    op.execute(f"UPDATE cohort_batches SET public_id = {_RANDOM_ID[op.get_bind().dialect.name]}")
    with op.batch_alter_table('cohort_batches', schema=None) as batch_op:
        batch_op.alter_column('public_id', existing_type=sa.String(length=32), nullable=False)
        batch_op.create_unique_constraint('uq_cohort_batches_app_public_id', ['app_id', 'public_id'])


def downgrade() -> None:
    with op.batch_alter_table('cohort_batches', schema=None) as batch_op:
        batch_op.drop_constraint('uq_cohort_batches_app_public_id', type_='unique')
        batch_op.drop_column('public_id')
