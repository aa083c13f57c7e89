"""The last computed report of each cohort

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30 10:40:00.000000

- `cohort_report_snapshots`: per cohort, the report as last computed (JSON), the cohort's `updated_at` it
  was computed from and when; the dashboard's cohort page shows it instead of computing the report on
  each view, and a job on the cohorts queue recomputes it.
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = '0014'
down_revision: str | None = '0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('cohort_report_snapshots',
    sa.Column('app_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('cohort_id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('report', sa.JSON(), nullable=False),
    sa.Column('cohort_updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('computed_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['app_id', 'cohort_id'], ['cohorts.app_id', 'cohorts.cohort_id'],
                            name='fk_cohort_report_snapshots_cohort'),
    sa.PrimaryKeyConstraint('app_id', 'cohort_id', name=op.f('pk_cohort_report_snapshots'))
    )


def downgrade() -> None:
    op.drop_table('cohort_report_snapshots')
