"""Apps choose the names their events take in Amplitude

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 07:00:00.000000

`apps.naming` is the naming profile (`onesignal-2022`, the names the bridge always used, for every
existing app; or `onesignal-current`); `apps.event_names` holds the app's own event_type per kind
(NULL: none), which wins over the profile's.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ALTER TABLE (SQLite has DROP COLUMN since 3.35): a batch copy of `apps` would break the
    # foreign keys every other table holds to it.
    op.add_column('apps', sa.Column('naming', sa.String(length=32), nullable=False, server_default='onesignal-2022'))
    op.add_column('apps', sa.Column('event_names', sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    op.drop_column('apps', 'event_names')
    op.drop_column('apps', 'naming')
