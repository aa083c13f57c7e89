"""`bridge subscriptions import`: both OneSignal CSV formats, plain and gzipped, bad rows reported by line,
re-imports that update instead of duplicating."""
from __future__ import annotations

import csv
import gzip
import json
import shutil
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from bridge.cli import main
from bridge.registry.importer import import_subscriptions
from bridge.registry.models import Subscription
from support import FIXTURES

LEGACY = FIXTURES / "subscriptions-legacy.csv"
LEGACY_NO_NOTIFICATION_TYPES = FIXTURES / "subscriptions-legacy-no-notification-types.csv"
IMPORT = FIXTURES / "subscriptions-import.csv"
LEGACY_GOOD_ROWS = 67
LEGACY_REJECTED = [
    {"line": 69, "reason": "device_type: '12' is not a known device_type (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14)"},
    {"line": 70, "reason": "identifier: 'not-an-email' is not an e-mail address"},
    {"line": 71, "reason": "identifier: '555-1234' is not an E.164 phone number (+ and 8 to 15 digits)"},
    {"line": 72, "reason": "id: required"},
    {"line": 73, "reason": "notification_types: 'abc' is not an integer; "
                           "last_active: 'yesterday' is not a date-time (ISO 8601) or epoch seconds"},
    {"line": 74, "reason": "expected 19 fields as in the header, found 3"},
]


def run_import(cli, tenant, path, *options):
    result = cli.invoke(main, ["subscriptions", "import", "--app", tenant.app_id, str(path), *options])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def counts(summary: dict) -> tuple[int, int, int, int]:
    return summary["added"], summary["updated"], summary["unchanged"], summary["rejected"]


def records(runtime, tenant) -> dict[str, Subscription]:
    with runtime.session() as session:
        rows = session.scalars(select(Subscription).where(Subscription.app_id == tenant.app_id))
        return {r.subscription_id: r for r in rows}


def test_legacy_export_imports_good_rows_and_reports_bad_ones_by_line(cli, tenant, runtime):
    summary = run_import(cli, tenant, LEGACY)
    assert counts(summary) == (LEGACY_GOOD_ROWS, 0, 0, 6)
    assert summary["rows"] == LEGACY_GOOD_ROWS + 6
    assert summary["errors"] == LEGACY_REJECTED  # line 66-67 is one record over two lines: numbering follows the file
    assert summary["warnings"] == []
    stored = records(runtime, tenant)
    assert len(stored) == LEGACY_GOOD_ROWS

    ios = stored["1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9"]
    assert (ios.channel, ios.type, ios.external_id, ios.notification_types, ios.subscribed) == ("push", "iOSPush", "user-000123", 1, True)
    assert (ios.device_model, ios.device_os, ios.language, ios.timezone) == ("iPhone15,2", "17.1", "en", "-18000")
    assert ios.last_active_at == datetime(2025, 11, 20, 10, 11, 12, tzinfo=UTC)
    assert ios.source_created_at == datetime(2024, 2, 1, 8, tzinfo=UTC)
    email = stored["8e7d6c5b-4a39-4281-9706-f5e4d3c2b1a0"]
    assert (email.channel, email.type, email.identifier, email.subscribed) == ("email", "Email", "ana@example.com", True)
    sms = stored["2b3c4d5e-6f70-4819-92a3-b4c5d6e7f809"]
    assert (sms.channel, sms.type, sms.identifier) == ("sms", "SMS", "+15551234567")
    invalid = stored["4d5e6f70-8192-4a3b-8c4d-5e6f70819203"]
    assert (invalid.type, invalid.invalid_identifier, invalid.notification_types, invalid.subscribed) == ("AndroidPush", True, -2, False)

    by_rule = {(r.notification_types, r.invalid_identifier): r.subscribed for r in stored.values()}
    assert by_rule[(1, False)] is True
    assert by_rule[(1, True)] is False  # a token marked invalid is unsubscribed whatever notification_types says
    assert by_rule[(0, False)] is by_rule[(-99, False)] is by_rule[(-2, False)] is by_rule[(-3, False)] is False
    assert {r.type for r in stored.values()} == {
        "iOSPush", "AndroidPush", "FireOSPush", "WindowsPhonePush", "ChromeExtensionPush", "ChromePush", "WindowsPush",
        "SafariPush", "FirefoxPush", "macOSPush", "AlexaPush", "HuaweiPush", "Email", "SMS"}
    assert "bo.rivera@example.com" in {r.identifier for r in stored.values()}  # e-mails are stored lowercased
    assert sum(1 for r in stored.values() if r.external_id is None) >= 5
    assert sorted(r.type for r in stored.values() if r.external_id == "user-000201") == [
        "AndroidPush", "ChromePush", "Email", "Email", "SMS", "iOSPush"]  # one user, several devices and channels


def test_reimporting_changes_nothing_and_edited_rows_update_without_duplicates(cli, tenant, runtime, tmp_path):
    run_import(cli, tenant, LEGACY)
    assert counts(run_import(cli, tenant, LEGACY, "--chunk-size", "7")) == (0, 0, LEGACY_GOOD_ROWS, 6)

    edited = tmp_path / "edited.csv"
    text = LEGACY.read_text()
    line = next(x for x in text.splitlines() if x.startswith("1f2e3d4c-"))
    unsubscribed = line.removesuffix(",1") + ",-2"
    added = "0c0ffee0-0000-4000-8000-000000000001,ffff,1,en,0,,,0,,,{},2025-11-21 10:00:00,0,0.0,2025-11-21 10:00:00,f,0,user-000777,1"
    edited.write_text(text.replace(line, unsubscribed) + added + "\n")

    assert counts(run_import(cli, tenant, edited, "--chunk-size", "10")) == (1, 1, LEGACY_GOOD_ROWS - 1, 6)
    stored = records(runtime, tenant)
    assert len(stored) == LEGACY_GOOD_ROWS + 1
    ios = stored["1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9"]
    assert (ios.notification_types, ios.subscribed, ios.external_id) == (-2, False, "user-000123")
    assert ios.updated_at > ios.created_at


def test_a_gzipped_file_imports_like_the_plain_one(cli, tenant, tmp_path):
    packed = tmp_path / "players.csv.gz"
    with LEGACY.open("rb") as plain, gzip.open(packed, "wb") as out:
        shutil.copyfileobj(plain, out)
    summary = run_import(cli, tenant, packed)
    assert counts(summary) == (LEGACY_GOOD_ROWS, 0, 0, 6)
    assert summary["errors"] == LEGACY_REJECTED


def test_import_format_matches_existing_records_by_identifier_and_reimports_unchanged(cli, tenant, runtime):
    run_import(cli, tenant, LEGACY)
    summary = run_import(cli, tenant, IMPORT)
    assert summary["errors"] == [
        {"line": 15, "reason": "email, phone_number: give one of them per row, not both"},
        {"line": 16, "reason": "email, phone_number: one of them is required"},
        {"line": 17, "reason": "email: 'not-an-email' is not an e-mail address"},
        {"line": 18, "reason": "phone_number: '12345' is not an E.164 phone number (+ and 8 to 15 digits)"},
        {"line": 19, "reason": "subscribed: 'maybe' is not yes/no (or true/false)"},
    ]
    # ANA@Example.com, "+1 (555) 123-4567" and +4915112345678 are records of the legacy export: updated, not added.
    assert counts(summary) == (11, 3, 0, 5)
    stored = records(runtime, tenant)
    assert len(stored) == LEGACY_GOOD_ROWS + 11
    ana = stored["8e7d6c5b-4a39-4281-9706-f5e4d3c2b1a0"]
    assert (ana.identifier, ana.timezone, ana.country, ana.subscribed) == ("ana@example.com", "America/New_York", "US", True)
    assert ana.last_active_at is not None  # columns the import format lacks keep their values
    phone = stored["2b3c4d5e-6f70-4819-92a3-b4c5d6e7f809"]
    assert (phone.identifier, phone.subscribed, phone.timezone) == ("+15551234567", False, "America/Chicago")
    assert stored["7a1c3e5f-0b2d-4f68-9a7c-1e3f5a7c9b0d"].identifier == "dee@example.com"

    by_identifier = {r.identifier: r for r in stored.values()}
    assert (by_identifier["bo@example.com"].type, by_identifier["bo@example.com"].subscribed) == ("Email", True)
    assert (by_identifier["+4915112345678"].external_id, by_identifier["+4915112345678"].channel) == ("user-000789", "sms")
    assert by_identifier["cy@example.com"].subscribed is False
    assert by_identifier["ed@example.com"].subscribed is None  # `subscribed` left empty: unknown, not assumed
    assert by_identifier["anon@example.com"].external_id is None

    assert counts(run_import(cli, tenant, IMPORT)) == (0, 0, 14, 5)
    with runtime.session() as session:
        assert session.scalar(select(func.count()).select_from(Subscription)) == LEGACY_GOOD_ROWS + 11


def import_text(cli, tenant, tmp_path, text: str) -> tuple[dict, str]:
    """Import `text` as a CSV file; the JSON summary and what was written to stderr."""
    path = tmp_path / "players.csv"
    path.write_text(text)
    result = cli.invoke(main, ["subscriptions", "import", "--app", tenant.app_id, str(path)])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


def states(runtime, tenant) -> dict[str, bool | None]:
    return {key: record.subscribed for key, record in records(runtime, tenant).items()}


def test_a_legacy_export_without_notification_types_leaves_the_state_unknown_and_says_so(cli, tenant, runtime, tmp_path):
    summary, stderr = import_text(cli, tenant, tmp_path, "id,device_type,identifier,invalid_identifier\n"
                                                         "s-1,1,tok-a,f\n"
                                                         "s-2,1,tok-b,t\n"
                                                         "s-3,11,c@example.com,f\n")
    assert states(runtime, tenant) == {"s-1": None, "s-2": False, "s-3": None}  # an invalid identifier is unsubscribed
    message = "The file has no notification_types column: the subscription state of 2 records is unknown (not unsubscribed)."
    assert summary["warnings"] == [{"column": "notification_types", "rows": 2, "message": message}]
    assert f"Warning: {message}" in stderr

    # A state an earlier file gave is kept, and no longer counted as unknown.
    import_text(cli, tenant, tmp_path, "id,device_type,notification_types\ns-1,1,1\n")
    summary, _ = import_text(cli, tenant, tmp_path, "id,device_type,identifier,invalid_identifier\n"
                                                    "s-1,1,tok-a,f\n"
                                                    "s-3,11,c@example.com,f\n")
    assert states(runtime, tenant) == {"s-1": True, "s-2": False, "s-3": None}
    assert [(w["column"], w["rows"]) for w in summary["warnings"]] == [("notification_types", 1)]
    assert "1 record is unknown" in summary["warnings"][0]["message"]


def test_the_documented_export_without_notification_types_keeps_country_and_timezone_and_no_state(cli, tenant, runtime):
    """OneSignal's default columns plus the extra fields external_user_id, country and timezone_id."""
    summary = run_import(cli, tenant, LEGACY_NO_NOTIFICATION_TYPES)

    assert counts(summary) == (8, 0, 0, 0)
    assert summary["warnings"] == [{
        "column": "notification_types", "rows": 7,
        "message": "The file has no notification_types column: the subscription state of 7 records is unknown "
                   "(not unsubscribed)."}]
    stored = records(runtime, tenant)
    assert sorted(r.subscribed is None for r in stored.values()) == [False] + [True] * 7
    invalid = stored["c4d2e0f8-6a1b-4c3d-9e5f-7a8b9c0d1e23"]
    assert (invalid.invalid_identifier, invalid.subscribed) == (True, False)
    assert {key: (r.country, r.timezone) for key, r in stored.items() if r.external_id} == {
        "3a0c2f6e-1d4b-4e8a-9c7f-5b2d1e0a9f31": ("US", "America/New_York"),
        "7b5e3d1c-9a8f-4b6d-8e2c-1f0a3b5d7c92": ("US", "America/New_York"),
        "c4d2e0f8-6a1b-4c3d-9e5f-7a8b9c0d1e23": ("DE", "Europe/Berlin"),
        "e8f6a4b2-0c9d-4e7f-8a1b-2c3d4e5f6a74": ("US", "America/Chicago"),
        "1f3e5d7c-9b0a-4c2e-8d4f-6a8b0c2e4f65": ("FR", "3600"),  # no timezone_id: the offset in seconds
        "5a7c9e1b-3d5f-4a7c-9e1b-3d5f7a9c1e86": ("BR", "America/Sao_Paulo"),
    }



def test_exporting_again_with_notification_types_makes_the_states_known(cli, tenant, runtime, tmp_path):
    run_import(cli, tenant, LEGACY_NO_NOTIFICATION_TYPES)
    header, *rows = LEGACY_NO_NOTIFICATION_TYPES.read_text().splitlines()
    again = tmp_path / "with-notification-types.csv"
    again.write_text("\n".join([f"{header},notification_types", *(f"{row},1" for row in rows)]) + "\n")

    summary = run_import(cli, tenant, again)

    assert counts(summary) == (0, 8, 0, 0) and summary["warnings"] == []
    stored = records(runtime, tenant)
    assert sorted(r.subscribed for r in stored.values()) == [False] + [True] * 7  # the invalid identifier stays off
    assert stored["1f3e5d7c-9b0a-4c2e-8d4f-6a8b0c2e4f65"].country == "FR"


def test_a_legacy_export_without_invalid_identifier_cannot_tell_a_positive_notification_types(cli, tenant, runtime, tmp_path):
    summary, _ = import_text(cli, tenant, tmp_path, "id,device_type,notification_types\n"
                                                    "s-1,1,1\n"
                                                    "s-2,1,-2\n"
                                                    "s-3,1,0\n")
    assert states(runtime, tenant) == {"s-1": None, "s-2": False, "s-3": False}
    assert summary["warnings"] == [{
        "column": "invalid_identifier", "rows": 1,
        "message": "The file has no invalid_identifier column: the subscription state of 1 record is unknown "
                   "(a positive notification_types means subscribed only on a valid identifier)."}]

    # With the column, the same records are known, and a re-import without it makes s-1 unknown again.
    summary, _ = import_text(cli, tenant, tmp_path, "id,device_type,notification_types,invalid_identifier\n"
                                                    "s-1,1,1,f\n")
    assert states(runtime, tenant)["s-1"] is True and summary["warnings"] == []
    import_text(cli, tenant, tmp_path, "id,device_type,notification_types\ns-1,1,1\n")
    assert states(runtime, tenant)["s-1"] is None


def test_an_import_file_without_subscribed_leaves_new_records_unknown_and_keeps_known_states(cli, tenant, runtime,
                                                                                            tmp_path):
    import_text(cli, tenant, tmp_path, "external_id,email,phone_number,subscribed\nuser-1,a@example.com,,no\n")
    summary, _ = import_text(cli, tenant, tmp_path, "external_id,email,phone_number,country\n"
                                                    "user-1,a@example.com,,DE\n"
                                                    "user-2,b@example.com,,FR\n"
                                                    "user-2,,+4915112345678,FR\n")
    by_identifier = {r.identifier: r for r in records(runtime, tenant).values()}
    assert {identifier: r.subscribed for identifier, r in by_identifier.items()} == {
        "a@example.com": False, "b@example.com": None, "+4915112345678": None}
    assert by_identifier["a@example.com"].country == "DE"
    assert summary["warnings"] == [{
        "column": "subscribed", "rows": 2,
        "message": "The file has no subscribed column: the subscription state of 2 records is unknown (not unsubscribed)."}]


def test_a_missing_column_that_leaves_no_state_unknown_is_not_warned_about(cli, tenant, runtime, tmp_path):
    summary, stderr = import_text(cli, tenant, tmp_path, "id,device_type,notification_types\ns-1,1,-2\ns-2,0,0\n")
    assert states(runtime, tenant) == {"s-1": False, "s-2": False}
    assert summary["warnings"] == [] and "Warning" not in stderr


def test_a_repeated_subscription_is_one_record_and_the_later_row_wins(cli, tenant, runtime, tmp_path):
    path = tmp_path / "repeat.csv"
    path.write_text("id,device_type,identifier,notification_types\n"
                    "s-1,1,tok-a,1\n"
                    "s-2,0,tok-b,1\n"
                    "s-1,1,tok-c,-2\n")
    expected = {"5000": (2, 1, 0, 0), "1": (0, 2, 1, 0)}  # the second run turns tok-c into tok-a and back
    for chunk_size, expected_counts in expected.items():  # the repeat within one chunk, then across chunks
        assert counts(run_import(cli, tenant, path, "--chunk-size", chunk_size)) == expected_counts
        stored = records(runtime, tenant)
        assert (stored["s-1"].identifier, stored["s-1"].subscribed) == ("tok-c", False)
        assert len(stored) == 2


def test_progress_is_reported_per_committed_chunk_up_to_the_whole_file(tenant, runtime):
    seen: list[int] = []
    with runtime.session() as session:
        summary = import_subscriptions(session, tenant.app_id, LEGACY, chunk_size=20, on_progress=seen.append,
                                       checkpoint=session.commit)
    assert summary.added == LEGACY_GOOD_ROWS
    assert len(seen) == 4 and seen == sorted(seen) and seen[-1] == LEGACY.stat().st_size


def test_every_rejected_row_goes_to_the_errors_file(cli, tenant, tmp_path):
    errors = tmp_path / "rejected.csv"
    run_import(cli, tenant, LEGACY, "--errors-file", str(errors))
    with errors.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][:3] == ["line", "reason", "id"]
    assert [(int(r[0]), r[1]) for r in rows[1:]] == [(e["line"], e["reason"]) for e in LEGACY_REJECTED]
    assert rows[4][2:] == next(csv.reader([LEGACY.read_text().splitlines()[71]]))  # the row as it was


def test_an_unknown_header_fails_naming_the_expected_ones(cli, tenant, tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("user,mail\nu1,a@example.com\n")
    result = cli.invoke(main, ["subscriptions", "import", "--app", tenant.app_id, str(path)])
    assert result.exit_code == 1
    assert "unknown header (user, mail)" in result.output
    assert "legacy export (id, identifier, device_type" in result.output
    assert "import format (external_id, email, phone_number" in result.output


@pytest.mark.parametrize("content, message, imported", [
    (b"", "the file is empty", []),
    (b"id,device_type\ns-1,1\n\xff\xfe,1\n", "line 3 is not UTF-8 text (invalid start byte at byte 1)", ["s-1"]),
    (b"\x1f\x8bnot really gzip", "the gzip data is corrupt (Unknown compression method); nothing was imported", []),
])
def test_an_unreadable_file_fails_with_a_message(cli, tenant, runtime, tmp_path, content, message, imported):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    result = cli.invoke(main, ["subscriptions", "import", "--app", tenant.app_id, str(path)])
    assert result.exit_code == 1
    assert message in result.output
    assert list(records(runtime, tenant)) == imported  # what was read before the error is kept, as it says


def test_an_unknown_app_or_missing_file_fails(cli, tenant, tmp_path):
    assert "no app with id nope" in cli.invoke(main, ["subscriptions", "import", "--app", "nope", str(LEGACY)]).output
    missing = cli.invoke(main, ["subscriptions", "import", "--app", tenant.app_id, str(tmp_path / "missing.csv")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
