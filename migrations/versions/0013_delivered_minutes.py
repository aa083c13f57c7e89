"""Delivered events per app and minute

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30 09:40:00.000000

- `delivered_minutes`: how many of an app's events Amplitude accepted in each minute, counted by the
  pusher as it deletes them from the outbox (the dashboard's "delivered per minute over the last hour");
  `bridge prune` keeps a day of it.
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('delivered_minutes',
    sa.Column('app_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('minute', sa.DateTime(timezone=True), nullable=False),
    sa.Column('delivered', sa.BigInteger(), server_default='0', nullable=False),
    sa.ForeignKeyConstraint(['app_id'], ['apps.id'], name=op.f('fk_delivered_minutes_app_id_apps')),
    sa.PrimaryKeyConstraint('app_id', 'minute', name=op.f('pk_delivered_minutes'))
    )


def downgrade() -> None:
    op.drop_table('delivered_minutes')
