"""Unit tests for storywatch.coalesce: scope views and merging pending events (SPEC §4, §6)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from storywatch.coalesce import Pending, merge, transformed
from storywatch.events import Event, old_state
from storywatch.filters import Scope
from tests.test_session import Stream

ALL = Scope()
INTEGRATION = Scope(frozenset({"integration"}))


def pending(event: Event, subs: tuple[str, ...] = ("s1",), replay: bool = False) -> Pending:
    return Pending.of(event, subs, replay)


def merged(*events: Event) -> Pending | None:
    out: Pending | None = pending(events[0])
    for event in events[1:]:
        assert out is not None
        out = merge(out, pending(event))
    return out


def wire(item: Pending) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(item.frame())
    return message


# -- scope views ----------------------------------------------------------------------


def test_an_unscoped_token_sees_the_event_as_is() -> None:
    stream = Stream()
    event = stream.put("A", epic="ui")
    view = transformed(event, ALL)
    assert view is not None
    assert (view.event, view.type, view.data) == (event, "story.created", None)
    assert view.before is None and view.after == event.story


def test_inside_the_scope_nothing_is_rewritten() -> None:
    stream = Stream()
    stream.put("A", epic="integration", status="a")
    event = stream.put("A", status="b")
    view = transformed(event, INTEGRATION)
    assert view is not None and view.data is None and view.type == "story.transitioned"


@pytest.mark.parametrize("kind", ["created", "updated", "deleted", "invalid"])
def test_outside_the_scope_nothing_is_seen(kind: str) -> None:
    stream = Stream()
    event = stream.put("A", epic="ui", status="a")
    if kind == "updated":
        event = stream.put("A", status="b")
    elif kind == "deleted":
        event = stream.delete("A")
    elif kind == "invalid":
        event = stream.invalid("A")
    assert transformed(event, INTEGRATION) is None


def test_invalid_inside_the_scope_is_seen() -> None:
    stream = Stream()
    stream.put("A", epic="integration")
    view = transformed(stream.invalid("A"), INTEGRATION)
    assert view is not None and view.type == "story.invalid" and view.data is None


def test_leaving_the_scope_is_an_out_of_scope_delete_with_only_the_old_state() -> None:
    stream = Stream()
    stream.put("A", epic="integration", status="draft", owner="ada", path="i/A.md")
    event = stream.put("A", epic="ui", status="secret", path="u/A.md", body="b")
    view = transformed(event, INTEGRATION)
    assert view is not None and view.data is not None
    data = view.data
    assert (view.type, view.before, view.after) == ("story.deleted", old_state(event.data), None)
    assert data["type"] == "story.deleted" and data["reason"] == "out_of_scope"
    assert data["story"] == {
        "id": "A",
        "epic": "integration",
        "status": "draft",
        "owner": "ada",
        "path": "i/A.md",
    }
    assert data["path"] == "i/A.md"
    assert data["changes"] == {
        "id": {"old": "A", "new": None},
        "epic": {"old": "integration", "new": None},
        "status": {"old": "draft", "new": None},
        "owner": {"old": "ada", "new": None},
    }
    assert data["body_changed"] is False
    assert "from" not in data and "old_path" not in data
    assert (data["seq"], data["epoch"], data["time"], data["source"]) == (
        event.seq,
        event.epoch,
        event.data["time"],
        event.data["source"],
    )
    assert "secret" not in json.dumps(data) and "u/A.md" not in json.dumps(data)


def test_entering_the_scope_is_an_in_scope_create_with_the_new_state() -> None:
    stream = Stream()
    stream.put("A", epic="ui", status="hidden")
    event = stream.put("A", epic="integration", status="draft")
    view = transformed(event, INTEGRATION)
    assert view is not None and view.data is not None
    data = view.data
    assert (view.type, view.before, view.after) == ("story.created", None, event.story)
    assert data["reason"] == "in_scope"
    assert data["story"] == event.story
    assert all(change["old"] is None for change in data["changes"].values())
    assert "hidden" not in json.dumps(data) and "from" not in data


def test_a_rewritten_view_becomes_a_pending_entry_without_the_shared_event() -> None:
    stream = Stream()
    stream.put("A", epic="integration")
    view = transformed(stream.put("A", epic="ui"), INTEGRATION)
    assert view is not None
    entry = Pending.of(view, ("s1",), True)
    assert entry.event is None and entry.type == "story.deleted"
    message = wire(entry)
    assert message["subs"] == ["s1"] and message["replay"] is True


# -- merge ----------------------------------------------------------------------------


def test_two_updates_merge_first_old_to_last_new() -> None:
    stream = Stream()
    stream.put("A", title="one", owner="x", status="s")
    first = stream.put("A", title="two", owner="y")
    second = stream.put("A", title="three", labels=["l"])
    out = merged(first, second)
    assert out is not None
    message = wire(out)
    assert message["type"] == "story.updated"
    assert message["coalesced"] == 2 and out.count == 2
    assert message["changes"] == {
        "title": {"old": "one", "new": "three"},
        "owner": {"old": "x", "new": "y"},
        "labels": {"old": None, "new": ["l"]},
    }
    assert message["story"] == second.story
    assert (message["seq"], message["time"], message["source"]) == (
        second.seq,
        second.data["time"],
        second.data["source"],
    )


def test_status_a_b_c_is_one_transition_from_a_to_c() -> None:
    stream = Stream()
    stream.put("A", status="a")
    out = merged(
        stream.put("A", status="b"), stream.put("A", title="t"), stream.put("A", status="c")
    )
    assert out is not None
    message = wire(out)
    assert message["type"] == "story.transitioned"
    assert (message["from"], message["to"], message["coalesced"]) == ("a", "c", 3)
    assert message["changes"] == {
        "status": {"old": "a", "new": "c"},
        "title": {"old": None, "new": "t"},
    }


def test_a_transition_that_returns_is_an_update_when_something_else_changed() -> None:
    stream = Stream()
    stream.put("A", status="a")
    out = merged(stream.put("A", status="b", title="t"), stream.put("A", status="a"))
    assert out is not None
    assert out.type == "story.updated"
    assert "from" not in out.data and "to" not in out.data


def test_a_move_keeps_the_first_old_path_and_a_later_transition_wins_the_type() -> None:
    stream = Stream()
    stream.put("A", status="a", path="x/A.md")
    out = merged(stream.put("A", path="y/A.md"), stream.put("A", status="b", path="z/A.md"))
    assert out is not None
    assert out.type == "story.transitioned"
    assert (out.data["old_path"], out.data["path"]) == ("x/A.md", "z/A.md")
    out = merged(stream.put("A", path="w/A.md"), stream.put("A", title="t"))
    assert out is not None and out.type == "story.moved"
    assert out.data["old_path"] == "z/A.md"


def test_body_changed_is_kept_from_any_merged_event() -> None:
    stream = Stream()
    stream.put("A", status="a", body="one")
    out = merged(stream.put("A", body="two"), stream.put("A", title="t"))
    assert out is not None and out.data["body_changed"] is True
    out = merged(stream.put("A", title="u"), stream.put("A", body="three"))
    assert out is not None and out.data["body_changed"] is True


def test_body_only_edits_there_and_back_stay_an_update() -> None:
    stream = Stream()
    stream.put("A", status="a", body="one")
    out = merged(stream.put("A", body="two"), stream.put("A", body="one"))
    # The front-matter is unchanged but the body did change twice: still an update.
    assert out is not None and out.type == "story.updated" and out.data["body_changed"] is True


def test_create_then_delete_cancels() -> None:
    stream = Stream()
    assert (
        merged(stream.put("A", status="a"), stream.put("A", status="b"), stream.delete("A")) is None
    )


def test_create_then_changes_is_a_create_of_the_last_state() -> None:
    stream = Stream()
    out = merged(
        stream.put("A", status="a", path="x/A.md"),
        stream.put("A", status="b"),
        stream.put("A", path="y/A.md"),
    )
    assert out is not None
    message = wire(out)
    assert message["type"] == "story.created" and message["coalesced"] == 3
    assert message["story"] == stream.states["A"].fields
    assert all(c["old"] is None for c in message["changes"].values())
    assert "from" not in message and "old_path" not in message


def test_changes_then_delete_is_a_delete_of_the_last_state() -> None:
    stream = Stream()
    stream.put("A", status="a")
    out = merged(stream.put("A", status="b"), stream.delete("A"))
    assert out is not None
    assert out.type == "story.deleted"
    assert out.data["story"]["status"] == "b"
    assert out.data["changes"]["status"] == {"old": "b", "new": None}
    assert "from" not in out.data


def test_delete_then_recreate() -> None:
    stream = Stream()
    stream.put("A", status="a", title="t")
    out = merged(stream.delete("A"), stream.put("A", status="b", title="t"))
    assert out is not None
    assert (out.type, out.data["from"], out.data["to"]) == ("story.transitioned", "a", "b")
    stream.put("A", status="a")
    assert merged(stream.delete("A"), stream.put("A", status="a", title="t")) is None


def test_a_merge_back_to_the_start_is_none() -> None:
    stream = Stream()
    stream.put("A", status="a", title="t")
    assert (
        merged(
            stream.put("A", status="b"),
            stream.put("A", title="u"),
            stream.put("A", status="a", title="t"),
        )
        is None
    )


def test_change_delete_recreate_compares_with_the_first_old_state() -> None:
    stream = Stream()
    stream.put("A", title="x")
    out = merged(stream.put("A", title="y"), stream.delete("A"), stream.put("A", title="y"))
    assert out is not None
    assert out.type == "story.updated"
    assert out.data["changes"] == {"title": {"old": "x", "new": "y"}}


def test_subs_are_merged_in_order_and_replay_only_if_both_were() -> None:
    stream = Stream()
    stream.put("A", status="a")
    first = Pending.of(stream.put("A", status="b"), ("s2", "s1"), True)
    second = Pending.of(stream.put("A", status="c"), ("s1", "s3"), False)
    out = merge(first, second)
    assert out is not None
    assert out.subs == ("s2", "s1", "s3")
    assert out.replay is False
    message = wire(out)
    assert message["subs"] == ["s2", "s1", "s3"] and "replay" not in message
    third = Pending.of(stream.put("A", status="d"), ("s1",), True)
    fourth = Pending.of(stream.put("A", status="e"), ("s1",), True)
    replayed = merge(third, fourth)
    assert replayed is not None and wire(replayed)["replay"] is True


def test_scope_reasons_survive_a_merge() -> None:
    stream = Stream()
    stream.put("A", epic="ui", status="a")
    entered = transformed(stream.put("A", epic="integration"), INTEGRATION)
    changed = transformed(stream.put("A", status="b"), INTEGRATION)
    left = transformed(stream.put("A", epic="ui"), INTEGRATION)
    assert entered is not None and changed is not None and left is not None
    created = merge(Pending.of(entered, ("s1",), False), Pending.of(changed, ("s1",), False))
    assert created is not None
    assert (created.type, created.data["reason"]) == ("story.created", "in_scope")
    assert created.data["story"]["status"] == "b"
    # Entered, changed and left again: the token never needs to hear of it.
    assert merge(created, Pending.of(left, ("s1",), False)) is None


def test_out_of_scope_then_back_is_an_update_without_a_reason() -> None:
    stream = Stream()
    stream.put("A", epic="integration", status="a")
    left = transformed(stream.put("A", epic="ui"), INTEGRATION)
    stream.put("A", status="b")  # invisible
    back = transformed(stream.put("A", epic="integration"), INTEGRATION)
    assert left is not None and back is not None
    out = merge(Pending.of(left, ("s1",), False), Pending.of(back, ("s1",), False))
    assert out is not None
    assert (out.type, out.data["from"], out.data["to"]) == ("story.transitioned", "a", "b")
    assert "reason" not in out.data


def test_merged_entries_keep_the_identity_fields() -> None:
    stream = Stream()
    stream.put("A", status="a")
    out = merged(stream.put("A", status="b"), stream.put("A", status="c"))
    assert out is not None
    assert (out.story_id, out.seq, out.event) == ("A", stream.seq, None)
    assert out.data["epoch"] == stream.epoch and out.data["story_id"] == "A"
