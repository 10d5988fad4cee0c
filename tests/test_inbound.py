"""The edge: every client message becomes a typed request or a RequestError (SPEC §4, §13)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storywatch.filters import Filter
from storywatch.inbound import (
    MAX_SOURCE_BYTES,
    Delete,
    Ping,
    Publish,
    RequestError,
    Since,
    Subscribe,
    Unsubscribe,
    Upsert,
    decode,
    parse_request,
    published_path_ok,
)
from storywatch.paths import PathRules

RULES = PathRules()
LONE = "\ud800"

# All of Unicode, lone surrogates included, in keys and values.
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4)
    ),
    max_leaves=20,
)


def parse(message: dict[str, Any]) -> Any:
    return parse_request(message, RULES)


def valid_everywhere(value: Any) -> None:
    json.dumps(value, ensure_ascii=False).encode("utf-8")


def refusal(message: dict[str, Any]) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parse(message)
    return caught.value


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["subscribe", "unsubscribe", "ping", "publish", "other"]),
    fields=st.dictionaries(
        st.sampled_from(["sub", "ref", "filter", "since", "snapshot", "items", "source", "nonce"]),
        json_values,
        max_size=6,
    ),
)
def test_any_message_is_a_typed_request_or_a_refusal(kind: str, fields: dict[str, Any]) -> None:
    """Whatever arrives, what passes holds only valid Unicode, and what is echoed back
    in a refusal (``ref``) is valid Unicode too."""
    try:
        request = parse({"type": kind, **fields})
    except RequestError as exc:
        valid_everywhere(exc.ref)
        valid_everywhere(exc.message)
        return
    assert isinstance(request, Subscribe | Unsubscribe | Ping | Publish)
    if isinstance(request, Subscribe):
        valid_everywhere(request.sub)
        valid_everywhere(request.filter.to_json())
    elif isinstance(request, Publish):
        valid_everywhere(request.source)
        valid_everywhere(request.ref)
        for item in request.items:
            valid_everywhere(item.story_id)
            if isinstance(item, Upsert):
                valid_everywhere(item.fields)
    elif isinstance(request, Ping):
        valid_everywhere(request.nonce)


@pytest.mark.parametrize(
    "message",
    [
        {"type": "subscribe", "sub": "s1", "filter": {"epics": [LONE]}},
        {"type": "subscribe", "sub": "s1", "filter": {LONE: ["x"]}},
        {"type": "subscribe", "sub": "s1", "filter": {"stories": ["x"] * 257}},
        {"type": "subscribe", "sub": "s1", "filter": {"stories": ["x" * 100] * 50}},
        {"type": "subscribe", "sub": "s1", "filter": {"epic": ["x"]}},
    ],
)
def test_bad_filters_are_invalid_filter(message: dict[str, Any]) -> None:
    error = refusal(message)
    assert (error.code, error.ref) == ("invalid_filter", "s1")


def test_a_filter_at_its_bounds_is_accepted() -> None:
    request = parse({"type": "subscribe", "sub": "s", "filter": {"stories": ["x"] * 256}})
    assert isinstance(request, Subscribe) and request.filter == Filter(stories=frozenset("x"))


@pytest.mark.parametrize(
    "message",
    [
        {"type": "subscribe", "sub": LONE},
        {"type": "subscribe", "sub": "s", "since": {"epoch": LONE, "seq": 1}},
        {"type": "unsubscribe", "sub": LONE},
        {"type": "ping", "nonce": [LONE]},
        {"type": "publish", "ref": LONE, "items": []},
        {"type": "publish", "ref": "r", "items": [{"op": "delete", "id": LONE}]},
        {"type": "publish", "ref": "r", "items": [], "source": {"note": LONE}},
        {"type": "publish", "ref": "r", "items": [{"op": "upsert", "story": {"id": "A", LONE: 1}}]},
        {"type": LONE},
    ],
)
def test_lone_surrogates_are_bad_requests_and_never_echoed(message: dict[str, Any]) -> None:
    error = refusal(message)
    assert error.code == "bad_request"
    valid_everywhere(error.ref)


def test_publish_source_is_bounded() -> None:
    too_many = {f"k{n}": n for n in range(17)}
    assert refusal({"type": "publish", "ref": "r", "items": [], "source": too_many}).code == (
        "bad_request"
    )
    too_big = {"note": "x" * MAX_SOURCE_BYTES}
    assert refusal({"type": "publish", "ref": "r", "items": [], "source": too_big}).code == (
        "bad_request"
    )
    fine = {f"k{n}": n for n in range(16)}
    request = parse({"type": "publish", "ref": "r", "items": [], "source": fine})
    assert isinstance(request, Publish) and request.source == fine


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("stories/A.md", True),
        ("A.md", True),
        (".hidden/secret.md", False),
        ("stories/.A.md", False),
        ("stories/A.txt", False),
        ("../A.md", False),
        ("/abs/A.md", False),
        ("a//b.md", False),
        ("node_modules/x.md", False),
        ("a/./b.md", False),
        ("stories/A.md.swp", False),
        ("back\\slash.md", False),
        ("", False),
    ],
)
def test_published_paths_obey_the_path_rules(path: str, ok: bool) -> None:
    assert published_path_ok(path, RULES) is ok


def test_excluded_paths_cannot_be_published() -> None:
    rules = PathRules(exclude=["archive/**"])
    assert not published_path_ok("archive/A.md", rules)
    assert published_path_ok("stories/A.md", rules)


def test_upsert_without_a_path_lands_on_its_id() -> None:
    request = parse({"type": "publish", "ref": 1, "items": [{"op": "upsert", "story": {"id": 7}}]})
    assert isinstance(request, Publish)
    assert request.items == (Upsert("7", {"id": "7"}, None, "7.md"),)
    bad = {"op": "upsert", "story": {"id": ".x"}}
    assert refusal({"type": "publish", "ref": 1, "items": [bad]}).code == "bad_request"


def test_delete_ids_become_strings() -> None:
    request = parse({"type": "publish", "items": [{"op": "delete", "id": 12}]})
    assert isinstance(request, Publish) and request.items == (Delete("12"),)


def test_since_values_that_name_no_position_are_kept_as_unknown() -> None:
    request = parse({"type": "subscribe", "sub": "s", "since": {"epoch": 3, "seq": -1}})
    assert isinstance(request, Subscribe) and request.since == Since(None, None)


@pytest.mark.parametrize("text", ["nope", "[1]", '{"a": NaN}', '{"a": 1e999}', "[" * 100_000])
def test_decode_refuses_what_is_not_a_json_object(text: str) -> None:
    with pytest.raises(RequestError) as caught:
        decode(text)
    assert caught.value.code == "bad_request"
