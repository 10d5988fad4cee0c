"""storywatch.webhooks.bodies and .matching: what a hook is sent of an event."""

from __future__ import annotations

import json
from typing import Any

from storywatch.filters import Filter, Scope
from storywatch.webhooks.bodies import escape, probe_body, slack_text, standard_body
from storywatch.webhooks.config import HookConfig
from storywatch.webhooks.matching import hook_view, request_body
from tests.test_session import Stream


def make_hook(**kwargs: Any) -> HookConfig:
    return HookConfig(name="h", url="http://127.0.0.1:9/p", origin="http://127.0.0.1:9", **kwargs)


# -- slack ------------------------------------------------------------------------------


def test_slack_names_the_id_the_title_and_the_transition() -> None:
    stream = Stream()
    stream.put("INT-002", title="Slack bridge", status="draft")
    event = stream.put("INT-002", status="in-progress", owner="ada")
    assert slack_text(event.data) == "*INT-002* Slack bridge: draft → in-progress"


def test_slack_says_created_deleted_and_updated_keys() -> None:
    stream = Stream()
    created = stream.put("A-1", title="One", status="draft")
    updated = stream.put("A-1", owner="ada", labels=["x"])
    body = stream.put("A-1", body="new text")
    deleted = stream.delete("A-1")
    assert slack_text(created.data) == "*A-1* One: created"
    assert slack_text(updated.data) == "*A-1* One: updated: owner, labels"
    assert slack_text(body.data) == "*A-1* One: updated: body"
    assert slack_text(deleted.data) == "*A-1* One: deleted"


def test_slack_names_moves_and_invalid_files() -> None:
    stream = Stream()
    stream.put("A-1", title="One", status="draft")
    moved = stream.put("A-1", path="done/A-1.md")
    invalid = stream.invalid("A-1")
    assert slack_text(moved.data) == "*A-1* One: moved: stories/A-1.md → done/A-1.md"
    assert slack_text(invalid.data).startswith("*A-1*: invalid: ")


def test_a_compacted_event_says_so_in_both_formats() -> None:
    stream = Stream()
    event = stream.put("A-1", title="One", status="draft")
    data = {**event.data, "compacted": True}
    slack = json.loads(request_body(make_hook(format="slack"), event, data))
    assert slack == {"text": "*A-1* One: created", "compacted": True}
    standard = json.loads(request_body(make_hook(), event, data))
    assert standard == {**event.data, "compacted": True}
    assert "compacted" not in json.loads(request_body(make_hook(format="slack"), event, event.data))


def test_slack_escapes_the_three_control_characters() -> None:
    stream = Stream()
    stream.put("<A&1>", title="Fix <b> & <i>", status="to <do>")
    event = stream.put("<A&1>", status="done & dusted")
    text = slack_text(event.data)
    assert text == (
        "*&lt;A&amp;1&gt;* Fix &lt;b&gt; &amp; &lt;i&gt;: to &lt;do&gt; → done &amp; dusted"
    )
    assert escape("a&<>b") == "a&amp;&lt;&gt;b"


def test_slack_body_is_json_with_text_only() -> None:
    stream = Stream()
    event = stream.put("A-1", title="One")
    body = json.loads(request_body(make_hook(format="slack"), event, event.data))
    assert body == {"text": "*A-1* One: created"}


# -- standard ---------------------------------------------------------------------------


def test_standard_is_the_event_as_on_the_wire_without_subs() -> None:
    stream = Stream()
    event = stream.put("A-1", title="One")
    body = request_body(make_hook(), event, event.data)
    assert json.loads(body) == event.data
    assert "subs" not in json.loads(body)
    assert json.loads(standard_body({**event.data, "subs": ["s1"]})) == event.data


def test_test_bodies() -> None:
    assert json.loads(probe_body("h", "T", "standard")) == {
        "type": "storywatch.test",
        "hook": "h",
        "time": "T",
    }
    slack = json.loads(probe_body("h", "T", "slack"))
    assert slack["type"] == "storywatch.test" and "h" in slack["text"]


# -- matching ---------------------------------------------------------------------------


def test_filter_applies_before_or_after_the_change() -> None:
    hook = make_hook(filter=Filter(statuses=frozenset({"review"})))
    stream = Stream()
    created = stream.put("A-1", status="draft")
    into = stream.put("A-1", status="review")
    out_of = stream.put("A-1", status="done")
    after = stream.put("A-1", owner="ada")
    assert hook_view(created, hook) is None
    assert hook_view(into, hook) is into.data
    assert hook_view(out_of, hook) is out_of.data
    assert hook_view(after, hook) is None


def test_event_types_filter() -> None:
    hook = make_hook(filter=Filter(events=frozenset({"story.transitioned"})))
    stream = Stream()
    assert hook_view(stream.put("A-1", status="draft"), hook) is None
    assert hook_view(stream.put("A-1", status="review"), hook) is not None


def test_scope_rewrites_before_the_filter() -> None:
    # Leaving the hook's epics arrives as story.deleted (out_of_scope): a hook that only
    # wants deletes gets it, one that only wants updates does not.
    scope = Scope(frozenset({"integration"}))
    deletes = make_hook(scope=scope, filter=Filter(events=frozenset({"story.deleted"})))
    updates = make_hook(scope=scope, filter=Filter(events=frozenset({"story.updated"})))
    stream = Stream()
    stream.put("A-1", epic="integration", title="One")
    left = stream.put("A-1", epic="ui")
    data = hook_view(left, deletes)
    assert data is not None
    assert (data["type"], data["reason"], data["story"]["epic"]) == (
        "story.deleted",
        "out_of_scope",
        "integration",
    )
    assert hook_view(left, updates) is None
    body = json.loads(request_body(deletes, left, data))
    assert body["type"] == "story.deleted" and body["seq"] == left.seq


def test_outside_the_epics_nothing_is_seen() -> None:
    hook = make_hook(scope=Scope(frozenset({"integration"})))
    stream = Stream()
    assert hook_view(stream.put("A-1", epic="ui"), hook) is None
    assert hook_view(stream.put("B-1", epic="integration"), hook) is not None
