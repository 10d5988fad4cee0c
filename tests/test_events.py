"""Unit tests for storywatch.events: Draft.to_json, number, Event.frame, old_state (SPEC §3)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from storywatch.events import EVENT_TYPES, Draft, number, old_state, utc_now_iso
from storywatch.story import ParseError

SOURCE = {"kind": "fs", "batch": "b-1", "batch_size": 1}
OLD = {"id": "A", "title": "T", "status": "draft", "epic": "ui", "path": "old/a.md"}
NEW = {"id": "A", "title": "T2", "status": "done", "epic": "ui", "path": "new/a.md"}


def transitioned() -> Draft:
    return Draft(
        type="story.transitioned",
        story_id="A",
        path="new/a.md",
        story=NEW,
        changes={"title": {"old": "T", "new": "T2"}, "status": {"old": "draft", "new": "done"}},
        body_changed=True,
        old_path="old/a.md",
    )


def test_event_types() -> None:
    assert set(EVENT_TYPES) == {
        "story.created",
        "story.deleted",
        "story.transitioned",
        "story.moved",
        "story.updated",
        "story.invalid",
    }


def test_transitioned_to_json_has_from_and_to() -> None:
    data = transitioned().to_json()
    assert data["type"] == "story.transitioned"
    assert data["from"] == "draft"
    assert data["to"] == "done"
    assert data["old_path"] == "old/a.md"
    assert data["body_changed"] is True
    assert data["story"] == NEW
    assert "error" not in data


@pytest.mark.parametrize("kind", ["story.created", "story.deleted", "story.updated"])
def test_other_types_have_no_from_to_nor_old_path(kind: Any) -> None:
    data = Draft(type=kind, story_id="A", path="a.md", story=OLD, changes={}).to_json()
    assert "from" not in data
    assert "to" not in data
    assert "old_path" not in data
    assert "error" not in data
    assert data["body_changed"] is False


def test_moved_has_old_path() -> None:
    draft = Draft(
        type="story.moved",
        story_id="A",
        path="new/a.md",
        story=NEW,
        changes={},
        old_path="old/a.md",
    )
    data = draft.to_json()
    assert data["old_path"] == "old/a.md"
    assert data["path"] == "new/a.md"
    assert "from" not in data


def test_invalid_has_error_and_no_body_changed() -> None:
    error = ParseError("yaml", "invalid YAML: boom", 7)
    draft = Draft(
        type="story.invalid", story_id="A", path="a.md", story=OLD, changes={}, error=error
    )
    data = draft.to_json()
    assert data["error"] == {"reason": "yaml", "message": "invalid YAML: boom", "line": 7}
    assert "body_changed" not in data
    assert data["story"] == OLD
    assert "from" not in data


def test_number_builds_the_wire_form() -> None:
    event = number(transitioned(), 42, "9f3c1a0b", "2026-11-26T07:00:00.123Z", SOURCE)
    assert event.seq == 42
    assert event.epoch == "9f3c1a0b"
    assert event.type == "story.transitioned"
    assert event.story_id == "A"
    assert event.story == NEW
    data = event.data
    assert list(data)[:4] == ["type", "seq", "epoch", "time"]
    assert data["seq"] == 42
    assert data["epoch"] == "9f3c1a0b"
    assert data["time"] == "2026-11-26T07:00:00.123Z"
    assert data["source"] == SOURCE
    assert data["story_id"] == "A"
    assert data["path"] == "new/a.md"
    assert data["changes"]["status"] == {"old": "draft", "new": "done"}
    assert {"from", "to", "old_path", "body_changed"} <= set(data)
    assert "subs" not in data
    assert "replay" not in data


def test_numbering_consecutive_seqs() -> None:
    drafts = [transitioned()] * 5
    events = [number(d, 10 + i, "e", "t", SOURCE) for i, d in enumerate(drafts, start=1)]
    assert [e.seq for e in events] == [11, 12, 13, 14, 15]
    assert [e.data["seq"] for e in events] == [11, 12, 13, 14, 15]


def test_frame_splices_subs_and_replay() -> None:
    event = number(transitioned(), 1, "e", "t", SOURCE)
    with_subs = json.loads(event.frame(("s1", "s2")))
    assert with_subs == {**event.data, "subs": ["s1", "s2"]}
    replayed = json.loads(event.frame(("s1",), replay=True))
    assert replayed == {**event.data, "subs": ["s1"], "replay": True}
    assert json.loads(event.frame(("s1",))) == {**event.data, "subs": ["s1"]}
    assert event.frame(("s1", "s2")) == event.frame(("s1", "s2"))
    assert json.loads(event.encoded()) == event.data


def test_frame_non_ascii_and_encoded_once() -> None:
    story = {"id": "UI-007", "title": 'Übersetzung — 日本語 "quoted"', "path": "ü.md"}
    draft = Draft(type="story.created", story_id="UI-007", path="ü.md", story=story, changes={})
    event = number(draft, 3, "e", "t", SOURCE)
    frame = event.frame(("sübscription",))
    assert "Übersetzung" in frame  # not \u-escaped
    assert json.loads(frame) == {**event.data, "subs": ["sübscription"]}
    first = event.encoded()
    assert event.encoded() is first


def test_frame_cache_stays_correct_with_many_sub_names() -> None:
    event = number(transitioned(), 1, "e", "t", SOURCE)
    for i in range(200):
        subs = (f"s{i}",)
        assert json.loads(event.frame(subs, replay=i % 2 == 0))["subs"] == [f"s{i}"]


def test_events_compare_without_cache() -> None:
    a = number(transitioned(), 1, "e", "t", SOURCE)
    b = number(transitioned(), 1, "e", "t", SOURCE)
    a.encoded()
    assert a == b


# -- old_state -------------------------------------------------------------------------------


def test_old_state_created_is_none() -> None:
    assert old_state({"type": "story.created", "story": NEW, "changes": {}}) is None


@pytest.mark.parametrize("kind", ["story.deleted", "story.invalid"])
def test_old_state_deleted_and_invalid_is_the_story(kind: str) -> None:
    data = {"type": kind, "story": OLD, "changes": {"id": {"old": "A", "new": None}}}
    before = old_state(data)
    assert before == OLD
    assert before is not OLD


def test_old_state_undoes_changes_and_path() -> None:
    data = transitioned().to_json()
    assert old_state(data) == OLD


def test_old_state_added_and_removed_keys() -> None:
    data = Draft(
        type="story.updated",
        story_id="A",
        path="a.md",
        story={"id": "A", "owner": "bob", "path": "a.md"},
        changes={"owner": {"old": None, "new": "bob"}, "labels": {"old": ["x"], "new": None}},
    ).to_json()
    assert old_state(data) == {"id": "A", "labels": ["x"], "path": "a.md"}


def test_event_before_and_after() -> None:
    event = number(transitioned(), 1, "e", "t", SOURCE)
    assert event.before() == OLD
    assert event.after() == NEW
    created = number(
        Draft(type="story.created", story_id="A", path="a.md", story=NEW, changes={}),
        2,
        "e",
        "t",
        SOURCE,
    )
    assert created.before() is None
    assert created.after() == NEW
    deleted = number(
        Draft(type="story.deleted", story_id="A", path="a.md", story=OLD, changes={}),
        3,
        "e",
        "t",
        SOURCE,
    )
    assert deleted.before() == OLD
    assert deleted.after() is None


def test_utc_now_iso_format() -> None:
    when = dt.datetime(2026, 11, 26, 7, 0, 0, 123456, tzinfo=dt.UTC)
    assert utc_now_iso(when) == "2026-11-26T07:00:00.123Z"
    now = utc_now_iso()
    assert now.endswith("Z")
    assert dt.datetime.strptime(now, "%Y-%m-%dT%H:%M:%S.%fZ")
