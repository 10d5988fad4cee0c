"""The seam: what a backend appends reaches its followers, and a bad batch stops nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from storywatch.errors import PublishRejected, RefusedError
from storywatch.eventlog import EventLog, LogState
from storywatch.events import Draft, Event
from storywatch.filters import Scope
from storywatch.inbound import Delete, Publish, Upsert
from storywatch.index import Index
from storywatch.ingest import Ingest
from storywatch.log.memory import MemoryLog
from storywatch.log.sqlite import SqliteLog
from storywatch.story import parse_text
from storywatch.values import Principal

SOURCE = {"kind": "fs", "batch": "b-1"}


def draft(n: int, title: str = "t") -> Draft:
    story = {"id": f"S{n}", "title": title, "path": f"s/{n}.md"}
    return Draft(
        "story.created", f"S{n}", f"s/{n}.md", story, {"title": {"old": None, "new": title}}
    )


@asynccontextmanager
async def opened(kind: str, tmp_path: Path) -> AsyncIterator[EventLog]:
    log: EventLog = (
        MemoryLog(buffer_size=100)
        if kind == "memory"
        else SqliteLog(tmp_path / "state.db", buffer_size=100)
    )
    await log.open()
    try:
        yield log
    finally:
        await log.close()


async def no_reset(state: LogState) -> None:
    raise AssertionError("history is never lost here")


@asynccontextmanager
async def following(
    log: EventLog, after: int, sink: Callable[[list[Event]], None]
) -> AsyncIterator[None]:
    task = asyncio.create_task(log.follow(after, sink, no_reset))
    await asyncio.sleep(0.01)  # registered (and caught up)
    try:
        yield
    finally:
        task.cancel()


BACKENDS = ["memory", "sqlite"]


@pytest.mark.parametrize("kind", BACKENDS)
async def test_followers_get_every_event_in_order_even_when_late(kind: str, tmp_path: Path) -> None:
    async with opened(kind, tmp_path) as log:
        early: list[Event] = []
        async with following(log, 0, early.extend):
            await log.append([draft(1), draft(2)], SOURCE)
            late: list[Event] = []
            async with following(log, 1, late.extend):  # joins after seq 2 was committed
                await log.append([draft(3)], SOURCE)
            assert [e.seq for e in late] == [2, 3]
        assert [e.seq for e in early] == [1, 2, 3]


@pytest.mark.parametrize("kind", BACKENDS)
async def test_a_failing_follower_does_not_stop_the_others(kind: str, tmp_path: Path) -> None:
    def broken(events: list[Event]) -> None:
        raise RuntimeError("reader bug")

    async with opened(kind, tmp_path) as log:
        got: list[Event] = []
        async with following(log, 0, broken), following(log, 0, got.extend):
            await log.append([draft(1)], SOURCE)
            await log.append([draft(2)], SOURCE)
        assert [e.seq for e in got] == [1, 2]


@pytest.mark.parametrize("kind", BACKENDS)
async def test_a_batch_that_cannot_be_encoded_is_refused_and_the_log_goes_on(
    kind: str, tmp_path: Path
) -> None:
    async with opened(kind, tmp_path) as log:
        got: list[Event] = []
        async with following(log, 0, got.extend):
            with pytest.raises(RefusedError):
                await log.append([draft(1, title="\ud800")], SOURCE)
            events = await log.append([draft(2)], SOURCE)
        assert [e.seq for e in events] == [1]  # the refused batch took no seq
        assert [e.seq for e in got] == [1]
        assert log.healthy


def story_text(story_id: str, epic: str) -> str:
    return f"---\nid: {story_id}\nepic: {epic}\n---\n"


async def ingest_with(log: EventLog, files: dict[str, str]) -> Ingest:
    ingest = Ingest(Index(), log)
    await ingest.apply({p: parse_text(p, t) for p, t in files.items()}, SOURCE, emit=False)
    return ingest


@pytest.mark.parametrize("kind", BACKENDS)
async def test_a_refused_publish_is_rejected_and_later_batches_flow(
    kind: str, tmp_path: Path
) -> None:
    async with opened(kind, tmp_path) as log:
        ingest = await ingest_with(log, {"a.md": story_text("A", "ui")})
        bad = Publish("r", (Upsert("B", {"id": "B", "note": "\ud800"}, "b.md", "B.md"),), {})
        with pytest.raises(PublishRejected) as caught:
            await ingest.publish(bad, None)
        assert caught.value.code == "bad_request"
        assert ingest.backlog == 0  # dropped, not kept at the head of the backlog
        good = Publish("r", (Upsert("C", {"id": "C"}, "c.md", "C.md"),), {})
        done = await ingest.publish(good, None)
        assert done.count == 1
        events = await ingest.apply({"a.md": parse_text("a.md", story_text("A", "api"))}, SOURCE)
        assert [e.type for e in events] == ["story.updated"]


async def test_publish_scope_is_checked_on_the_index_it_is_applied_to(tmp_path: Path) -> None:
    log = MemoryLog()
    ingest = await ingest_with(
        log, {"ui/a.md": story_text("A", "ui"), "sec/s.md": story_text("S", "security")}
    )
    ui = Principal("ui-bot", frozenset({"publish"}), Scope(frozenset({"ui"})))
    # Taking over the file of a story outside the token's epics is forbidden.
    takeover = Publish("r", (Upsert("X", {"id": "X", "epic": "ui"}, "sec/s.md", "X.md"),), {})
    with pytest.raises(PublishRejected) as caught:
        await ingest.publish(takeover, ui)
    assert caught.value.code == "forbidden"
    for item in (Delete("S"), Upsert("S", {"id": "S", "epic": "ui"}, None, "S.md")):
        with pytest.raises(PublishRejected):
            await ingest.publish(Publish("r", (item,), {}), ui)
    assert ingest.index.get("S") is not None and ingest.index.owns("sec/s.md") == "S"
    done = await ingest.publish(
        Publish("r", (Upsert("A", {"id": "A", "epic": "ui", "t": 1}, None, "A.md"),), {}), ui
    )
    assert done.count == 1


async def test_publish_events_name_the_token_whatever_the_client_claimed() -> None:
    log = MemoryLog()
    got: list[Event] = []
    ingest = Ingest(Index(), log)
    async with following(log, 0, got.extend):
        request = Publish(
            "r", (Upsert("A", {"id": "A"}, None, "A.md"),), {"token": "forged", "x": 1}
        )
        await ingest.publish(request, Principal("ci", frozenset({"publish"})))
    (event,) = got
    assert event.data["source"] == {"kind": "publish", "token": "ci", "x": 1}


async def test_a_shared_index_is_refreshed_under_the_lock_before_the_check() -> None:
    """A serve node checks a publish against the index the log has now, not its own."""
    log = MemoryLog()
    fresh = Index()
    fresh.apply({"sec/new.md": parse_text("sec/new.md", story_text("N", "security"))})

    async def refresh() -> tuple[Index, int]:
        return fresh, 7

    ingest = Ingest(Index(), log, refresh=refresh)  # its own index never saw N
    ui = Principal("ui-bot", frozenset({"publish"}), Scope(frozenset({"ui"})))
    takeover = Publish("r", (Upsert("X", {"id": "X", "epic": "ui"}, "sec/new.md", "X.md"),), {})
    with pytest.raises(PublishRejected):
        await ingest.publish(takeover, ui)
