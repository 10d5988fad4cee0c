"""Unit tests for storywatch.story: parse_story / parse_text (SPEC §2, §3 story.invalid)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from storywatch.story import MAX_DEPTH, ParseError, Story, parse_story, parse_text
from tests.conftest import committed_fixtures

FIXTURES = committed_fixtures()
NOT_STORIES = {"README.md", "docs/status-workflow.md", "docs/writing-stories.md", "notes/ideas.md"}


def ok(text: str, path: str = "s/a.md") -> Story:
    result = parse_text(path, text)
    assert isinstance(result, Story), result
    return result


def err(text: str | bytes, path: str = "s/a.md", **kwargs: int) -> ParseError:
    if isinstance(text, bytes):
        result = parse_story(path, text, **kwargs)
    else:
        result = parse_text(path, text)
    assert isinstance(result, ParseError), result
    return result


# -- the JSON form -----------------------------------------------------------------------


def test_basic_story_fields_id_and_path() -> None:
    story = ok("---\nid: INT-002\ntitle: Hello\nstatus: draft\n---\n# Body\n", "stories/x.md")
    assert story.id == "INT-002"
    assert story.path == "stories/x.md"
    assert story.status == "draft"
    assert story.fields == {
        "id": "INT-002",
        "title": "Hello",
        "status": "draft",
        "path": "stories/x.md",
    }
    assert story.body == "# Body\n"
    assert "body" not in story.fields


def test_dates_and_datetimes_become_iso_strings() -> None:
    story = ok(
        "---\nid: A\ncreated: 2025-08-28\nquoted: '2025-07-23'\n"
        "updated_at: 2025-08-28T10:15:00Z\nlocal: 2025-08-28 10:15:00\n"
        "nested: {when: 2024-02-29, list: [2024-01-01]}\n---\n"
    )
    assert story.fields["created"] == "2025-08-28"
    assert story.fields["quoted"] == "2025-07-23"
    assert story.fields["updated_at"] == "2025-08-28T10:15:00+00:00"
    assert story.fields["local"] == "2025-08-28T10:15:00"
    assert story.fields["nested"] == {"when": "2024-02-29", "list": ["2024-01-01"]}
    json.dumps(story.fields)  # JSON-able


def test_non_json_values_become_json_safe() -> None:
    story = ok(
        "---\nid: A\nnan: .nan\ninf: -.inf\nbin: !!binary aGVsbG8=\n1: int key\n"
        "2025-01-01: date key\nnull_value: null\nempty:\nlist: []\n---\n"
    )
    assert story.fields["nan"] == "nan"
    assert story.fields["inf"] == "-inf"
    assert story.fields["bin"] == "hello"
    assert story.fields["1"] == "int key"
    assert story.fields["2025-01-01"] == "date key"
    assert story.fields["null_value"] is None
    assert story.fields["empty"] is None
    assert story.fields["list"] == []
    json.dumps(story.fields, allow_nan=False)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1042", "1042"), ("'1042'", "1042"), ("12.5", "12.5"), ("3.0", "3"), ("' X-1 '", "X-1")],
)
def test_id_is_a_string(raw: str, expected: str) -> None:
    story = ok(f"---\nid: {raw}\n---\n")
    assert story.id == expected
    assert story.fields["id"] == expected


@pytest.mark.parametrize("raw", ["", "null", "true", "''", "'   '", "[A]", "{a: 1}", ".inf"])
def test_unusable_id_is_missing_id(raw: str) -> None:
    error = err(f"---\nid: {raw}\ntitle: t\n---\n")
    assert error.reason == "missing_id"
    assert error.has_front_matter is True


def test_bom_is_stripped() -> None:
    story = ok("\ufeff---\nid: A\ntitle: T\n---\nbody\n")
    assert story.fields == {"id": "A", "title": "T", "path": "s/a.md"}
    assert story.body == "body\n"
    raw = parse_story("s/a.md", b"\xef\xbb\xbf---\nid: A\n---\nbody\n")
    assert isinstance(raw, Story)
    assert raw.id == "A"


def test_crlf_line_endings() -> None:
    story = ok("---\r\nid: A\r\ntitle: T\r\n---\r\nline 1\r\nline 2\r\n")
    assert story.fields == {"id": "A", "title": "T", "path": "s/a.md"}
    assert story.body == "line 1\nline 2\n"


def test_crlf_and_lf_versions_are_the_same_story() -> None:
    lf = ok("---\nid: A\ntitle: T\n---\nbody\n")
    crlf = ok("---\r\nid: A\r\ntitle: T\r\n---\r\nbody\r\n")
    assert lf == crlf


def test_no_trailing_newline() -> None:
    story = ok("---\nid: A\ntitle: T\n---\nlast line")
    assert story.body == "last line"
    bare = ok("---\nid: A\n---")
    assert bare.body == ""
    assert bare.fields == {"id": "A", "path": "s/a.md"}


def test_horizontal_rules_in_body_stay_in_body() -> None:
    text = "---\nid: A\ntitle: T\n---\nintro\n\n---\n\nid: B\n---\nend\n"
    story = ok(text)
    assert story.id == "A"
    assert story.fields == {"id": "A", "title": "T", "path": "s/a.md"}
    assert story.body == "intro\n\n---\n\nid: B\n---\nend\n"


def test_longer_boundaries_and_trailing_spaces() -> None:
    assert ok("----\nid: A\n---  \nbody").id == "A"


def test_empty_front_matter_is_missing_id() -> None:
    error = err("---\n---\nbody\n")
    assert error.reason == "missing_id"
    assert error.has_front_matter is True


# -- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("---\nid: A\ntitle: ok\nbad: : :\n---\n", 4),
        ("---\nid: A\n\n\nstatus: draft\n  oops: [\n---\n", 6),
        ("---\n\tid: A\n---\n", 2),
    ],
)
def test_yaml_error_reports_the_file_line(text: str, line: int) -> None:
    error = err(text)
    assert error.reason == "yaml"
    assert error.line == line
    assert error.message
    assert error.as_json() == {"reason": "yaml", "message": error.message, "line": line}


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("---\nid: A\nlabels: [a, b\n---\nbody\n", 3),
        ("---\nid: A\n\n\ntitle: 'never closed\n---\n", 5),
        ("---\nid: A\nmeta: {a: 1\n---\n", 3),
    ],
    ids=["flow-sequence", "quote", "flow-mapping"],
)
def test_yaml_error_at_end_of_front_matter_names_the_opening_line(text: str, line: int) -> None:
    error = err(text)
    assert error.reason == "yaml"
    assert error.line == line


def test_yaml_error_inside_front_matter_is_on_a_front_matter_line() -> None:
    # the unclosed list opens on line 4 and is noticed on line 5: either is a fair answer
    error = err("---\nid: A\ntitle: x\nlabels: [a, b\nstatus: y\n---\n")
    assert error.reason == "yaml"
    assert error.line in (4, 5)


def test_yaml_error_line_with_bom_and_crlf() -> None:
    text = "---\nid: A\ntitle: ok\nbad: : :\n---\n"
    assert err("\ufeff" + text).line == 4
    assert err(text.replace("\n", "\r\n")).line == 4
    assert err(("\ufeff" + text.replace("\n", "\r\n")).encode()).line == 4


def test_unclosed_front_matter_is_yaml_error() -> None:
    error = err("---\nid: A\ntitle: never closed\n")
    assert error.reason == "yaml"
    assert error.line == 1


def test_unsafe_tags_are_rejected_as_yaml() -> None:
    error = err("---\nid: A\nx: !!python/object/apply:os.system ['true']\n---\n")
    assert error.reason == "yaml"
    assert error.line == 3


def test_alias_bomb_is_yaml_error() -> None:
    levels = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        levels.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    error = err("---\nid: A\n" + "\n".join(levels) + "\n---\nbody\n")
    assert error.reason == "yaml"
    assert "alias" in error.message


@pytest.mark.parametrize(
    "value",
    [
        "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5),
        "{a: " * (MAX_DEPTH + 5) + "1" + "}" * (MAX_DEPTH + 5),
        "[" * 5000 + "]" * 5000,
    ],
    ids=["lists", "maps", "very-deep"],
)
def test_deep_nesting_is_yaml_error(value: str) -> None:
    error = err(f"---\nid: A\nx: {value}\n---\n")
    assert error.reason == "yaml"


@pytest.mark.parametrize("value", ["&x [*x]", "&x {a: *x}", "&x [1, [2, *x]]"])
def test_recursive_alias_is_yaml_error(value: str) -> None:
    error = err(f"---\nid: A\nx: {value}\n---\n")
    assert error.reason == "yaml"


def test_nesting_below_the_limit_is_fine() -> None:
    depth = MAX_DEPTH - 2
    story = ok("---\nid: A\nx: " + "[" * depth + "1" + "]" * depth + "\n---\n")
    assert story.id == "A"


def test_not_utf8_is_unreadable() -> None:
    error = err(b"---\nid: A\ntitle: caf\xe9\n---\n")
    assert error.reason == "unreadable"
    assert error.line == 3


def test_too_large() -> None:
    raw = b"---\nid: A\n---\n" + b"x" * 100
    error = err(raw, max_bytes=50)
    assert error.reason == "too_large"
    assert isinstance(parse_story("s/a.md", raw, max_bytes=len(raw)), Story)


def test_default_max_bytes_is_one_mebibyte() -> None:
    head = b"---\nid: A\n---\n"
    fits = head + b"x" * (1_048_576 - len(head))
    assert isinstance(parse_story("s/a.md", fits), Story)
    assert err(fits + b"x").reason == "too_large"


@pytest.mark.parametrize(
    "text", ["# Title\n\nno front-matter\n", "", "\n---\nid: A\n---\n", "text\n---\nid: A\n---\n"]
)
def test_no_front_matter(text: str) -> None:
    error = err(text)
    assert error.reason == "missing_id"
    assert error.has_front_matter is False


def test_front_matter_without_id() -> None:
    error = err("---\ntitle: Ideas\ntags: [a]\n---\nbody\n")
    assert error.reason == "missing_id"
    assert error.has_front_matter is True


@pytest.mark.parametrize("front", ["- a\n- b", "just a string", "42"])
def test_non_mapping_front_matter(front: str) -> None:
    error = err(f"---\n{front}\n---\nbody\n")
    assert error.reason == "yaml"
    assert error.has_front_matter is True
    assert "mapping" in error.message


def test_parse_never_raises_on_garbage() -> None:
    for raw in [b"\x00\x01", b"---\n\x00\n---\n", b"---\n" + b"{" * 10_000 + b"\n---\n"]:
        assert isinstance(parse_story("g.md", raw), ParseError | Story)


# -- the fixture corpus ------------------------------------------------------------------


def _fixture_files() -> list[Path]:
    return sorted(FIXTURES.rglob("*.md"))


def test_fixture_corpus_has_fifty_stories() -> None:
    stories: dict[str, Story] = {}
    not_stories: set[str] = set()
    for file in _fixture_files():
        rel = file.relative_to(FIXTURES).as_posix()
        result = parse_story(rel, file.read_bytes())
        if isinstance(result, Story):
            stories[rel] = result
        else:
            assert result.reason == "missing_id", (rel, result)
            not_stories.add(rel)
    assert not_stories == NOT_STORIES
    assert len(stories) == 50
    ids = Counter(s.id for s in stories.values())
    assert max(ids.values()) == 1, "fixture ids must be unique"
    for rel, story in stories.items():
        assert story.path == rel
        assert story.fields["path"] == rel
        assert story.fields["id"] == story.id
        assert story.fields.get("status"), rel
        assert story.fields.get("epic"), rel
        assert story.fields.get("title"), rel
        json.dumps(story.fields, allow_nan=False)


def test_fixture_awkward_files() -> None:
    def load(rel: str) -> Story:
        result = parse_story(rel, (FIXTURES / rel).read_bytes())
        assert isinstance(result, Story), result
        return result

    assert load("data/legacy/1042-import-legacy-jira-backlog.md").id == "1042"
    assert load("api/v1/API-004-publish-openapi-schema.md").id == "API-004"  # BOM
    assert load("infra/ci/INF-009-nightly-soak-test.md").id == "INF-009"  # CRLF
    data6 = load("data/DATA-006-export-board-to-csv.md")
    assert data6.fields["created"] == "2025-07-23"
    assert data6.fields["updated_at"] == "2025-08-28T10:15:00+00:00"
    int2 = load("integration/websocket/INT-002-websocket-real-time-update-system.md")
    assert not int2.body.endswith("\n")  # no trailing newline
    ui1 = load("ui/board/UI-001-live-board-kanban-columns.md")
    assert "\n---\n" in ui1.body
    assert "\r" not in load("infra/ci/INF-009-nightly-soak-test.md").body


def test_notes_with_front_matter_but_no_id() -> None:
    rel = "notes/ideas.md"
    result = parse_story(rel, (FIXTURES / rel).read_bytes())
    assert isinstance(result, ParseError)
    assert result.reason == "missing_id"
    assert result.has_front_matter is True
