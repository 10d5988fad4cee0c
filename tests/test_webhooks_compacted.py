"""A hook that fell behind the log's window gets compacted events (SPEC §10, as §9).

The real backends (memory, sqlite, Redis) with a window of 5 events, a real receiver that is
down while 50 events pass and then comes back on the same port: the hook gets the event it
was retrying, then — per story changed since — that story's latest event as logged (type,
seq, ``webhook-id`` ``<epoch>-<seq>``), with ``"compacted": true``, in seq order, none
skipped; then live events as usual.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from storywatch.config import BackendSettings
from storywatch.eventlog import LogState
from storywatch.events import Draft, Event, Json
from storywatch.filters import Scope
from storywatch.log.memory import MemoryLog
from storywatch.log.sqlite import SqliteLog
from storywatch.webhooks.config import HookConfig, origin_of
from storywatch.webhooks.service import Webhooks
from storywatch.webhooks.store import HookState, MemoryStore
from tests.conftest import scaled
from tests.integration.redis_server import RedisServer
from tests.receiver import SECRET_PATH, Receiver, closed_port

WINDOW = 5
SOURCE: Json = {"kind": "fs"}
KINDS = ["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)]


def draft(kind: str, n: int, status: str) -> Draft:
    story = {"id": f"S-{n}", "path": f"S-{n}.md", "title": f"story {n}", "status": status}
    story["epic"] = "ui" if n % 2 else "api"
    changes = {"status": {"old": "x", "new": status}} if kind == "story.transitioned" else {}
    return Draft(kind, f"S-{n}", f"S-{n}.md", story, changes)  # type: ignore[arg-type]


def history(count: int, stories: int) -> list[Draft]:
    """Creates, then transitions round-robin, and a delete: ``count`` drafts."""
    out = [draft("story.created", n, "s0") for n in range(stories)]
    n = 0
    while len(out) < count - 1:
        out.append(draft("story.transitioned", n % stories, f"s{len(out)}"))
        n += 1
    out.append(draft("story.deleted", 3, "gone"))
    return out


@pytest.fixture(params=KINDS)
async def opened(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Any, LogState]]:
    """A log of each backend with a window of 5 events, and what it said when opened."""
    server: RedisServer | None = None
    made: Any
    if request.param == "memory":
        made = MemoryLog(buffer_size=WINDOW)
    elif request.param == "sqlite":
        made = SqliteLog(tmp_path / "state.db", buffer_size=WINDOW)
    else:
        from storywatch.log.redis import RedisLog

        server = RedisServer(tmp_path / "redis").start()
        made = RedisLog(BackendSettings("redis", None, server.url, "c", WINDOW))
    state = await made.open()
    yield made, state
    await made.close()
    if server is not None:
        server.stop()


def hook_for(url: str, **kwargs: Any) -> HookConfig:
    return HookConfig(name="h", url=url, origin=origin_of(url), **kwargs)


async def until(store: MemoryStore, check: Callable[[HookState], bool]) -> HookState:
    async with asyncio.timeout(scaled(20)):
        while True:
            state = (await store.load(["h"])).get("h")
            if state is not None and check(state):
                return state
            await asyncio.sleep(0.01)


def latest_per_story(events: list[Event], after: int) -> list[Event]:
    last: dict[str, Event] = {}
    for event in events:
        last[event.story_id] = event
    return sorted((e for e in last.values() if e.seq > after), key=lambda e: e.seq)


async def test_a_receiver_down_while_50_events_pass_gets_them_compacted(
    opened: tuple[Any, LogState],
) -> None:
    log, opened_state = opened
    port = closed_port()
    store = MemoryStore()
    webhooks = Webhooks(
        [hook_for(f"http://127.0.0.1:{port}{SECRET_PATH}")], store, jitter=lambda: 0, window=WINDOW
    )
    await webhooks.open()
    receiver = Receiver()
    try:
        await webhooks.start(log, epoch=opened_state.epoch, seq=0)
        drafts = history(50, stories=8)
        events = await log.append(drafts[:1], SOURCE)
        await until(store, lambda s: s.failed >= 1)  # down: the first event waits to retry
        for start in range(1, 50, 7):
            events += await log.append(drafts[start : start + 7], SOURCE)
        epoch = events[0].epoch
        await receiver.start(port)  # back up, where the hook points

        want = latest_per_story(events, after=1)
        got = await receiver.wait_for(1 + len(want))
        first, rest = got[0], got[1:]
        assert first.json() == events[0].data  # the event it was retrying, as it was
        assert "compacted" not in first.json()
        assert [r.seq for r in rest] == [e.seq for e in want]  # in seq order
        assert [r.headers["webhook-id"] for r in rest] == [f"{epoch}-{e.seq}" for e in want]
        for request, event in zip(rest, want, strict=True):
            assert request.json() == {**event.data, "compacted": True}  # as logged
        # None skipped: every story changed after the cursor, once, with its last event.
        assert {r.json()["story_id"] for r in rest} == {f"S-{n}" for n in range(8)}
        assert [r.json()["type"] for r in rest].count("story.deleted") == 1
        state = await until(store, lambda s: s.cursor == events[-1].seq)
        assert (state.delivered, state.dead_letters) == (1 + len(want), 0)

        # Then live events, one by one, as usual.
        (live,) = await log.append([draft("story.transitioned", 0, "live")], SOURCE)
        (request,) = (await receiver.wait_for(2 + len(want)))[-1:]
        assert request.json() == live.data
    finally:
        await webhooks.close()
        await receiver.close()


async def test_compacted_events_pass_the_hooks_filter_and_scope(
    opened: tuple[Any, LogState],
) -> None:
    """A hook already far behind when it starts (re-added after a while): the filter and
    the epics apply to each story's latest event, as to any event."""
    log, _ = opened
    receiver = await Receiver().start()
    store = MemoryStore()
    hook = hook_for(receiver.url(), scope=Scope(frozenset({"ui"})))
    webhooks = Webhooks([hook], store, window=WINDOW)
    try:
        events = await log.append(history(30, stories=6), SOURCE)
        epoch = events[0].epoch
        await store.save("h", HookState(epoch=epoch, cursor=2))
        await webhooks.open()
        await webhooks.start(log, epoch=epoch, seq=events[-1].seq)
        await until(store, lambda s: s.cursor == events[-1].seq)
        want = [e for e in latest_per_story(events, after=2) if e.data["story"]["epic"] == "ui"]
        assert [r.seq for r in receiver.requests] == [e.seq for e in want]
        assert all(r.json()["compacted"] is True for r in receiver.requests)
        assert {r.json()["story_id"] for r in receiver.requests} == {"S-1", "S-3", "S-5"}
    finally:
        await webhooks.close()
        await receiver.close()


async def test_behind_the_replay_buffer_even_while_the_log_still_holds_the_events() -> None:
    """A Redis stream is trimmed approximately and may keep more than ``buffer_size``
    events: a hook is behind when its next event is older than the newest ``buffer_size``,
    whatever the log still holds (here: a log that keeps 100, a buffer of 5)."""
    log = MemoryLog(buffer_size=100)
    state = await log.open()
    receiver = await Receiver().start()
    store = MemoryStore()
    webhooks = Webhooks([hook_for(receiver.url())], store, window=WINDOW)
    try:
        events = await log.append(history(30, stories=6), SOURCE)
        await store.save("h", HookState(epoch=state.epoch, cursor=20))
        await webhooks.open()
        await webhooks.start(log, epoch=state.epoch, seq=events[-1].seq)
        await until(store, lambda s: s.cursor == events[-1].seq)
        want = latest_per_story(events, after=20)
        assert [r.seq for r in receiver.requests] == [e.seq for e in want]
        assert all(r.json()["compacted"] is True for r in receiver.requests)
        # Within the buffer, nothing is compacted: 3 new events, 3 plain deliveries.
        more = await log.append(history(3, stories=2)[:3], SOURCE)
        got = await receiver.wait_for(len(want) + 3)
        assert [r.json() for r in got[len(want) :]] == [e.data for e in more]
    finally:
        await webhooks.close()
        await receiver.close()
