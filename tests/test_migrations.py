"""One Alembic head, the migrated schema exactly what the models declare, and migrations that keep the data
they find (on both databases)."""
from __future__ import annotations

from datetime import UTC, datetime

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Integer, MetaData, String, create_engine, select, text, update

from bridge.cohorts.models import CohortBatch, CohortMember
from bridge.db import metadata
from bridge.migrate import alembic_config, downgrade, head, schema_state, upgrade

NOW = datetime(2026, 11, 24, 9, tzinfo=UTC)


def test_a_single_head():
    heads = ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()
    assert len(heads) == 1, heads


def test_the_schema_state_says_where_a_database_stands(unmigrated_database_url):
    url, latest = unmigrated_database_url, head(unmigrated_database_url)
    engine = create_engine(url)

    def state() -> tuple[str | None, str, bool, str]:
        with engine.connect() as conn:
            found = schema_state(conn)
        return found.current, found.head, found.at_head, found.state

    assert state() == (None, latest, False, "missing")
    upgrade(url, "0007")
    assert state() == ("0007", latest, False, "behind")
    upgrade(url)
    assert state() == (latest, latest, True, "ok")
    with engine.begin() as conn:  # a later release migrated it, then was rolled back
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    assert state() == ("9999", latest, False, "ahead")
    engine.dispose()


def schema_diff(url: str, declared: MetaData = metadata) -> list:
    """What Alembic's autogenerate finds between the database at `url` and the `declared` tables:
    tables, columns, indexes, constraints and column types (an empty list when they agree)."""
    engine = create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), declared)
    engine.dispose()
    return diff


def test_models_and_migrations_agree(database_url):
    assert schema_diff(database_url) == []


def test_the_agreement_check_sees_a_column_type_the_migrations_did_not_make(database_url):
    """The check above compares column types too: models declaring other types than the migrated ones
    (a shorter string, a smaller integer) are reported, on both databases."""
    changed = MetaData(naming_convention=metadata.naming_convention)
    for table in metadata.sorted_tables:
        table.to_metadata(changed)
    apps = changed.tables["apps"].c
    apps.name.type, apps.delivered_total.type = String(100), Integer()
    assert sorted((d[0][0], d[0][2], d[0][3]) for d in schema_diff(database_url, changed)) == [
        ("modify_type", "apps", "delivered_total"), ("modify_type", "apps", "name")]


def test_0004_keeps_stored_cohorts_and_holds_a_computed_time_past_2038(unmigrated_database_url):
    url = unmigrated_database_url
    upgrade(url, "0003")
    engine = create_engine(url)
    now = datetime(2026, 11, 20, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO apps (id, name, amplitude_api_key, region, created_at, updated_at) "
                          "VALUES ('a1', 'App', 'amp-key', 'US', :now, :now)"), {"now": now})
        conn.execute(text(
            'INSERT INTO cohort_batches (app_id, cohort_id, cohort_name, message_id, in_cohort, computed_time, '
            'user_count, payload, state, entered, "left", already_known, stale, duplicate_users, retries, received_at) '
            "VALUES ('a1', 'c1', 'Churn', 'm1', :yes, 1763856000, 1, '[\"u1\"]', 'processed', 1, 0, 0, 0, 0, 0, :now)"),
            {"yes": True, "now": now})
        conn.execute(text("INSERT INTO cohort_members (app_id, cohort_id, user_id, in_cohort, computed_time, updated_at) "
                          "VALUES ('a1', 'c1', 'u1', :yes, 1763856000, :now)"), {"yes": True, "now": now})

    upgrade(url)

    batches, members = CohortBatch.__table__.c, CohortMember.__table__.c
    year_2100 = 4_102_444_800
    with engine.begin() as conn:
        assert conn.execute(select(batches.computed_time, batches.user_ids, batches.unusable_users,
                                   batches.unusable_reasons, batches.unusable_examples)).one() == (
            1763856000, '["u1"]', 0, {}, [])
        assert conn.execute(select(members.user_id, members.computed_time)).one() == ("u1", 1763856000)
        conn.execute(update(CohortBatch.__table__).values(computed_time=year_2100))
        conn.execute(update(CohortMember.__table__).values(computed_time=year_2100))
    with engine.connect() as conn:
        assert conn.scalar(select(batches.computed_time)) == conn.scalar(select(members.computed_time)) == year_2100
    engine.dispose()


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


def test_0009_names_the_payload_columns_for_what_they_hold(unmigrated_database_url):
    """0009 splits outbox_events.payload: the source item of an event waiting for its user moves to
    `source_item`, every other event's Amplitude event stays, as `amplitude_event`; a cohort batch's
    `payload` becomes `user_ids`. Downgraded, each is back in `payload`."""
    url = unmigrated_database_url
    upgrade(url, "0008")
    engine = create_engine(url)
    held = {"pending": ("pending", None), "dead": ("dead", "amplitude_400"), "skipped": ("skipped", "unresolved_user")}
    payloads = {"pending": '{"event_type":"Push Clicked"}', "dead": '{"event_type":"Email Opened"}',
                "skipped": '{"event":{"id":"skipped"}}'}
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO apps (id, name, amplitude_api_key, region, created_at, updated_at) "
                          "VALUES ('a1', 'App', 'amp-key', 'us', :now, :now)"), {"now": NOW})
        for event_id, (state, reason) in held.items():
            conn.execute(text(
                "INSERT INTO outbox_events (app_id, source_event_id, kind, state, reason, insert_id, payload, attempts, "
                "next_attempt_at, created_at) VALUES ('a1', :id, 'message.push.clicked', :state, :reason, :id, "
                ":payload, 0, :now, :now)"), {"id": event_id, "state": state, "reason": reason,
                                              "payload": payloads[event_id], "now": NOW})
        conn.execute(text(
            'INSERT INTO cohort_batches (app_id, cohort_id, cohort_name, message_id, in_cohort, computed_time, '
            'user_count, payload, state, entered, "left", already_known, stale, duplicate_users, retries, received_at, '
            "public_id) VALUES ('a1', 'c1', 'Churn', 'm1', :yes, 1763856000, 1, '[\"u1\"]', 'received', 0, 0, 0, 0, 0, "
            "0, :now, 'b1')"), {"yes": True, "now": NOW})

    upgrade(url)

    with engine.connect() as conn:
        assert dict((row[0], tuple(row[1:])) for row in conn.execute(
            text("SELECT source_event_id, amplitude_event, source_item FROM outbox_events"))) == {
            "pending": (payloads["pending"], None), "dead": (payloads["dead"], None),
            "skipped": (None, payloads["skipped"])}
        assert conn.scalar(text("SELECT user_ids FROM cohort_batches")) == '["u1"]'

    downgrade(url, "0008")

    with engine.connect() as conn:
        assert dict(conn.execute(text("SELECT source_event_id, payload FROM outbox_events")).all()) == payloads
        assert conn.scalar(text("SELECT payload FROM cohort_batches")) == '["u1"]'
    engine.dispose()
