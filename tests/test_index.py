"""Unit tests for storywatch.index: Index.apply, identity rules, records (SPEC §2, §3)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storywatch.events import Draft, number, old_state
from storywatch.index import Index
from storywatch.story import ParseError, ParseResult, Story, parse_story, parse_text
from tests.conftest import committed_fixtures

FIXTURES = committed_fixtures()


def story_text(
    story_id: str | int = "A",
    status: str = "draft",
    body: str = "body\n",
    **fields: Any,
) -> str:
    lines = [f"id: {story_id}", f"status: {status}"]
    lines += [f"{key}: {json.dumps(value)}" for key, value in fields.items()]
    return "---\n" + "\n".join(lines) + "\n---\n" + body


BROKEN = "---\nid: A\nstatus: draft\nbad: : :\n---\nbody\n"
NO_ID = "---\ntitle: no id\n---\nbody\n"
NO_FRONT_MATTER = "# just markdown\n"


def parse(path: str, text: str | None) -> ParseResult | None:
    return None if text is None else parse_text(path, text)


def apply(index: Index, files: Mapping[str, str | None]) -> list[Draft]:
    return index.apply({path: parse(path, text) for path, text in files.items()})


def types(drafts: list[Draft]) -> list[str]:
    return [d.type for d in drafts]


def one(drafts: list[Draft]) -> Draft:
    assert len(drafts) == 1, drafts
    return drafts[0]


def fresh(files: Mapping[str, str | None]) -> Index:
    index = Index()
    apply(index, files)
    return index


# -- every event type -------------------------------------------------------------------


def test_created() -> None:
    index = Index()
    draft = one(apply(index, {"s/a.md": story_text("A", title="T")}))
    assert draft.type == "story.created"
    assert draft.story_id == "A"
    assert draft.path == "s/a.md"
    assert draft.story == {"id": "A", "status": "draft", "title": "T", "path": "s/a.md"}
    assert draft.body_changed is False
    assert draft.old_path is None
    assert draft.error is None
    assert draft.changes["title"] == {"old": None, "new": "T"}
    assert "path" not in draft.changes
    assert len(index) == 1
    assert index.owns("s/a.md") == "A"
    assert index.get("A") is not None


def test_deleted_carries_last_known_state() -> None:
    index = fresh({"a.md": story_text("A", title="T")})
    draft = one(apply(index, {"a.md": None}))
    assert draft.type == "story.deleted"
    assert draft.story == {"id": "A", "status": "draft", "title": "T", "path": "a.md"}
    assert draft.path == "a.md"
    assert draft.body_changed is False
    assert "path" not in draft.changes
    assert all(change["new"] is None for change in draft.changes.values())
    assert len(index) == 0
    assert index.owns("a.md") is None
    assert list(index.paths()) == []


def test_transitioned() -> None:
    index = fresh({"a.md": story_text("A", "draft", title="T")})
    draft = one(apply(index, {"a.md": story_text("A", "in-progress", title="T2")}))
    assert draft.type == "story.transitioned"
    assert draft.changes == {
        "status": {"old": "draft", "new": "in-progress"},
        "title": {"old": "T", "new": "T2"},
    }
    data = draft.to_json()
    assert data["from"] == "draft"
    assert data["to"] == "in-progress"
    assert data["body_changed"] is False
    assert "old_path" not in data


def test_transitioned_and_renamed_has_old_path() -> None:
    index = fresh({"a.md": story_text("A", "draft")})
    draft = one(apply(index, {"a.md": None, "done/a.md": story_text("A", "done")}))
    assert draft.type == "story.transitioned"
    assert draft.old_path == "a.md"
    assert draft.path == "done/a.md"
    assert draft.story["path"] == "done/a.md"
    assert draft.changes == {"status": {"old": "draft", "new": "done"}}
    assert index.owns("done/a.md") == "A"
    assert index.owns("a.md") is None


def test_moved() -> None:
    index = fresh({"a.md": story_text("A", title="T")})
    draft = one(apply(index, {"a.md": None, "b/a.md": story_text("A", title="T")}))
    assert draft.type == "story.moved"
    assert draft.old_path == "a.md"
    assert draft.path == "b/a.md"
    assert draft.changes == {}
    assert draft.body_changed is False


def test_moved_with_edits_is_still_moved() -> None:
    index = fresh({"a.md": story_text("A", title="T")})
    draft = one(apply(index, {"a.md": None, "b.md": story_text("A", title="T2", body="new\n")}))
    assert draft.type == "story.moved"
    assert draft.changes == {"title": {"old": "T", "new": "T2"}}
    assert draft.body_changed is True


def test_updated_field() -> None:
    index = fresh({"a.md": story_text("A", title="T", labels=["x"])})
    draft = one(apply(index, {"a.md": story_text("A", title="T", labels=["x", "y"])}))
    assert draft.type == "story.updated"
    assert draft.changes == {"labels": {"old": ["x"], "new": ["x", "y"]}}
    assert draft.body_changed is False


def test_updated_body_only() -> None:
    index = fresh({"a.md": story_text("A", body="one\n")})
    draft = one(apply(index, {"a.md": story_text("A", body="two\n")}))
    assert draft.type == "story.updated"
    assert draft.changes == {}
    assert draft.body_changed is True
    assert draft.to_json()["body_changed"] is True


def test_no_op_save_and_touch_emit_nothing() -> None:
    text = story_text("A", title="T")
    index = fresh({"a.md": text})
    assert apply(index, {"a.md": text}) == []  # touch: same bytes
    # same content, written differently (CRLF, BOM, key order, quoting)
    assert apply(index, {"a.md": "\ufeff" + text.replace("\n", "\r\n")}) == []
    assert apply(index, {"a.md": "---\ntitle: 'T'\nstatus: draft\nid: 'A'\n---\nbody\n"}) == []
    assert apply(index, {}) == []


def test_null_key_equals_absent_key() -> None:
    index = fresh({"a.md": story_text("A")})
    assert apply(index, {"a.md": story_text("A", market=None)}) == []


def test_added_and_removed_keys_are_null_in_changes() -> None:
    index = fresh({"a.md": story_text("A", old_key="x")})
    draft = one(apply(index, {"a.md": story_text("A", new_key=[1])}))
    assert draft.changes == {
        "old_key": {"old": "x", "new": None},
        "new_key": {"old": None, "new": [1]},
    }


def test_id_change_is_delete_plus_create() -> None:
    index = fresh({"a.md": story_text("A", title="T")})
    drafts = apply(index, {"a.md": story_text("B", title="T")})
    assert sorted((d.type, d.story_id) for d in drafts) == [
        ("story.created", "B"),
        ("story.deleted", "A"),
    ]
    assert index.owns("a.md") == "B"
    assert set(index.stories) == {"B"}


def test_numeric_id_story() -> None:
    index = Index()
    draft = one(apply(index, {"legacy.md": story_text(1042)}))
    assert draft.story_id == "1042"
    assert index.owns("legacy.md") == "1042"


def test_non_story_files_produce_nothing() -> None:
    index = Index()
    assert apply(index, {"README.md": NO_FRONT_MATTER, "notes.md": NO_ID, "bad.md": BROKEN}) == []
    assert len(index) == 0
    assert apply(index, {"README.md": None, "notes.md": NO_ID + "more"}) == []


def test_several_stories_in_one_batch_sorted_by_id() -> None:
    index = Index()
    drafts = apply(
        index, {"z.md": story_text("C"), "a.md": story_text("B"), "m.md": story_text("A")}
    )
    assert [(d.type, d.story_id) for d in drafts] == [
        ("story.created", "A"),
        ("story.created", "B"),
        ("story.created", "C"),
    ]


def test_swap_paths_of_two_stories() -> None:
    index = fresh({"a.md": story_text("A"), "b.md": story_text("B")})
    drafts = apply(index, {"a.md": story_text("B"), "b.md": story_text("A")})
    assert [(d.type, d.story_id, d.old_path, d.path) for d in drafts] == [
        ("story.moved", "A", "a.md", "b.md"),
        ("story.moved", "B", "b.md", "a.md"),
    ]
    assert index.owns("a.md") == "B"
    assert index.owns("b.md") == "A"


# -- invalid ------------------------------------------------------------------------------


def test_invalid_keeps_last_good_state() -> None:
    index = fresh({"a.md": story_text("A", title="T")})
    good = index.get("A")
    assert good is not None
    draft = one(apply(index, {"a.md": BROKEN}))
    assert draft.type == "story.invalid"
    assert draft.story_id == "A"
    assert draft.path == "a.md"
    assert draft.story == good.fields
    assert draft.changes == {}
    assert draft.error is not None
    assert draft.error.reason == "yaml"
    assert draft.error.line == 4
    assert "body_changed" not in draft.to_json()
    assert index.get("A") == good
    assert index.owns("a.md") == "A"
    assert [(p, i, e.reason) for p, i, e in index.problems()] == [("a.md", "A", "yaml")]


def test_same_error_twice_is_one_invalid_event() -> None:
    index = fresh({"a.md": story_text("A")})
    assert types(apply(index, {"a.md": BROKEN})) == ["story.invalid"]
    assert apply(index, {"a.md": BROKEN}) == []
    assert apply(index, {"a.md": BROKEN}) == []
    other = "---\nid: A\nlabels: [a\nstatus: ok\n---\n"
    assert types(apply(index, {"a.md": other})) == ["story.invalid"]


def test_recovery_is_diffed_against_last_good_state() -> None:
    index = fresh({"a.md": story_text("A", "draft", title="T")})
    apply(index, {"a.md": BROKEN})
    draft = one(apply(index, {"a.md": story_text("A", "done", title="T")}))
    assert draft.type == "story.transitioned"
    assert draft.changes == {"status": {"old": "draft", "new": "done"}}
    assert list(index.problems()) == []
    # back to the last good content: nothing changed against the last good state
    apply(index, {"a.md": BROKEN})
    assert apply(index, {"a.md": story_text("A", "done", title="T")}) == []
    assert list(index.problems()) == []


@pytest.mark.parametrize(
    ("text", "reason", "has_front_matter"),
    [(NO_ID, "missing_id", True), (NO_FRONT_MATTER, "missing_id", False)],
)
def test_former_story_losing_its_id_is_invalid(
    text: str, reason: str, has_front_matter: bool
) -> None:
    index = fresh({"a.md": story_text("A")})
    draft = one(apply(index, {"a.md": text}))
    assert draft.type == "story.invalid"
    assert draft.error is not None
    assert draft.error.reason == reason
    assert draft.error.has_front_matter is has_front_matter
    assert "A" in index.stories
    assert apply(index, {"a.md": text}) == []


@pytest.mark.parametrize(
    ("raw", "reason"),
    [(b"---\nid: A\ntitle: \xff\n---\n", "unreadable"), (b"x" * 2000, "too_large")],
)
def test_former_story_unreadable_or_too_large(raw: bytes, reason: str) -> None:
    index = fresh({"a.md": story_text("A")})
    draft = one(index.apply({"a.md": parse_story("a.md", raw, max_bytes=1000)}))
    assert draft.type == "story.invalid"
    assert draft.error is not None
    assert draft.error.reason == reason


def test_broken_story_deleted_is_deleted_with_last_good_state() -> None:
    index = fresh({"a.md": story_text("A", title="T")})
    apply(index, {"a.md": BROKEN})
    draft = one(apply(index, {"a.md": None}))
    assert draft.type == "story.deleted"
    assert draft.story["title"] == "T"
    assert list(index.problems()) == []


def test_broken_story_recovering_with_another_id() -> None:
    index = fresh({"a.md": story_text("A")})
    apply(index, {"a.md": BROKEN})
    drafts = apply(index, {"a.md": story_text("B")})
    assert sorted((d.type, d.story_id) for d in drafts) == [
        ("story.created", "B"),
        ("story.deleted", "A"),
    ]


# -- duplicates -----------------------------------------------------------------------------


def test_duplicate_at_startup_smallest_path_wins() -> None:
    index = Index()
    drafts = apply(
        index,
        {
            "z/x.md": story_text("A", title="z"),
            "b.md": story_text("A", title="b"),
            "c.md": story_text("A", title="c"),
        },
    )
    assert [(d.type, d.path) for d in drafts] == [
        ("story.created", "b.md"),
        ("story.invalid", "c.md"),
        ("story.invalid", "z/x.md"),
    ]
    for draft in drafts[1:]:
        assert draft.error is not None
        assert draft.error.reason == "duplicate_id"
        assert "b.md" in draft.error.message
        assert draft.story_id == "A"
        assert draft.story["path"] == "b.md"  # the owner's state
    assert index.owns("b.md") == "A"
    assert index.owns("c.md") is None
    problems = sorted((p, i, e.reason) for p, i, e in index.problems())
    assert problems == [("c.md", "A", "duplicate_id"), ("z/x.md", "A", "duplicate_id")]


def test_the_owner_keeps_its_id_against_a_smaller_newcomer() -> None:
    index = fresh({"z.md": story_text("A", title="owner")})
    draft = one(apply(index, {"a.md": story_text("A", title="newcomer")}))
    assert draft.type == "story.invalid"
    assert draft.path == "a.md"
    assert draft.error is not None
    assert draft.error.reason == "duplicate_id"
    assert index.owns("z.md") == "A"
    assert index.get("A") is not None
    assert index.stories["A"].fields["title"] == "owner"
    # the duplicate edited: still a duplicate, no flapping
    assert apply(index, {"a.md": story_text("A", title="edited")}) == []
    # the owner edited: only the owner's event
    assert types(apply(index, {"z.md": story_text("A", title="owner2")})) == ["story.updated"]


def test_owner_deleted_duplicate_takes_over() -> None:
    index = fresh({"a.md": story_text("A", title="owner"), "b.md": story_text("A", title="dup")})
    draft = one(apply(index, {"a.md": None}))
    assert draft.type == "story.moved"
    assert draft.old_path == "a.md"
    assert draft.path == "b.md"
    assert draft.changes == {"title": {"old": "owner", "new": "dup"}}
    assert index.owns("b.md") == "A"
    assert list(index.problems()) == []


def test_owner_deleted_smallest_duplicate_takes_over() -> None:
    index = fresh({"a.md": story_text("A"), "d.md": story_text("A"), "c.md": story_text("A")})
    draft = one(apply(index, {"a.md": None}))
    assert draft.path == "c.md"
    assert [(p, e.reason) for p, _, e in index.problems()] == [("d.md", "duplicate_id")]


def test_owner_changes_id_duplicate_takes_over() -> None:
    index = fresh({"a.md": story_text("A"), "b.md": story_text("A")})
    drafts = apply(index, {"a.md": story_text("B")})
    assert sorted((d.type, d.story_id, d.path) for d in drafts) == [
        ("story.created", "B", "a.md"),
        ("story.moved", "A", "b.md"),
    ]


def test_renamed_owner_keeps_its_id_against_an_older_duplicate() -> None:
    index = fresh({"a.md": story_text("A", title="owner"), "z.md": story_text("A", title="dup")})
    drafts = apply(index, {"a.md": None, "zz.md": story_text("A", title="owner")})
    assert [(d.type, d.old_path, d.path, d.changes) for d in drafts] == [
        ("story.moved", "a.md", "zz.md", {})
    ]
    assert index.owns("zz.md") == "A"
    assert [(p, e.reason) for p, _, e in index.problems()] == [("z.md", "duplicate_id")]


def test_renamed_owner_keeps_its_id_when_it_sorts_first() -> None:
    index = fresh({"a.md": story_text("A", title="owner"), "z.md": story_text("A", title="dup")})
    draft = one(apply(index, {"a.md": None, "b.md": story_text("A", title="owner")}))
    assert (draft.type, draft.old_path, draft.path, draft.changes) == (
        "story.moved",
        "a.md",
        "b.md",
        {},
    )
    assert index.owns("b.md") == "A"


def test_broken_owner_keeps_its_id() -> None:
    index = fresh({"a.md": story_text("A"), "b.md": story_text("A")})
    assert types(apply(index, {"a.md": BROKEN})) == ["story.invalid"]
    assert index.owns("a.md") == "A"
    assert index.stories["A"].path == "a.md"


def test_duplicate_deleted_is_silent() -> None:
    index = fresh({"a.md": story_text("A"), "b.md": story_text("A")})
    assert apply(index, {"b.md": None}) == []
    assert list(index.problems()) == []


def test_duplicate_changing_to_a_free_id_is_created() -> None:
    index = fresh({"a.md": story_text("A"), "b.md": story_text("A")})
    draft = one(apply(index, {"b.md": story_text("B")}))
    assert (draft.type, draft.story_id) == ("story.created", "B")


# -- records ------------------------------------------------------------------------------


def _round_trip(index: Index) -> Index:
    records = index.records([*index.paths(), "gone.md"])
    assert records["gone.md"] is None
    kept = {path: record for path, record in records.items() if record is not None}
    # what a backend stores is JSON
    return Index.from_records(json.loads(json.dumps(kept)))


def test_records_round_trip_produces_no_events() -> None:
    files = {
        "a.md": story_text("A", title="T", labels=["x"], body="---\nbody\n"),
        "b.md": story_text("B"),
        "dup.md": story_text("A", title="dup"),
        "c.md": story_text("C"),
        "README.md": NO_FRONT_MATTER,
    }
    index = fresh(files)
    files["c.md"] = BROKEN.replace("id: A", "id: C")
    apply(index, {"c.md": files["c.md"]})
    restored = _round_trip(index)
    assert restored.stories == index.stories
    assert restored.owner == index.owner
    assert restored.claims == index.claims
    assert restored.dupes == index.dupes
    assert apply(restored, files) == []


def test_records_round_trip_then_change() -> None:
    index = fresh({"a.md": story_text("A", "draft")})
    restored = _round_trip(index)
    draft = one(apply(restored, {"a.md": story_text("A", "done")}))
    assert draft.type == "story.transitioned"


def test_records_round_trip_of_story_that_lost_its_front_matter() -> None:
    index = fresh({"a.md": story_text("A")})
    apply(index, {"a.md": NO_FRONT_MATTER})
    restored = _round_trip(index)
    assert apply(restored, {"a.md": NO_FRONT_MATTER}) == []


# -- the fixture corpus --------------------------------------------------------------------


def test_fixture_corpus_indexes_fifty_stories() -> None:
    changes: dict[str, ParseResult | None] = {}
    for file in sorted(FIXTURES.rglob("*.md")):
        rel = file.relative_to(FIXTURES).as_posix()
        changes[rel] = parse_story(rel, file.read_bytes())
    index = Index()
    drafts = index.apply(changes)
    assert types(drafts) == ["story.created"] * 50
    assert len(index) == 50
    assert list(index.problems()) == []
    assert index.apply(changes) == []


# -- properties of the diff ------------------------------------------------------------------

PATHS = [f"p{i}.md" for i in range(6)]
IDS = ["A", "B", "C", "D"]
STATUSES = ["draft", "ready", "done"]

texts = st.one_of(
    st.builds(
        story_text,
        st.sampled_from(IDS),
        st.sampled_from(STATUSES),
        st.sampled_from(["", "one\n", "two\n", "---\nrule\n"]),
        title=st.sampled_from(["T1", "T2"]),
        labels=st.sampled_from([[], ["x"], ["x", "y"]]),
    ),
    st.builds(
        lambda i, s, o: story_text(i, s, owner=o),
        st.sampled_from(IDS),
        st.sampled_from(STATUSES),
        st.none() | st.just("bob"),
    ),
    st.sampled_from(
        [
            BROKEN,
            BROKEN.replace("id: A", "id: B"),
            "---\nid: C\n  bad: : :\n---\n",
            NO_ID,
            NO_FRONT_MATTER,
            "---\nid: A\n",
        ]
    ),
)
ops = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(PATHS), texts),
    st.tuples(st.just("delete"), st.sampled_from(PATHS), st.none()),
    st.tuples(st.just("rename"), st.sampled_from(PATHS), st.sampled_from(PATHS)),
    st.tuples(st.just("copy"), st.sampled_from(PATHS), st.sampled_from(PATHS)),
)
batches = st.lists(st.lists(ops, min_size=1, max_size=5), min_size=1, max_size=8)


def _run_batch(disk: dict[str, str], batch: list[tuple[str, str, Any]]) -> dict[str, str | None]:
    touched: set[str] = set()
    for op, path, arg in batch:
        if op == "write":
            disk[path] = arg
            touched.add(path)
        elif op == "delete":
            disk.pop(path, None)
            touched.add(path)
        elif path in disk and arg != path:  # rename or copy path → arg
            disk[arg] = disk.pop(path) if op == "rename" else disk[path]
            touched |= {path, arg}
    return {path: disk.get(path) for path in sorted(touched)}


def _strip_none(state: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if state is None else {k: v for k, v in state.items() if v is not None}


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(batches)
def test_diff_properties(script: list[list[tuple[str, str, Any]]]) -> None:
    index = Index()
    disk: dict[str, str] = {}
    model: dict[str, dict[str, Any]] = {}
    seq = 0
    for batch in script:
        files = _run_batch(disk, batch)
        drafts = apply(index, files)

        # (2) numbering gives gap-free seqs; every event is JSON
        events = [number(d, seq + i, "ep", "t", {"kind": "fs"}) for i, d in enumerate(drafts, 1)]
        assert [e.seq for e in events] == list(range(seq + 1, seq + 1 + len(drafts)))
        seq += len(drafts)
        for event in events:
            assert json.loads(event.frame(("s",))) == {**event.data, "subs": ["s"]}

        # (3) at most one event per id per batch, duplicate_id invalids aside
        main = [d.story_id for d in drafts if not (d.error and d.error.reason == "duplicate_id")]
        assert len(main) == len(set(main)), drafts

        for draft in drafts:
            data = draft.to_json()
            assert "path" not in draft.changes
            for change in draft.changes.values():
                assert set(change) == {"old", "new"}
                assert change["old"] != change["new"]
            # (5) old_state is the model's previous state
            before = old_state(data)
            if draft.type == "story.created":
                assert before is None
                assert draft.story_id not in model
            else:
                assert _strip_none(before) == _strip_none(model.get(draft.story_id)), draft
            # (1) apply the draft to the model
            if draft.type == "story.deleted":
                del model[draft.story_id]
            elif draft.type != "story.invalid":
                model[draft.story_id] = draft.story
            assert draft.story["id"] == draft.story_id
        assert model == {sid: story.fields for sid, story in index.stories.items()}

        # every valid story file on disk is known by its id, and owners are up to date
        for path, text in disk.items():
            parsed = parse_text(path, text)
            if isinstance(parsed, Story):
                assert parsed.id in index.stories
                if index.owns(path):
                    assert index.stories[parsed.id] == parsed
            elif isinstance(parsed, ParseError) and index.owns(path):
                assert index.stories[index.owns(path) or ""].path == path
        for story_id, story in index.stories.items():
            assert story.path in disk
            assert index.owns(story.path) == story_id

        # (4) re-applying the current content of every path changes nothing
        assert apply(index, {path: disk.get(path) for path in PATHS}) == []


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(batches)
def test_records_round_trip_is_transparent(script: list[list[tuple[str, str, Any]]]) -> None:
    index = Index()
    disk: dict[str, str] = {}
    for batch in script:
        files = _run_batch(disk, batch)
        restored = _round_trip(index)
        assert restored.stories == index.stories
        assert restored.claims == index.claims
        assert restored.owner == index.owner
        assert restored.broken == index.broken
        assert restored.dupes == index.dupes
        assert apply(restored, files) == apply(index, files)


# -- silent apply (a fresh log's startup scan) -------------------------------------------------


def _state(index: Index) -> tuple[dict[str, Any], ...]:
    return (index.stories, index.owner, index.claims, index.broken, index.dupes)


def test_silent_startup_scan_builds_the_same_index() -> None:
    files = {
        "z/x.md": story_text("A", title="z"),
        "b.md": story_text("A", title="b"),
        "c.md": story_text("B"),
        "broken.md": BROKEN,
        "no-id.md": NO_ID,
        "readme.md": NO_FRONT_MATTER,
    }
    loud, quiet = Index(), Index()
    changes = {path: parse(path, text) for path, text in files.items()}
    assert types(loud.apply(changes)) == ["story.created", "story.invalid", "story.created"]
    assert quiet.apply(changes, emit=False) == []
    assert _state(quiet) == _state(loud)
    assert quiet.records(files) == loud.records(files)
    assert list(quiet.problems()) == list(loud.problems())


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(batches, st.lists(st.booleans(), min_size=8, max_size=8))
def test_silent_apply_changes_the_state_like_the_emitting_one(
    script: list[list[tuple[str, str, Any]]], silent: list[bool]
) -> None:
    """Any mix of silent and emitting batches leaves the index as emitting ones do."""
    loud, mixed = Index(), Index()
    disk: dict[str, str] = {}
    for batch, quiet in zip(script, silent, strict=False):
        files = _run_batch(disk, batch)
        changes = {path: parse(path, text) for path, text in files.items()}
        drafts = loud.apply(changes)
        assert mixed.apply(changes, emit=not quiet) == ([] if quiet else drafts)
        assert _state(mixed) == _state(loud)
