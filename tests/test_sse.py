"""storywatch.sse: SSE framing and Last-Event-ID parsing (SPEC §12).

Messages are read back with a parser that follows the WHATWG event-stream algorithm (what
a browser's EventSource does), so the framing is checked the way clients will see it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storywatch import sse
from storywatch.catchup import Catchup, Entry


@dataclass
class Dispatched:
    type: str
    data: str
    last_event_id: str


def parse_stream(raw: bytes) -> tuple[list[Dispatched], int]:
    """Events an EventSource would dispatch, and the number of comment lines."""
    events: list[Dispatched] = []
    comments = 0
    kind, data, last_id = "", "", ""
    for line in raw.decode("utf-8").split("\n"):
        if line == "":
            if data:
                events.append(Dispatched(kind or "message", data.removesuffix("\n"), last_id))
            kind, data = "", ""
            continue
        if line.startswith(":"):
            comments += 1
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            kind = value
        elif name == "data":
            data += value + "\n"
        elif name == "id" and "\x00" not in value:
            last_id = value
    return events, comments


def test_a_stream_event_has_id_event_and_data() -> None:
    raw = sse.message("story.created", '{"seq":7}', id=sse.event_id("9f3c1a0b", 7))
    assert raw == b'id: 9f3c1a0b:7\nevent: story.created\ndata: {"seq":7}\n\n'
    (event,), _ = parse_stream(raw)
    assert event == Dispatched("story.created", '{"seq":7}', "9f3c1a0b:7")


def test_a_json_value_is_encoded_on_one_line() -> None:
    data = {"title": "two\nlines", "ü": "é"}
    (event,), _ = parse_stream(sse.message("x", data))
    assert json.loads(event.data) == data


def test_pre_encoded_text_with_line_breaks_arrives_whole() -> None:
    (event,), _ = parse_stream(sse.message("x", '{\n"a": 1\r\n}'))
    assert json.loads(event.data) == {"a": 1}


def test_unicode_line_separators_inside_strings_are_kept() -> None:
    text = json.dumps({"t": "a\u2028b\x85c\x0bd"}, ensure_ascii=False)
    (event,), _ = parse_stream(sse.message("x", text))
    assert json.loads(event.data) == {"t": "a\u2028b\x85c\x0bd"}


@pytest.mark.parametrize(("field", "value"), [("id", "a\nb"), ("event", "x\ry"), ("id", "a\x00")])
def test_fields_cannot_carry_line_breaks(field: str, value: str) -> None:
    kwargs: dict[str, Any] = {"id": value} if field == "id" else {}
    with pytest.raises(ValueError):
        sse.message(value if field == "event" else "x", {}, **kwargs)


def test_heartbeat_is_a_comment_that_is_never_dispatched() -> None:
    assert sse.HEARTBEAT == b": heartbeat\n\n"
    events, comments = parse_stream(sse.HEARTBEAT * 2)
    assert (events, comments) == ([], 2)


def test_snapshot_resync_and_catchup_messages() -> None:
    raw = sse.resync("lost", "e1", 40) + b"".join(sse.snapshot("e1", 40, [{"id": "A"}]))
    resync, snapshot = parse_stream(raw)[0]
    assert (resync.type, json.loads(resync.data)) == (
        "resync",
        {"reason": "lost", "epoch": "e1", "seq": 40},
    )
    assert resync.last_event_id == ""  # a resync carries no id
    assert (snapshot.type, snapshot.last_event_id) == ("snapshot", "e1:40")
    assert json.loads(snapshot.data) == {"epoch": "e1", "seq": 40, "stories": [{"id": "A"}]}

    entries = tuple(Entry(f"S{n}", n, {"id": f"S{n}"}) for n in range(1, 4))
    chunks = Catchup(since=0, seq=40, entries=entries).messages("e1", size=2)
    first, last = parse_stream(b"".join(sse.catchup(chunks)))[0]
    assert (first.type, first.last_event_id) == ("catchup", "")  # no id until the last chunk
    assert (last.type, last.last_event_id) == ("catchup", "e1:40")
    assert "sub" not in json.loads(first.data) and json.loads(last.data)["done"] is True


@given(st.integers(0, 23), st.integers(1, 5))
def test_a_snapshot_in_pieces_is_one_message(count: int, size: int) -> None:
    """Written a few stories at a time, it is still exactly one event for an EventSource."""
    stories = [{"id": f"S{n}", "title": "ü\nline"} for n in range(count)]
    parts = list(sse.snapshot("e1", 9, stories, size))
    assert len(parts) == sse.pieces(count, size) == max(1, -(-count // size))
    (event,), _ = parse_stream(b"".join(parts))
    assert (event.type, event.last_event_id) == ("snapshot", "e1:9")
    assert json.loads(event.data) == {"epoch": "e1", "seq": 9, "stories": stories}
    assert all(b"\n\n" not in part for part in parts[:-1])  # nothing ends before the last


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("9f3c1a0b:42", ("9f3c1a0b", 42)),
        ("9f3c1a0b:0", ("9f3c1a0b", 0)),
        ("9f3c1a0b:007", ("9f3c1a0b", 7)),
        ("e:" + "9" * 25, ("e", sse.BEYOND)),
        ("e:" + "0" * 30 + "5", ("e", 5)),
    ],
)
def test_last_event_id_parses_epoch_and_seq(value: str, parsed: tuple[str, int]) -> None:
    assert sse.parse_last_event_id(value) == parsed


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "9f3c1a0b",
        "9f3c1a0b:",
        ":42",
        "9f3c1a0b:-1",
        "9f3c1a0b:+1",
        "9f3c1a0b:1.5",
        "9f3c1a0b:1e3",
        "9f3c1a0b: 42",
        "9f3c1a0b:42 ",
        "a:b:42",
        "9f3c1a0b:٤٢",  # Arabic-Indic digits are not ASCII digits
        "e:42\n",
        "e\x00:42",
    ],
)
def test_anything_else_is_no_last_event_id(value: str | None) -> None:
    assert sse.parse_last_event_id(value) is None


@given(
    st.text(
        alphabet=st.characters(blacklist_characters=":\r\n\x00", blacklist_categories=["Cs"]),
        min_size=1,
    ),
    st.integers(0),
)
def test_an_id_we_send_is_read_back(epoch: str, seq: int) -> None:
    raw = sse.message("x", {}, id=sse.event_id(epoch, seq))
    (event,), _ = parse_stream(raw)
    assert sse.parse_last_event_id(event.last_event_id) == (
        epoch,
        seq if seq < sse.BEYOND else sse.BEYOND,
    )


@given(st.text())
def test_parsing_never_raises(value: str) -> None:
    parsed = sse.parse_last_event_id(value)
    assert parsed is None or (":" not in parsed[0] and parsed[1] >= 0)


def test_the_http_head_of_a_stream() -> None:
    head = sse.http_head("storywatch/9.9")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
    fields = dict(line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:] if line)
    assert fields["Content-Type"] == "text/event-stream; charset=utf-8"
    assert fields["Cache-Control"] == "no-store"
    assert fields["X-Content-Type-Options"] == "nosniff"
    assert "Content-Length" not in fields and fields["Server"] == "storywatch/9.9"
