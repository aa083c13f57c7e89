"""One Alembic head, the migrated schema exactly what the models declare, and migrations that keep the data
they find (on both databases)."""
from __future__ import annotations

from datetime import UTC, datetime

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text

from bridge.db import metadata
from bridge.migrate import alembic_config

NOW = datetime(2026, 11, 24, 9, tzinfo=UTC)


def test_a_single_head():
    heads = ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()
    assert len(heads) == 1, heads


def test_models_and_migrations_agree(database_url):
    engine = create_engine(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), metadata)
    engine.dispose()
    assert diff == []


def test_the_unknown_subscription_state_keeps_existing_values_and_downgrades_to_unsubscribed(unmigrated_database_url):
    """0005 makes subscriptions.subscribed nullable (NULL = unknown) without rewriting a stored value;
    going back down stores the unknown states as false, what they meant before."""
    url = unmigrated_database_url
    config = alembic_config(url)
    before = ScriptDirectory.from_config(config).get_revision("0005").down_revision
    command.upgrade(config, "0003")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO apps (id, name, amplitude_api_key, region, created_at, updated_at) "
                          "VALUES ('app-1', 'Shop', 'key', 'us', :now, :now)"), {"now": NOW})
        conn.execute(text("INSERT INTO subscriptions (app_id, subscription_id, channel, type, invalid_identifier, "
                          "subscribed, created_at, updated_at) VALUES "
                          "('app-1', 'sub-yes', 'push', 'iOSPush', false, true, :now, :now), "
                          "('app-1', 'sub-no', 'push', 'iOSPush', false, false, :now, :now)"), {"now": NOW})
    command.upgrade(config, "0005")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO subscriptions (app_id, subscription_id, channel, type, invalid_identifier, "
                          "subscribed, created_at, updated_at) VALUES "
                          "('app-1', 'sub-unknown', 'push', 'iOSPush', false, NULL, :now, :now)"), {"now": NOW})
        assert stored_states(conn) == {"sub-yes": True, "sub-no": False, "sub-unknown": None}
    command.downgrade(config, before)
    with engine.connect() as conn:
        assert stored_states(conn) == {"sub-yes": True, "sub-no": False, "sub-unknown": False}
    engine.dispose()


def stored_states(conn) -> dict[str, bool | None]:
    rows = conn.execute(text("SELECT subscription_id, subscribed FROM subscriptions"))
    return {sub: None if state is None else bool(state) for sub, state in rows}
