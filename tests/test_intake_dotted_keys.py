"""Event-stream items written with dotted keys (`{"event.id": ..., "message.name": ...}`), as a body of
key/value pairs writes them: read as the nested items they spell, and refused per item, naming the key,
when they spell no object. Checked on `prepare`, the intake's step before any database."""
from __future__ import annotations

import json

import pytest

from bridge import mapping
from bridge.intake.service import prepare
from bridge.validation import unflattened
from support import FIXTURES
from support.factories import T0, event_item, flattened

STREAM = json.loads((FIXTURES / "onesignal-events.json").read_text(encoding="utf-8"))
VOCABULARY = mapping.vocabulary("onesignal-current")


def prepared(items: list) -> tuple[dict, list]:
    """What `prepare` made of `items`: its counts and rejections, and each valid event as mapped."""
    result = prepare("app-1", VOCABULARY, items)
    return vars(result.result), [(ev.item, ev.user_id, ev.amplitude_event) for ev in result.events]


def test_the_platforms_stream_written_with_dotted_keys_is_taken_as_the_nested_one():
    flat = [flattened(item) for item in STREAM]
    assert all("event.id" in item for item in flat)
    counts, events = prepared(flat)
    assert (counts, events) == prepared(STREAM)
    assert counts["ignored"] == 1 and not counts["rejected"] and len(events) == len(STREAM) - 1


def test_a_nested_item_is_passed_on_as_it_is():
    item = event_item()
    assert unflattened(item) is item


def test_per_language_text_may_be_given_by_dotted_keys_too():
    item = event_item(message={"id": "m1", "name": "Sale", "title": {"en": "Hi", "de": "Hallo"}})
    flat = flattened(item)
    assert flat["message.title.en"] == "Hi"
    assert prepared([flat]) == prepared([item])


@pytest.mark.parametrize(("change", "errors"), [
    ({"event": "x"}, {"event": "Given whole and by dotted keys too ('event.id'); send one or the other."}),
    ({"event.data": {"page_id": "p1"}, "event.data.page_name": "Welcome"},
     {"event.data": "Given whole and by dotted keys too ('event.data.page_name'); send one or the other."}),
    ({"event..kind": "message.push.sent"}, {"event..kind": "Has an empty part: each dot of a key must stand between two names."}),
    ({".id": "e"}, {".id": "Has an empty part: each dot of a key must stand between two names."}),
    ({"message.name.": "Sale"}, {"message.name.": "Has an empty part: each dot of a key must stand between two names."}),
    ({"data." + ".".join(["a"] * 32): 1}, {"data." + ".".join(["a"] * 32): "Has more than 32 dot-separated parts."}),
], ids=["a field given whole and inside", "an object given whole and inside", "an empty part", "a leading dot",
        "a trailing dot", "too many parts"])
def test_a_key_that_spells_no_object_refuses_its_item_alone(change, errors):
    bad = {**flattened(event_item("evt-2")), **change}
    counts, events = prepared([flattened(event_item("evt-1")), bad, event_item("evt-3")])
    assert counts["rejected"] == [{"index": 1, "errors": errors}]
    assert [item["event"]["id"] for item, _, _ in events] == ["evt-1", "evt-3"]


def test_the_object_given_whole_conflicts_whichever_comes_first():
    flat = flattened(event_item())
    whole_last = {**flat, "event": {"id": "evt-1"}}
    whole_first = {"event": {"id": "evt-1"}, **flat}
    assert prepared([whole_last])[0]["rejected"] == prepared([whole_first])[0]["rejected"] != []


def test_as_deep_a_key_as_the_body_may_nest_is_taken():
    deep = "data." + ".".join(["a"] * 31)
    counts, events = prepared([{**flattened(event_item()), deep: {"b": [1]}}])
    assert not counts["rejected"] and len(events) == 1


def test_unknown_dotted_keys_are_left_out_as_unknown_nested_keys_are():
    unknown = {"event.app_id": "a1", "event.onesignal_id": "o1", "message.url": "https://x.example", "origin.name": "x"}
    nested = event_item(app_id="a1", onesignal_id="o1", message={**event_item()["message"], "url": "https://x.example"})
    nested["origin"] = {"name": "x"}
    assert prepared([{**flattened(event_item()), **unknown}]) == prepared([nested]) == prepared([event_item()])


def test_a_kind_the_app_does_not_send_is_ignored_in_either_shape():
    item = event_item(kind="session.started")
    assert prepared([flattened(item)])[0]["ignored"] == prepared([item])[0]["ignored"] == 1


@pytest.mark.parametrize(("times", "rejected"), [
    ({"event.timestamp": str(T0), "event.datetime": ""}, False),
    ({"event.timestamp": "", "event.datetime": "2025-11-23T00:02:03.123Z"}, False),
    ({"event.timestamp": "", "event.datetime": ""}, True),
], ids=["blank datetime", "blank timestamp", "both blank"])
def test_a_blank_time_is_absent_and_the_other_one_counts(times, rejected):
    """Every value of a key/value body is text, and a variable the event lacks prints as ""."""
    flat = {**flattened(event_item(timestamp=None)), **times}
    counts, events = prepared([flat])
    if rejected:
        assert counts["rejected"] == [{"index": 0, "errors": {
            "event.timestamp": "One of event.timestamp (epoch seconds) or event.datetime (ISO 8601) is required."}}]
    else:
        assert not counts["rejected"] and len(events) == 1
