"""The README's setup guides, tried step by step against the local servers.

- **Event Streams.** The guide's key/value pairs (`guides/onesignal-event-stream-keys.json`) are
  rendered as the platform builds such a body (each value's Liquid variables substituted, then the
  object encoded as JSON), and its alternative custom body (`guides/onesignal-event-stream-body.json`)
  as the platform renders that (variables substituted as plain text, nothing escaped), from the
  realistic stream of `fixtures/onesignal-events.json`. Each is posted one event per request, with the
  guide's headers, to the real `bridge web`, and each event must reach the local Amplitude server
  (`bridge sink`) exactly as the same event posted in the intake's own shape does. An event whose
  message holds a double quote, a backslash, a line break, a tab and an emoji must arrive from the
  key/value pairs too; its custom body is refused, as the guide warns.
- **Amplitude's cohort webhook.** Amplitude's default payload (`fixtures/cohort-initial-sync.json`) is
  posted with the headers the destination sends (its two preset ones and the guide's custom one), and
  the cohort report shows its users.
"""
from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import httpx
import pytest

from support import ROOT
from support.factories import flattened
from support.processes import BRIDGE, Process, bridge_cli, free_port, run_bridge, start_web, wait_until, wait_until_answering

TEMPLATE = ROOT / "guides" / "onesignal-event-stream-body.json"
PAIRS = ROOT / "guides" / "onesignal-event-stream-keys.json"
STREAM = ROOT / "fixtures" / "onesignal-events.json"
COHORT = ROOT / "fixtures" / "cohort-initial-sync.json"
README = ROOT / "README.md"

# The guide's headers, as its table gives them (the app's api_key, cohort_token filled in).
STREAM_HEADERS = {"Authorization": "Bearer {api_key}", "Content-Type": "application/json"}
# What Amplitude's cohort webhook destination sends: its two preset headers, then the guide's custom one.
COHORT_HEADERS = {"Content-Type": "application/json", "User-Agent": "Amplitude/Webhook/1.0",
                  "Authorization": "Bearer {cohort_token}"}
GUIDE_KEY, PAIRS_KEY, DIRECT_KEY = "amp-guide-key", "amp-pairs-key", "amp-direct-key"
# What a custom body cannot carry, printed unescaped into its JSON text: in a message's name, title and contents.
HOSTILE_NAME = 'Say "hi" to C:\\new\nline\tand 🎉'


# -- the platform's template rendering ---------------------------------------------------------------

_OUTPUT = re.compile(r"\{\{\s*(.*?)\s*\}\}")


def stream_variables(item: dict) -> dict:
    """The template variables the platform has for one stream event (`event.*`, `event.data.*`,
    `message.*`, `user.*`), from an event in the intake's shape: the channel-specific fields that the
    fixture keeps in the item's top-level `data` are the stream's `event.data`, and an event given only
    its epoch `timestamp` has the same moment as its `datetime`."""
    event = dict(item["event"])
    event["data"] = event.get("data") or item.get("data") or {}
    if event.get("datetime") is None:  # the stream always has both; the fixture gives some events one
        event["datetime"] = datetime.fromtimestamp(event["timestamp"], UTC).isoformat(timespec="milliseconds")
    return {"event": event, "message": item.get("message") or {}, "user": item.get("user") or {}}


def _lookup(variables: dict, path: str) -> object:
    value: object = variables
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _printed(value: object) -> str:
    """A value as Liquid prints it: nothing for nil; an object as the platform's documentation shows one
    printed (`{'en':'Your title'}`), which is why the template never prints an object."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ",".join(f"'{k}':'{_printed(v)}'" for k, v in value.items()) + "}"
    return str(value)


def render(template: str, variables: dict) -> str:
    """`template` with each `{{ path }}` and `{{ path | default: other.path }}` replaced, as plain text:
    Liquid does not escape what it prints into JSON."""

    def output(match: re.Match) -> str:
        expression, _, fallback = match.group(1).partition("|")
        value = _lookup(variables, expression.strip())
        if fallback:
            name, _, argument = fallback.partition(":")
            assert name.strip() == "default", f"the template uses a filter this test does not know: {name}"
            if value in (None, "", False):
                value = _lookup(variables, argument.strip())
        return _printed(value)

    return _OUTPUT.sub(output, template)


def key_value_body(pairs: dict, variables: dict) -> str:
    """The body the platform builds from key/value pairs: each value rendered as Liquid renders it, then
    the object encoded as JSON, so whatever a value holds stays a JSON string."""
    return json.dumps({key: render(value, variables) for key, value in pairs.items()}, ensure_ascii=False)


def hostile_event(stream: list[dict]) -> dict:
    """A push sent of the stream's first user, one second after the stream's first event, whose message
    name, title and contents hold what a JSON string must escape."""
    item = json.loads(json.dumps(stream[0]))
    item["event"].update(id="7c9e6679-7425-40de-944b-e07fc1f90ae7", timestamp=item["event"]["timestamp"] + 1)
    item["message"].update(name=HOSTILE_NAME, title={"en": f"Title: {HOSTILE_NAME}", "de": "Titel"},
                           contents=f"Contents: {HOSTILE_NAME}")
    return item


def test_the_readme_shows_the_key_value_pairs_as_they_are():
    text = README.read_text(encoding="utf-8")
    start = text.index("guides/onesignal-event-stream-keys.json")
    table = re.search(r"\| key \| value \|\n\|---\|---\|\n((?:\|.*\|\n)+)", text[start:]).group(1)
    shown = {}
    for row in table.splitlines():
        key, value = re.fullmatch(r"\| `([^`]+)` \| `(.+)` \|", row).groups()
        shown[key] = value.replace("\\|", "|")  # a | inside a table cell is written \|
    assert list(shown.items()) == list(json.loads(PAIRS.read_text(encoding="utf-8")).items())


def test_the_key_value_pairs_map_as_the_custom_body_does():
    assert flattened(json.loads(TEMPLATE.read_text(encoding="utf-8"))) == json.loads(PAIRS.read_text(encoding="utf-8"))


def test_the_readme_shows_the_template_as_it_is():
    text = README.read_text(encoding="utf-8")
    start = text.index("guides/onesignal-event-stream-body.json")
    shown = re.search(r"```json\n(.*?)\n```", text[start:], re.S).group(1)
    assert shown == TEMPLATE.read_text(encoding="utf-8").rstrip("\n")


def test_every_variable_of_the_guides_is_one_the_platform_documents():
    """The variables the platform's Event Stream data reference lists (event, event.data, message,
    user), so a typo in the template cannot pass as a field the stream happens not to send."""
    documented = {"event.id", "event.kind", "event.timestamp", "event.datetime", "event.app_id",
                  "event.subscription_device_type", "event.subscription_id", "event.onesignal_id",
                  "event.external_id", "event.data.failure_reason", "event.data.page_id", "event.data.page_name",
                  "event.data.target_id", "event.data.target_name", "message.id", "message.name",
                  "message.title", "message.contents", "message.template_id", "user.language",
                  "user.external_id", "user.onesignal_id"}
    used = set()
    for expression in _OUTPUT.findall(TEMPLATE.read_text(encoding="utf-8") + PAIRS.read_text(encoding="utf-8")):
        for part in expression.replace("| default:", "|").split("|"):
            used.add(part.strip().removesuffix(".en"))
    assert used <= documented, sorted(used - documented)
    json.loads(TEMPLATE.read_text(encoding="utf-8"))  # the template itself is JSON: every value quoted


# -- the local servers --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The README's embedded mode on the local servers: `bridge sink` as Amplitude, `bridge web` on a
    migrated SQLite, three apps under the onesignal-current profile (the most properties to compare): one
    fed by the guide's custom body, one by its key/value pairs, one by the intake's own shape."""
    tmp = tmp_path_factory.mktemp("guides")
    port = free_port()
    sink = Process([BRIDGE, "sink", "--port", str(port)], {}, tmp / "sink.log")
    sink_url = f"http://127.0.0.1:{port}"
    env = {"DATABASE_URL": f"sqlite:///{tmp / 'bridge.db'}", "REDIS_URL": "", "AMPLITUDE_BASE_URL": sink_url,
           "DELIVERY_LINGER_SECONDS": "0"}
    web = None
    try:
        wait_until_answering(sink, f"{sink_url}/_sink/stats", "bridge sink")
        assert run_bridge(env, "db", "upgrade").returncode == 0
        apps = {key: bridge_cli(env, "apps", "create", "--name", key, "--amplitude-api-key", key,
                                "--naming", "onesignal-current") for key in (GUIDE_KEY, PAIRS_KEY, DIRECT_KEY)}
        web, url = start_web(env, tmp / "web.log")
        yield {"url": url, "sink": sink_url, "apps": apps}
    finally:
        if web is not None:
            web.stop()
        sink.stop()


def sink_events(local: dict, api_key: str) -> list[dict]:
    return httpx.get(f"{local['sink']}/_sink/events", params={"api_key": api_key}, timeout=10).json()


def post_events(local: dict, api_key: str, bodies: list[str]) -> list[dict]:
    """Each body in its own request, as the stream sends them; the intake's answers."""
    app = local["apps"][api_key]
    headers = {name: value.format(api_key=app["api_key"]) for name, value in STREAM_HEADERS.items()}
    answers = []
    with httpx.Client(timeout=10) as client:
        for body in bodies:
            answer = client.post(f"{local['url']}/v1/apps/{app['app_id']}/events", content=body.encode(), headers=headers)
            assert answer.status_code == 202, (answer.status_code, answer.text, body)
            answers.append(answer.json())
    return answers


@pytest.mark.slow
def test_an_event_stream_set_up_as_the_guide_says_delivers_what_the_intake_shape_does(local):
    stream = json.loads(STREAM.read_text(encoding="utf-8"))
    hostile = hostile_event(stream)
    pairs = json.loads(PAIRS.read_text(encoding="utf-8"))
    direct = post_events(local, DIRECT_KEY, [json.dumps(item) for item in [*stream, hostile]])
    paired = post_events(local, PAIRS_KEY, [key_value_body(pairs, stream_variables(item)) for item in [*stream, hostile]])
    template = TEMPLATE.read_text(encoding="utf-8")
    custom = post_events(local, GUIDE_KEY, [render(template, stream_variables(item)) for item in stream])

    buckets = ("accepted", "skipped", "duplicates", "ignored")
    assert [{b: a[b] for b in buckets} for a in paired] == [{b: a[b] for b in buckets} for a in direct]
    assert [{b: a[b] for b in buckets} for a in custom] == [{b: a[b] for b in buckets} for a in direct[:-1]]
    assert all(not answer["rejected"] for answer in paired + custom)
    accepted = sum(answer["accepted"] for answer in direct)
    assert accepted >= 30 and direct[-1]["accepted"] == 1  # most of the realistic stream is sent on to Amplitude

    def delivered(api_key: str, count: int) -> list[dict]:
        def all_there():
            events = sink_events(local, api_key)
            return events if len(events) == count else None

        events = wait_until(all_there, 30, f"the {count} accepted events of {api_key} at the sink")
        return sorted(events, key=lambda event: event["insert_id"])

    from_intake_shape = delivered(DIRECT_KEY, accepted)
    from_pairs, from_template = delivered(PAIRS_KEY, accepted), delivered(GUIDE_KEY, accepted - 1)
    assert from_pairs == from_intake_shape
    [spelled] = [e for e in from_pairs if e["event_properties"].get("message_name") == HOSTILE_NAME]
    assert {k: spelled["event_properties"][k] for k in ("message_title", "message_contents")} == {
        "message_title": f"Title: {HOSTILE_NAME}", "message_contents": f"Contents: {HOSTILE_NAME}"}
    assert from_template == [e for e in from_intake_shape if e != spelled]
    # What the guide's mapping carries, spelled out for one in-app click (its fields in event.data).
    click = next(e for e in from_pairs if e["event_type"] == "[Onesignal] IAM Clicked")
    assert {k: click["event_properties"][k] for k in ("click_action_id", "page_id", "page_name", "target_name")} == {
        "click_action_id": "cta-upgrade", "page_id": "p1", "page_name": "Welcome", "target_name": "Upgrade now"}
    push = next(e for e in from_pairs if e["event_type"] == "[Onesignal] Push Clicked" and e["user_id"] == "user-000123")
    assert push["event_properties"]["message_title"] == "50% off today"  # a per-language title: its `en` text


@pytest.mark.slow
def test_amplitudes_cohort_webhook_set_up_as_the_guide_says_fills_the_cohort_report(local):
    app = local["apps"][GUIDE_KEY]
    headers = {name: value.format(cohort_token=app["cohort_token"]) for name, value in COHORT_HEADERS.items()}
    payload = json.loads(COHORT.read_text(encoding="utf-8"))
    answer = httpx.post(f"{local['url']}/v1/apps/{app['app_id']}/amplitude/cohorts", content=COHORT.read_bytes(),
                        headers=headers, timeout=10)
    assert answer.status_code == 200 and answer.json()["status"] == "accepted"
    users = {user["user_id"] for user in payload["users"]}
    report_url = f"{local['url']}/v1/apps/{app['app_id']}/cohorts/{payload['cohort_id']}"
    auth = {"Authorization": f"Bearer {app['api_key']}"}

    def report():
        got = httpx.get(report_url, headers=auth, timeout=10)
        return got.json() if got.status_code == 200 and got.json()["users"]["in_cohort"] == len(users) else None

    shown = wait_until(report, 30, "the cohort report to show the webhook's users")
    assert shown["cohort_name"] == payload["cohort_name"]
    assert shown["users"]["matched"] >= 1  # the event stream above taught the registry user-000123's devices


@pytest.mark.slow
@pytest.mark.parametrize("message_name", ['Say "hi"', "C:\\path", "Two\nlines", "A\ttab"],
                         ids=["double quote", "backslash", "line break", "tab"])
def test_a_character_printed_unescaped_breaks_the_custom_body_as_the_guide_warns(local, message_name):
    """The custom body's stated limit: Liquid printing a value as it is, such a character in a message
    name makes the body invalid JSON, refused whole. (The key/value pairs carry it: the test above.)"""
    item = json.loads(STREAM.read_text(encoding="utf-8"))[0]
    item["message"]["name"] = message_name
    app = local["apps"][GUIDE_KEY]
    answer = httpx.post(f"{local['url']}/v1/apps/{app['app_id']}/events", timeout=10,
                        content=render(TEMPLATE.read_text(encoding="utf-8"), stream_variables(item)).encode(),
                        headers={name: value.format(api_key=app["api_key"]) for name, value in STREAM_HEADERS.items()})
    assert (answer.status_code, answer.json()["error"]) == (400, "invalid_json")
