"""The message catalog: details of each message, learned from the events that carry them

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 12:00:00.000000

`message_catalog` keeps, per app and message id, the newest non-blank name, title, contents and
template_id the events of a message carried, each with the event time (epoch ms) it came from, and when
an event last named the message (`last_seen_at`, for `bridge prune`). `outbox_events.message_details`
records what completing an event from it did (`enriched`, `unseen`, NULL), and `message_details_totals`
the running totals of those outcomes for events that have been delivered. Existing rows get NULL: the
counts start at the upgrade.
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op


revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('message_catalog',
    sa.Column('app_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('message_id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('name', sa.Text(), nullable=True),
    sa.Column('name_at', sa.BigInteger(), nullable=True),
    sa.Column('title', sa.Text(), nullable=True),
    sa.Column('title_at', sa.BigInteger(), nullable=True),
    sa.Column('contents', sa.Text(), nullable=True),
    sa.Column('contents_at', sa.BigInteger(), nullable=True),
    sa.Column('template_id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('template_id_at', sa.BigInteger(), nullable=True),
    sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['app_id'], ['apps.id'], name=op.f('fk_message_catalog_app_id_apps')),
    sa.PrimaryKeyConstraint('app_id', 'message_id', name='pk_message_catalog')
    )
    op.create_index('ix_message_catalog_last_seen_at', 'message_catalog', ['last_seen_at'], unique=False)
    op.create_table('message_details_totals',
    sa.Column('app_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('enriched', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('unseen', sa.BigInteger(), server_default='0', nullable=False),
    sa.ForeignKeyConstraint(['app_id'], ['apps.id'], name=op.f('fk_message_details_totals_app_id_apps')),
    sa.PrimaryKeyConstraint('app_id', name=op.f('pk_message_details_totals'))
    )
    # Plain ALTER TABLE on both databases: no copy of the outbox, whose partial indexes stay as they are.
    op.add_column('outbox_events', sa.Column('message_details', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True))


def downgrade() -> None:
    op.drop_column('outbox_events', 'message_details')
    op.drop_table('message_details_totals')
    op.drop_index('ix_message_catalog_last_seen_at', table_name='message_catalog')
    op.drop_table('message_catalog')
