"""Outbox: receipts for idempotency, delivered counter, claim index

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 02:17:56.432875
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op


revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('event_receipts',
    sa.Column('app_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('source_event_id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('app_id', 'source_event_id', name='pk_event_receipts')
    )
    with op.batch_alter_table('event_receipts', schema=None) as batch_op:
        batch_op.create_index('ix_event_receipts_created_at', ['created_at'], unique=False)

    with op.batch_alter_table('apps', schema=None) as batch_op:
        batch_op.add_column(sa.Column('delivered_total', sa.BigInteger(), server_default='0', nullable=False))

    # Carry existing data: every accepted event gets its receipt; delivered rows become the app's total.
    op.execute("INSERT INTO event_receipts (app_id, source_event_id, created_at) "
               "SELECT app_id, source_event_id, created_at FROM outbox_events")
    op.execute("UPDATE apps SET delivered_total = (SELECT count(*) FROM outbox_events o "
               "WHERE o.app_id = apps.id AND o.state = 'delivered')")
    op.execute("DELETE FROM outbox_events WHERE state = 'delivered'")

    with op.batch_alter_table('outbox_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbox_events_app_state'))
        batch_op.drop_constraint(batch_op.f('uq_outbox_events_app_source'), type_='unique')
        batch_op.create_index('ix_outbox_events_parked', ['app_id', 'state', 'reason'], unique=False, postgresql_where=sa.text("state <> 'pending'"), sqlite_where=sa.text("state <> 'pending'"))
        batch_op.drop_column('delivered_at')



def downgrade() -> None:
    with op.batch_alter_table('outbox_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.drop_index('ix_outbox_events_parked', postgresql_where=sa.text("state <> 'pending'"), sqlite_where=sa.text("state <> 'pending'"))
        batch_op.create_unique_constraint(batch_op.f('uq_outbox_events_app_source'), ['app_id', 'source_event_id'])
        batch_op.create_index(batch_op.f('ix_outbox_events_app_state'), ['app_id', 'state'], unique=False)

    with op.batch_alter_table('apps', schema=None) as batch_op:
        batch_op.drop_column('delivered_total')

    with op.batch_alter_table('event_receipts', schema=None) as batch_op:
        batch_op.drop_index('ix_event_receipts_created_at')

    op.drop_table('event_receipts')
