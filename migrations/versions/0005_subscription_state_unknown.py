"""A record's subscription state can be unknown (subscriptions.subscribed NULL)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 09:00:00.000000

Until now a record whose source did not say whether it is subscribed (a legacy export without the
notification_types column, an import-format row without `subscribed`, a subscription first seen in the
event stream without proof of delivery) was stored as unsubscribed. From now on it is stored as NULL.

Existing rows keep their value: a stored `false` may be a real "unsubscribed" (notification_types -2,
an import-format "no", an API call) or a default, and nothing in the row tells them apart, so none is
rewritten. Re-importing a legacy export recomputes its records; the README says so.

Downgrading turns unknown states back into `false`, the old meaning of "not known to be subscribed".
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('subscriptions', schema=None) as batch_op:
        batch_op.alter_column('subscribed', existing_type=sa.Boolean(), nullable=True)


def downgrade() -> None:
    op.execute("UPDATE subscriptions SET subscribed = false WHERE subscribed IS NULL")
    with op.batch_alter_table('subscriptions', schema=None) as batch_op:
        batch_op.alter_column('subscribed', existing_type=sa.Boolean(), nullable=False)
