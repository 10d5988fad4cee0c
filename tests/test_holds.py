"""The watcher's holds, without a watcher: vanished and broken story files wait for grace."""

from __future__ import annotations

from storywatch.events import Json
from storywatch.holds import Holds
from storywatch.story import ParseError, Story

OWNED = {"a.md": "A", "b.md": "B"}
BROKEN: set[str] = set()


def owns(path: str) -> str | None:
    return OWNED.get(path)


def is_broken(path: str) -> bool:
    return path in BROKEN


def story(story_id: str, path: str) -> Story:
    return Story(story_id, path, {"id": story_id, "path": path}, "")


def source(n: int) -> Json:
    return {"kind": "fs", "batch": f"b-{n}"}


def test_a_vanished_story_file_is_held_until_grace_is_over() -> None:
    holds = Holds(0.3)
    first = source(1)
    assert holds.sort({"a.md": None}, first, 10.0, owns, is_broken) == {}
    assert holds.held_from(first) == 1
    assert holds.next_deadline() == 10.3
    assert holds.due(10.2) == []
    assert holds.due(10.3) == [(first, ["a.md"], {})]
    assert holds.next_deadline() is None


def test_a_held_id_that_comes_back_elsewhere_is_a_move_now() -> None:
    holds = Holds(0.3)
    holds.sort({"a.md": None}, source(1), 10.0, owns, is_broken)
    moved = holds.sort({"new/a.md": story("A", "new/a.md")}, source(2), 10.1, owns, is_broken)
    assert moved == {"new/a.md": story("A", "new/a.md"), "a.md": None}
    assert holds.due(11.0) == []


def test_fresh_content_replaces_what_was_held_for_the_path() -> None:
    holds = Holds(0.3)
    holds.sort({"a.md": None}, source(1), 10.0, owns, is_broken)
    back = holds.sort({"a.md": story("A", "a.md")}, source(2), 10.1, owns, is_broken)
    assert back == {"a.md": story("A", "a.md")}
    assert holds.next_deadline() is None


def test_a_newly_broken_story_is_rechecked_but_an_already_broken_one_is_not() -> None:
    holds = Holds(0.3)
    error = ParseError("yaml", "bad", 2)
    assert holds.sort({"a.md": error}, source(1), 0.0, owns, is_broken) == {}
    assert holds.recheck.keys() == {"a.md"}
    BROKEN.add("b.md")
    try:
        assert holds.sort({"b.md": error}, source(2), 0.0, owns, is_broken) == {"b.md": error}
    finally:
        BROKEN.discard("b.md")


def test_files_that_are_not_stories_and_zero_grace_pass_at_once() -> None:
    assert Holds(0.3).sort({"x.md": None}, source(1), 0.0, owns, is_broken) == {"x.md": None}
    assert Holds(0).sort({"a.md": None}, source(1), 0.0, owns, is_broken) == {"a.md": None}


def test_due_paths_keep_the_batch_they_were_seen_in() -> None:
    holds = Holds(0.3)
    one, two = source(1), source(2)
    holds.sort({"a.md": None}, one, 0.0, owns, is_broken)
    holds.sort({"b.md": None}, two, 0.1, owns, is_broken)
    assert holds.due(1.0) == [(one, ["a.md"], {}), (two, ["b.md"], {})]
