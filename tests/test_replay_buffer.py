"""Unit tests for storywatch.log.ReplayBuffer.after (SPEC §4 order and gaps, §6 buffer)."""

from __future__ import annotations

from typing import Any

import pytest

from storywatch.eventlog import new_epoch
from storywatch.events import Draft, Event, number
from storywatch.replay import ReplayBuffer

EPOCH = "9f3c1a0b"


def event(seq: int, epoch: str = EPOCH) -> Event:
    draft = Draft(
        type="story.updated",
        story_id=f"S-{seq}",
        path=f"s/{seq}.md",
        story={"id": f"S-{seq}", "path": f"s/{seq}.md"},
        changes={},
        body_changed=True,
    )
    return number(draft, seq, epoch, "2026-01-01T00:00:00.000Z", {"kind": "fs"})


def filled(size: int, first: int, last: int) -> ReplayBuffer:
    buffer = ReplayBuffer(size, EPOCH, first - 1)
    for seq in range(first, last + 1):
        buffer.add(event(seq))
    return buffer


def seqs(events: list[Event] | None) -> list[int] | None:
    return None if events is None else [e.seq for e in events]


def test_current_seq_is_empty_list() -> None:
    buffer = filled(10, 1, 5)
    assert buffer.after(EPOCH, 5) == []
    assert buffer.seq == 5


def test_old_seq_inside_the_buffer() -> None:
    buffer = filled(10, 1, 5)
    assert seqs(buffer.after(EPOCH, 2)) == [3, 4, 5]
    assert seqs(buffer.after(EPOCH, 4)) == [5]
    assert seqs(buffer.after(EPOCH, 0)) == [1, 2, 3, 4, 5]


def test_buffer_keeps_only_the_last_size_events() -> None:
    buffer = filled(3, 1, 10)
    assert len(buffer) == 3
    assert seqs(buffer.after(EPOCH, 7)) == [8, 9, 10]  # the oldest kept is 8
    assert seqs(buffer.after(EPOCH, 8)) == [9, 10]
    assert buffer.after(EPOCH, 6) is None  # seq 7 was dropped
    assert buffer.after(EPOCH, 0) is None


def test_other_epoch_is_none() -> None:
    buffer = filled(10, 1, 5)
    assert buffer.after("other", 3) is None
    assert buffer.after("other", 5) is None
    assert buffer.after(None, 5) is None


def test_newer_than_latest_is_none() -> None:
    buffer = filled(10, 1, 5)
    assert buffer.after(EPOCH, 6) is None
    assert buffer.after(EPOCH, 10**9) is None


@pytest.mark.parametrize("since", [-1, "3", 3.0, None, True, [3]])
def test_bad_cursor_is_none(since: Any) -> None:
    assert filled(10, 1, 5).after(EPOCH, since) is None


def test_empty_buffer_after_restart() -> None:
    buffer = ReplayBuffer(10, EPOCH, 42)  # history known up to 42, no events kept
    assert len(buffer) == 0
    assert buffer.after(EPOCH, 42) == []
    assert buffer.after(EPOCH, 41) is None
    assert buffer.after(EPOCH, 43) is None


def test_buffer_seeded_with_recent_events() -> None:
    buffer = ReplayBuffer(10, EPOCH, 20, [event(seq) for seq in range(16, 21)])
    assert seqs(buffer.after(EPOCH, 15)) == [16, 17, 18, 19, 20]
    assert buffer.after(EPOCH, 14) is None
    buffer.add(event(21))
    assert seqs(buffer.after(EPOCH, 19)) == [20, 21]
    assert buffer.seq == 21


def test_reset_changes_epoch_and_drops_history() -> None:
    buffer = filled(10, 1, 5)
    buffer.reset("newepoch", 0)
    assert len(buffer) == 0
    assert buffer.epoch == "newepoch"
    assert buffer.after(EPOCH, 5) is None
    assert buffer.after("newepoch", 0) == []
    buffer.add(event(1, "newepoch"))
    assert seqs(buffer.after("newepoch", 0)) == [1]


def test_after_returns_a_copy() -> None:
    buffer = filled(10, 1, 3)
    got = buffer.after(EPOCH, 0)
    assert got is not None
    got.clear()
    assert seqs(buffer.after(EPOCH, 0)) == [1, 2, 3]


def test_new_epoch_is_opaque_and_fresh() -> None:
    a, b = new_epoch(), new_epoch()
    assert isinstance(a, str)
    assert a
    assert a != b
