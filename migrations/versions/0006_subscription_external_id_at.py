"""Channel records remember when the event that named their External User ID happened

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 23:00:00.000000

`subscriptions.external_id_at` is the event time (epoch milliseconds) of the newest event whose
External User ID the record holds, so that a late event (a retried request, say) older than that one
no longer replaces the user. Existing rows, and records whose user an import or the API set, have
NULL: any event may then name the user, as before.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('subscriptions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('external_id_at', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('subscriptions', schema=None) as batch_op:
        batch_op.drop_column('external_id_at')
