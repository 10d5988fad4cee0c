"""Each story's last event in every backend (SPEC §10: what a webhook behind the log gets).

``latest_events_after(seq, limit)`` must give, per story whose last event is after ``seq``,
that event exactly as logged, in seq order — long after the replay window dropped it —
written in the append's own commit, durable (sqlite: across a reopen; Redis: read by another
server), and gone with the story's tombstone.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storywatch.catchup import DAY_S
from storywatch.config import BackendSettings
from storywatch.events import Draft, Event
from storywatch.index import Index
from storywatch.log.sqlite import SqliteLog
from storywatch.story import ParseResult
from tests.integration.redis_server import RedisServer
from tests.test_catchup_log import (
    HISTORY,
    KEEP_DAYS,
    KINDS,
    SOURCE,
    Backends,
    Clock,
    append_all,
    drafts_of,
    story,
)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=KINDS)
def backends(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Iterator[Backends]:
    """Logs of each kind (tests/test_catchup_log.py): a window of 4 in sqlite and Redis."""
    made = Backends(request.param, tmp_path, clock)
    yield made
    made.stop()


def random_history(seed: int, steps: int = 60, stories: int = 8) -> list[list[Draft]]:
    """Creates, updates (status, epic, title), deletes and re-creates of a few stories,
    one or two changes per batch, through the real index."""
    rng = random.Random(seed)
    index = Index()
    live: dict[str, dict[str, Any]] = {}
    batches: list[list[Draft]] = []
    for _ in range(steps):
        changes: dict[str, ParseResult | None] = {}
        for story_id in rng.sample([f"S-{n}" for n in range(stories)], rng.choice([1, 1, 2])):
            path = f"{story_id}.md"
            if story_id in live and rng.random() < 0.15:
                del live[story_id]
                changes[path] = None
                continue
            fields = live.setdefault(story_id, {"status": "draft", "epic": "ui"})
            fields[rng.choice(["status", "epic", "title"])] = rng.choice(["a", "b", "c", "d"])
            changes[path] = story(path, story_id, **fields)
        batches.append(index.apply(changes))
    return [batch for batch in batches if batch]


def model(events: list[Event], after: int) -> list[Event]:
    """Per story, its last event; those after ``after``, in seq order."""
    last: dict[str, Event] = {}
    for event in events:
        last[event.story_id] = event
    return sorted((e for e in last.values() if e.seq > after), key=lambda e: e.seq)


async def paged(log: Any, after: int, limit: int) -> list[Event]:
    """Every page from ``after`` on, as a hook reads them (the cursor moves to each)."""
    out: list[Event] = []
    while True:
        page = await log.latest_events_after(after, limit)
        out += page
        if len(page) < limit:
            return out
        after = page[-1].seq


def same_events(got: list[Event], want: list[Event]) -> None:
    assert [(e.seq, e.story_id) for e in got] == [(e.seq, e.story_id) for e in want]
    for mine, logged in zip(got, want, strict=True):
        assert mine.data == logged.data  # exactly as logged: type, seq, epoch, time, source
        assert mine.epoch == logged.epoch


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_each_storys_last_event_long_after_the_window_dropped_it(
    backends: Backends, seed: int
) -> None:
    async with backends.opened() as (log, _):
        events = await append_all(log, random_history(seed))
        latest = events[-1].seq
        assert latest > 40  # the window (4 events in sqlite and redis) dropped most
        for after in (0, 1, latest // 3, latest - 5, latest - 1):
            for limit in (1, 3, 1000):
                same_events(await paged(log, after, limit), model(events, after))
        assert await log.latest_events_after(latest, 10) == []
    async with backends.opened() as (again, _):  # a reopen / another server
        same_events(await paged(again, 0, 2), model(events, 0))


async def test_a_tombstone_takes_its_last_event_with_it(backends: Backends, clock: Clock) -> None:
    batches = drafts_of(HISTORY)
    async with backends.opened() as (log, _):
        events = await append_all(log, batches[:-1])  # A and C are deleted
        kinds = {e.story_id: e.type for e in await log.latest_events_after(0, 100)}
        assert kinds == {"A": "story.deleted", "B": "story.updated", "C": "story.deleted"}
        clock.offset = KEEP_DAYS * DAY_S + 60
        (created,) = await log.append(batches[-1], SOURCE)  # expires A's and C's tombstones
        same_events(await log.latest_events_after(0, 100), model([*events, created], 0)[-2:])
        assert [e.story_id for e in await log.latest_events_after(0, 100)] == ["B", "C"]


async def test_expire_tombstones_without_an_append_forgets_them_too(
    backends: Backends, clock: Clock
) -> None:
    async with backends.opened() as (log, _):
        await append_all(log, drafts_of(HISTORY[:9]))  # A is deleted
        assert "A" in {e.story_id for e in await log.latest_events_after(0, 100)}
        clock.offset = (KEEP_DAYS + 0.5) * DAY_S
        await log.expire_tombstones()
        assert "A" not in {e.story_id for e in await log.latest_events_after(0, 100)}


# -- sqlite ----------------------------------------------------------------------------------


async def test_sqlite_a_failed_append_keeps_no_last_event(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    log = SqliteLog(path, buffer_size=10)
    await log.open()
    try:
        batches = drafts_of(HISTORY[:2])
        first = await log.append(batches[0], SOURCE)
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute("INSERT INTO events (seq, data) VALUES (3, '{}')")  # seq 3 is taken
        with pytest.raises(Exception, match="UNIQUE"):
            await log.append(batches[1], SOURCE)
        same_events(await log.latest_events_after(0, 10), first)
    finally:
        await log.close()


async def test_sqlite_a_file_without_last_events_gets_them_from_what_it_holds(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    log = SqliteLog(path, buffer_size=4)
    await log.open()
    events = await append_all(log, random_history(7))
    await log.close()
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("DROP INDEX positions_by_seq")
        conn.execute("ALTER TABLE positions DROP COLUMN event")  # as before SPEC §10

    log = SqliteLog(path, buffer_size=4)
    await log.open()
    try:
        retained = {e.seq for e in events[-4:]}
        # Only what the window still held is known; older last events are gone for good.
        want = [e for e in model(events, 0) if e.seq in retained]
        same_events(await log.latest_events_after(0, 100), want)
        more = await log.append(drafts_of([{"z.md": story("z.md", "Z")}])[0], SOURCE)
        same_events(await log.latest_events_after(0, 100), want + more)
    finally:
        await log.close()
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(positions)")}
    assert "positions_by_seq" in indexes


async def test_sqlite_rows_an_older_storywatch_wrote_fall_back_to_the_window(
    tmp_path: Path,
) -> None:
    """A storywatch without the column rewrites a row without its event: while the
    event is in the window, it is read from there."""
    path = tmp_path / "state.db"
    log = SqliteLog(path, buffer_size=4)
    await log.open()
    try:
        events = await append_all(log, random_history(8))
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute("UPDATE positions SET event = NULL")
        retained = {e.seq for e in events[-4:]}
        want = [e for e in model(events, 0) if e.seq in retained]
        same_events(await log.latest_events_after(0, 100), want)
    finally:
        await log.close()


# -- redis -----------------------------------------------------------------------------------


@pytest.mark.redis
async def test_redis_another_server_reads_what_the_watcher_kept(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        from storywatch.log.redis import RedisLog

        settings = BackendSettings("redis", None, server.url, "t", 4)
        writer, reader = RedisLog(settings), RedisLog(settings)
        await writer.open()
        await reader.open()
        try:
            events = await append_all(writer, random_history(9))
            same_events(await paged(reader, 3, 5), model(events, 3))
            assert await writer.redis.zcard(writer.keys["last_seq"]) == len(model(events, 0))
        finally:
            await writer.close()
            await reader.close()
    finally:
        server.stop()
