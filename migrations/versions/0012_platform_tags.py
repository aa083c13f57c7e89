"""Cohorts applied to the messaging platform as tags

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30 07:30:00.000000

- `apps.platform*`: the app's connection to its messaging platform (which platform, its app id and API
  key, a rate), its hold (429, refused key), last error, and the lease of the app's one tag sender;
- `cohort_platform_syncs`: which cohorts are applied, under which tag key;
- `platform_tags`: one row per user and tag key: the value wanted as of the newest batch, and what the
  platform did with it;
- `platform_users`: when each user's pending tags may next be sent (1 request per second per user).
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_APP_COLUMNS = (
    ('platform', lambda: sa.String(length=32)),
    ('platform_app_id', lambda: sa.String(length=128)),
    ('platform_api_key', lambda: sa.String(length=500)),
    ('platform_rate_per_second', lambda: sa.Float()),
    ('platform_held_until', lambda: sa.DateTime(timezone=True)),
    ('platform_held_reason', lambda: sa.String(length=500)),
    ('platform_last_error', lambda: sa.Text()),
    ('platform_last_error_at', lambda: sa.DateTime(timezone=True)),
    ('platform_sender_until', lambda: sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    # Plain ALTER TABLE: a batch copy of `apps` would break the foreign keys other tables hold to it.
    for name, kind in _APP_COLUMNS:
        op.add_column('apps', sa.Column(name, kind(), nullable=True))
    op.create_table(
        'cohort_platform_syncs',
        sa.Column('app_id', sa.String(length=36), sa.ForeignKey('apps.id'), nullable=False),
        sa.Column('cohort_id', sa.String(length=128), nullable=False),
        sa.Column('enabled', sa.Boolean(), nullable=False),
        sa.Column('tag_key', sa.String(length=128), nullable=False),
        sa.Column('enabled_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('app_id', 'cohort_id', name='pk_cohort_platform_syncs'),
        sa.UniqueConstraint('app_id', 'tag_key', name='uq_cohort_platform_syncs_tag_key'),
    )
    op.create_table(
        'platform_tags',
        sa.Column('app_id', sa.String(length=36), nullable=False),
        sa.Column('external_id', sa.String(length=256), nullable=False),
        sa.Column('tag_key', sa.String(length=128), nullable=False),
        sa.Column('cohort_id', sa.String(length=128), nullable=False),
        sa.Column('value', sa.String(length=8), nullable=False),
        sa.Column('computed_time', sa.BigInteger(), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('reason', sa.String(length=64), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
        sa.Column('failing_since', sa.DateTime(timezone=True), nullable=True),
        sa.Column('synced_value', sa.String(length=8), nullable=True),
        sa.Column('synced_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('app_id', 'external_id', 'tag_key', name='pk_platform_tags'),
    )
    op.create_table(
        'platform_users',
        sa.Column('app_id', sa.String(length=36), nullable=False),
        sa.Column('external_id', sa.String(length=256), nullable=False),
        sa.Column('due_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_request_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('app_id', 'external_id', name='pk_platform_users'),
    )
    op.create_index('ix_platform_users_due', 'platform_users', ['app_id', 'due_at'])


def downgrade() -> None:
    op.drop_index('ix_platform_users_due', table_name='platform_users')
    op.drop_table('platform_users')
    op.drop_table('platform_tags')
    op.drop_table('cohort_platform_syncs')
    for name, _ in reversed(_APP_COLUMNS):
        op.drop_column('apps', name)
