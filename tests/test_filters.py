"""Unit tests for storywatch.filters: Filter.parse / matches and Scope (SPEC §4 Filter)."""

from __future__ import annotations

from typing import Any

import pytest

from storywatch.filters import FILTER_KEYS, Filter, FilterError, Scope

UI_DRAFT = {
    "id": "UI-001",
    "epic": "ui",
    "status": "draft",
    "labels": ["board", "ux"],
    "owner": "ana",
    "path": "ui/UI-001.md",
}
UI_DONE = {**UI_DRAFT, "status": "done"}
API = {"id": "API-001", "epic": "api", "status": "done", "labels": [], "path": "api/API-001.md"}


def f(**raw: Any) -> Filter:
    return Filter.parse(raw)


def test_filter_keys() -> None:
    assert set(FILTER_KEYS) == {"epics", "stories", "events", "statuses", "labels", "owners"}


@pytest.mark.parametrize("raw", [{}, None])
def test_empty_filter_matches_everything(raw: Any) -> None:
    flt = Filter.parse(raw)
    assert flt == Filter()
    assert flt.to_json() == {}
    assert flt.matches("story.updated", UI_DRAFT, UI_DRAFT)
    assert flt.matches("story.created", None, API)
    assert flt.matches("story.deleted", API, None)


def test_or_within_a_key() -> None:
    flt = f(epics=["ui", "api"])
    assert flt.matches("story.updated", None, UI_DRAFT)
    assert flt.matches("story.updated", None, API)
    assert not flt.matches("story.updated", None, {**API, "epic": "data"})


def test_and_across_keys() -> None:
    flt = f(epics=["ui"], statuses=["done"])
    assert flt.matches_story(UI_DONE)
    assert not flt.matches_story(UI_DRAFT)  # right epic, wrong status
    assert not flt.matches_story(API)  # right status, wrong epic


def test_stories_key() -> None:
    flt = f(stories=["UI-001", "1042"])
    assert flt.matches_story(UI_DRAFT)
    assert not flt.matches_story(API)
    assert flt.matches_story({"id": "1042", "path": "x.md"})


def test_events_key() -> None:
    flt = f(events=["story.transitioned", "story.deleted"])
    assert flt.matches("story.transitioned", UI_DRAFT, UI_DONE)
    assert flt.matches("story.deleted", UI_DRAFT, None)
    assert not flt.matches("story.updated", UI_DRAFT, UI_DRAFT)
    assert not flt.matches("story.created", None, UI_DRAFT)


def test_matches_before_or_after_the_change() -> None:
    column = f(statuses=["draft"])
    # a card leaves the draft column: seen (before matches)
    assert column.matches("story.transitioned", UI_DRAFT, UI_DONE)
    # a card enters the draft column: seen (after matches)
    assert column.matches("story.transitioned", UI_DONE, UI_DRAFT)
    # neither side: not seen
    assert not column.matches("story.transitioned", UI_DONE, {**UI_DONE, "status": "blocked"})
    assert column.matches("story.deleted", UI_DRAFT, None)
    assert column.matches("story.created", None, UI_DRAFT)
    assert not column.matches("story.created", None, API)
    moved_epic = f(epics=["ui"])
    assert moved_epic.matches("story.updated", UI_DRAFT, {**UI_DRAFT, "epic": "api"})


def test_labels_intersect() -> None:
    flt = f(labels=["ux", "perf"])
    assert flt.matches_story(UI_DRAFT)  # ["board", "ux"] ∩ {"ux", "perf"}
    assert not flt.matches_story({**UI_DRAFT, "labels": ["board"]})
    assert not flt.matches_story(API)  # empty list
    assert not flt.matches_story({"id": "X", "path": "x.md"})  # no labels
    assert flt.matches_story({**API, "labels": "perf"})  # a scalar label


@pytest.mark.parametrize("field", ["owner", "owners", "assignee", "assignees"])
def test_owners_fields(field: str) -> None:
    story = {"id": "X", "path": "x.md", field: ["bob", "ana"] if field.endswith("s") else "ana"}
    assert f(owners=["ana"]).matches_story(story)
    assert not f(owners=["carl"]).matches_story(story)


def test_owners_any_field_matches() -> None:
    story = {"id": "X", "path": "x.md", "owner": "team-a", "assignees": ["bob"]}
    assert f(owners=["bob"]).matches_story(story)
    assert f(owners=["team-a"]).matches_story(story)
    assert not f(owners=["ana"]).matches_story({"id": "X", "path": "x.md"})


def test_missing_field_never_matches() -> None:
    bare = {"id": "X", "path": "x.md"}
    for key in ("epics", "statuses", "labels", "owners"):
        assert not f(**{key: ["x"]}).matches_story(bare), key


def test_none_story_never_matches() -> None:
    assert not Filter().matches_story(None)
    assert not f(epics=["ui"]).matches("story.updated", None, None)


def test_empty_list_matches_nothing_for_that_key() -> None:
    assert not f(epics=[]).matches_story(UI_DRAFT)


def test_to_json_is_sorted_and_round_trips() -> None:
    flt = f(epics=["ui", "api", "ui"], events=["story.updated"])
    assert flt.to_json() == {"epics": ["api", "ui"], "events": ["story.updated"]}
    assert Filter.parse(flt.to_json()) == flt
    assert flt != Filter()


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"epic": ["ui"]}, "epic"),
        ({"status": ["done"], "epics": []}, "status"),
        ({"epics": "ui"}, "epics"),
        ({"epics": ["ui", 1]}, "epics"),
        ({"labels": None}, "labels"),
        ({"owners": {"a": 1}}, "owners"),
        ({"stories": [["A"]]}, "stories"),
        ({"events": ["story.renamed"]}, "story.renamed"),
        ({"events": ["created"]}, "created"),
        ([], "object"),
        ("epics", "object"),
        (42, "object"),
    ],
)
def test_invalid_filters(raw: Any, needle: str) -> None:
    with pytest.raises(FilterError, match=needle):
        Filter.parse(raw)


def test_filter_error_is_a_value_error() -> None:
    assert issubclass(FilterError, ValueError)


# -- Scope --------------------------------------------------------------------------------


def test_scope_everything() -> None:
    scope = Scope()
    assert scope.sees(UI_DRAFT)
    assert scope.sees({"id": "X", "path": "x.md"})
    assert not scope.sees(None)


def test_scope_epics() -> None:
    scope = Scope(epics=frozenset({"ui", "data"}))
    assert scope.sees(UI_DRAFT)
    assert not scope.sees(API)
    assert not scope.sees({"id": "X", "path": "x.md"})  # no epic: not in any epic
    assert not scope.sees(None)


def test_scope_no_epics_sees_nothing() -> None:
    assert not Scope(epics=frozenset()).sees(UI_DRAFT)
