"""The intake's validation fast path is the marshmallow schema, only faster: for every item it takes it
returns exactly what `ITEM_SCHEMA.load` returns, and it takes the items the platform really sends. An item
written with dotted keys reaches both as the nested item it spells."""
from __future__ import annotations

import copy
import json
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from bridge.intake.schemas import ITEM_SCHEMA, fast_load, load_item
from bridge.mapping import KNOWN_KINDS
from bridge.text import has_unprintable
from bridge.validation import unflattened
from support import FIXTURES, ROOT
from support.factories import flattened

REFERENCE = ROOT.parent / "shared" / "reference" / "onesignal-event-stream.json"
MISSING = object()  # a key left out of the item
EARLIEST, LATEST = 946_684_800, 1_763_856_000  # 2000-01-01 and a time before the tests run, in epoch seconds

ids = st.one_of(st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=40),
                st.sampled_from(["", "x" * 128, "x" * 129, "a\x00b", " ", "é" * 128]))
kinds = st.one_of(st.sampled_from(sorted(KNOWN_KINDS)), st.sampled_from(["", "k" * 64, "k" * 65, "custom.kind", "a\x00"]))
numbers = st.one_of(st.integers(min_value=-10, max_value=10**19), st.floats(allow_nan=True),
                    st.sampled_from([0, 1763856000, 1763856000123, 1763856000123456, 99999999999, EARLIEST - 1,
                                     EARLIEST, EARLIEST * 1000 - 1, 10**20, True, "1763856000"]))
moments = st.sampled_from(["2025-11-23T00:02:03Z", "2025-11-23T00:02:03+02:00", "2025-11-23T00:02:03", "yesterday", "",
                           "2025-11-23", "9999-12-31T23:59:59Z", "2025-11-23 00:02:03 UTC", "1999-12-31T23:59:59Z"])
oddities = st.sampled_from([None, 0, 1.5, True, [], {}, ["a"], {"a": 1}])
texts = st.one_of(st.text(max_size=20), st.sampled_from(["", "x" * 64, "x" * 65, "x" * 256, "x" * 257, "a\x00"]))
localized = st.one_of(texts, st.dictionaries(st.sampled_from(["en", "de", "fr"]), st.one_of(texts, oddities), max_size=3))


PATHS = [("event", k) for k in ("id", "kind", "timestamp", "datetime", "subscription_id", "subscription_device_type",
                                 "external_id", "data")] + [("message", k) for k in ("id", "name", "title", "contents", "template_id")] \
        + [("data",), ("user",), ("event",), ("message",)]
odd_values = st.one_of(ids, kinds, numbers, moments, oddities, texts, localized, st.just(MISSING),
                       st.just({"big": "x" * 20_000}))


def drop_missing(value):
    if isinstance(value, dict):
        return {k: drop_missing(v) for k, v in value.items() if v is not MISSING}
    return value


def valid_items() -> st.SearchStrategy:
    """Items as the stream sends them, valid by construction."""
    clean = st.text(max_size=30).filter(lambda v: not has_unprintable(v))
    event = st.fixed_dictionaries({
        "id": ids.filter(lambda v: 0 < len(v) <= 128 and not has_unprintable(v)),
        "kind": st.sampled_from(sorted(KNOWN_KINDS)),
        "subscription_id": st.uuids().map(str),
        "subscription_device_type": st.sampled_from(["iOS", "Email", None]),
        "external_id": st.one_of(st.none(), clean),
        "app_id": st.just("ignored"),
    }, optional={"data": st.sampled_from([None, {"failure_reason": "Bounced"}, {"page_id": "p1", "target_name": "Go"}]),
                 "timestamp": st.one_of(st.integers(min_value=EARLIEST, max_value=LATEST),
                                        st.integers(min_value=EARLIEST * 1000, max_value=LATEST * 1000)),
                 "datetime": st.sampled_from(["2025-11-23T00:02:03Z", "2025-11-23T00:02:03+02:00"])}).filter(
        lambda e: "timestamp" in e or "datetime" in e)
    message = st.fixed_dictionaries({
        "id": ids.filter(lambda v: 0 < len(v) <= 128 and not has_unprintable(v)),
        "name": st.text(min_size=1, max_size=30),
    }, optional={"title": st.one_of(st.none(), clean, st.just({"en": "Hi", "de": "Hallo"})),
                 "contents": st.one_of(st.none(), clean, st.just({"fr": "Salut"})),
                 "template_id": st.one_of(st.none(), clean)})
    return st.fixed_dictionaries({"event": event, "message": message},
                                 optional={"data": st.just({"target_id": "cta"}), "user": st.just({"tags": {"a": "1"}})})


@st.composite
def items_with_faults(draw) -> dict:
    """A valid item with one to three of its fields replaced by odd values (or left out)."""
    item = draw(valid_items())
    for path in draw(st.lists(st.sampled_from(PATHS), min_size=1, max_size=3)):
        parent = item
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent.get(key), dict) else None
            if parent is None:
                break
        if parent is not None:
            value = draw(odd_values)
            # A copy: an odd value is one shared object, which a later path of this item (or a later item)
            # could otherwise change, or put inside itself.
            parent[path[-1]] = value if value is MISSING else copy.deepcopy(value)
    return drop_missing(item)


def schema_load(raw):
    try:
        return ITEM_SCHEMA.load(raw)
    except ValidationError as exc:
        return exc


@settings(max_examples=500, derandomize=True, deadline=None)
@given(items_with_faults())
def test_whatever_the_fast_path_takes_it_loads_exactly_as_the_schema(raw):
    fast = fast_load(raw)
    if fast is not None:
        assert fast == schema_load(raw)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(items_with_faults())
def test_an_item_written_with_dotted_keys_reaches_both_paths_as_the_nested_item(raw):
    assert unflattened(raw) is raw
    assert unflattened(flattened(raw)) == raw


@settings(max_examples=200, derandomize=True, deadline=None)
@given(valid_items())
def test_the_fast_path_takes_valid_items(raw):
    assert fast_load(raw) is not None
    assert fast_load(raw) == schema_load(raw)


ODD = [MISSING, None, "", " ", "x" * 64, "x" * 65, "x" * 128, "x" * 129, "x" * 256, "x" * 257, "x" * 2048, "x" * 2049,
       "a\x00b", 0, -1, 1.5, float("nan"), float("inf"), True, 99999999999, 1763856000123456, 40521, [], ["a"], {},
       {"en": "Hi"}, {"de": 1}, {"big": "x" * 20_000}, "2025-11-23T00:02:03Z", "2025-11-23T00:02:03", "message.iam.clicked"]
BASES = [
    {"event": {"id": "e1", "kind": "message.push.sent", "timestamp": 1763856000, "subscription_id": "s1",
               "subscription_device_type": "iOS", "external_id": "u1"},
     "message": {"id": "m1", "name": "Sale", "title": {"en": "Hi"}, "contents": "Open"}, "data": {"target_id": "t"}},
    {"event": {"id": "e2", "kind": "message.iam.clicked", "datetime": "2025-11-23T00:02:03Z", "subscription_id": "s2"},
     "message": {"name": "Banner"}},
]


@pytest.mark.parametrize("base", BASES, ids=["push", "iam"])
def test_every_single_field_fault_is_loaded_as_the_schema_loads_it(base):
    for path in PATHS:
        for value in ODD:
            raw = json.loads(json.dumps(base))
            parent = raw
            for key in path[:-1]:
                parent = parent[key]
            parent[path[-1]] = value
            raw = drop_missing(raw)
            fast = fast_load(raw)
            assert fast is None or fast == schema_load(raw), (path, value)


@pytest.mark.parametrize("path", [REFERENCE, FIXTURES / "onesignal-events.json"], ids=["reference", "fixture"])
def test_the_fast_path_takes_the_payloads_the_platform_sends(path):
    mapped = [raw for raw in json.loads(path.read_text()) if raw["event"]["kind"] in KNOWN_KINDS]
    assert mapped
    for raw in mapped:
        assert fast_load(raw) is not None and fast_load(raw) == schema_load(raw)


def test_an_invalid_item_gets_the_schemas_own_errors():
    raw = {"event": {"id": "e1", "kind": "message.push.sent", "subscription_id": "s1"}, "message": {"name": 5}}
    with pytest.raises(ValidationError) as fast:
        load_item(raw)
    assert fast.value.messages == schema_load(raw).messages
    assert set(fast.value.messages) == {"event", "message"}
