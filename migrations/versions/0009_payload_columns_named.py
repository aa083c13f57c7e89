"""The payload columns are named for what they hold

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 09:00:00.000000

`outbox_events.payload` held two formats under one name: the Amplitude event (JSON) of every event that
can be sent, and the validated source item (JSON) of an event skipped as `unresolved_user`, which a
replay maps once the channel registry knows the user. They are now two columns: `amplitude_event`
(NULL while the event waits for a user) and `source_item` (NULL otherwise). The skipped events' source
items move to `source_item` here.

`cohort_batches.payload`, a batch's usable user ids as a JSON array, is now `user_ids`.

Downgrading puts the source items back into `payload`.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WAITING_FOR_A_USER = "state = 'skipped' AND reason = 'unresolved_user'"
# SQLite rebuilds the table to change a column's nullability; its partial indexes are dropped and made again
# with their WHERE clause (the copy would not keep it).
_OUTBOX_INDEXES = (
    ('ix_outbox_events_due', ['app_id', 'next_attempt_at', 'id'], "state = 'pending'"),
    ('ix_outbox_events_parked', ['app_id', 'state', 'reason'], "state <> 'pending'"),
)


def upgrade() -> None:
    _drop_outbox_indexes()
    with op.batch_alter_table('outbox_events', schema=None) as batch_op:
        batch_op.alter_column('payload', new_column_name='amplitude_event', existing_type=sa.Text(), nullable=True)
        batch_op.add_column(sa.Column('source_item', sa.Text(), nullable=True))
    _create_outbox_indexes()
    op.execute(f"UPDATE outbox_events SET source_item = amplitude_event, amplitude_event = NULL "
               f"WHERE {_WAITING_FOR_A_USER}")
    with op.batch_alter_table('cohort_batches', schema=None) as batch_op:
        batch_op.alter_column('payload', new_column_name='user_ids', existing_type=sa.Text(), existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('cohort_batches', schema=None) as batch_op:
        batch_op.alter_column('user_ids', new_column_name='payload', existing_type=sa.Text(), existing_nullable=False)
    op.execute("UPDATE outbox_events SET amplitude_event = source_item WHERE source_item IS NOT NULL")
    _drop_outbox_indexes()
    with op.batch_alter_table('outbox_events', schema=None) as batch_op:
        batch_op.drop_column('source_item')
        batch_op.alter_column('amplitude_event', new_column_name='payload', existing_type=sa.Text(), nullable=False)
    _create_outbox_indexes()


def _drop_outbox_indexes() -> None:
    for name, _columns, where in _OUTBOX_INDEXES:
        op.drop_index(name, table_name='outbox_events', postgresql_where=sa.text(where), sqlite_where=sa.text(where))


def _create_outbox_indexes() -> None:
    for name, columns, where in _OUTBOX_INDEXES:
        op.create_index(name, 'outbox_events', columns, unique=False,
                        postgresql_where=sa.text(where), sqlite_where=sa.text(where))
