"""Catch-up positions in every backend (SPEC §9): written with the events, expired on append,
durable in sqlite (across a reopen, and upgraded from schema version 1), shared in Redis (a
second log instance reads what the first wrote), in-process for memory."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from storywatch.catchup import DAY_S, Position, Positions
from storywatch.config import BackendSettings
from storywatch.eventlog import LogState
from storywatch.events import Draft, Event, Json
from storywatch.index import Index
from storywatch.log.memory import MemoryLog
from storywatch.log.sqlite import SCHEMA_VERSION, SqliteLog
from storywatch.story import ParseError, ParseResult, Story
from tests.integration.redis_server import RedisServer

SOURCE: Json = {"kind": "fs"}
KEEP_DAYS = 2.0
KINDS = ["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)]


def story(path: str, story_id: str, **fields: Any) -> Story:
    return Story(story_id, path, {"id": story_id, "path": path, **fields}, "body")


# A history through the real index: creates, moves between epics, a status change, a
# rename, a broken file, a duplicate, a delete and a re-create.
HISTORY: list[dict[str, ParseResult | None]] = [
    {"a.md": story("a.md", "A", epic="ui"), "b.md": story("b.md", "B", epic="api")},
    {"c.md": story("c.md", "C")},
    {"a.md": story("a.md", "A", epic="api")},
    {"b.md": story("b.md", "B", epic="api", status="done")},
    {"c.md": None, "c2.md": story("c2.md", "C")},
    {"b.md": ParseError("yaml", "bad", 2)},
    {"dup.md": story("dup.md", "A", epic="ui")},
    {"a.md": None},  # the duplicate takes over
    {"dup.md": None},  # A is gone: a tombstone
    {"b.md": story("b.md", "B", epic="ops", status="done")},
    {"c2.md": None},
    {"c2.md": story("c2.md", "C", epic="ui")},  # re-created
]


def drafts_of(history: list[dict[str, ParseResult | None]]) -> list[list[Draft]]:
    index = Index()
    return [index.apply(changes) for changes in history]


class Log(Protocol):
    async def open(self) -> LogState: ...

    async def append(self, drafts: list[Draft], source: Json) -> list[Event]: ...

    async def expire_tombstones(self) -> int: ...

    async def close(self) -> None: ...


class Backends:
    """Logs of one kind over one storage: each ``new()`` is another instance (a reopen for
    sqlite, another server's client for Redis, the same object for memory)."""

    def __init__(self, kind: str, tmp_path: Path, clock: Callable[[], float]) -> None:
        self.kind = kind
        self.path = tmp_path / "state.db"
        self.clock = clock
        self.redis: RedisServer | None = None
        self.memory: MemoryLog | None = None
        if kind == "redis":
            self.redis = RedisServer(tmp_path / "redis").start()

    def new(self) -> Any:
        if self.kind == "memory":
            if self.memory is None:
                self.memory = MemoryLog(keep_days=KEEP_DAYS, clock=self.clock)
            return self.memory
        if self.kind == "sqlite":
            return SqliteLog(self.path, buffer_size=4, keep_days=KEEP_DAYS, clock=self.clock)
        from storywatch.log.redis import RedisLog

        assert self.redis is not None
        settings = BackendSettings("redis", None, self.redis.url, "t", 4)
        return RedisLog(settings, keep_days=KEEP_DAYS, clock=self.clock)

    @contextlib.asynccontextmanager
    async def opened(self) -> AsyncIterator[tuple[Any, LogState]]:
        log = self.new()
        state = await log.open()
        try:
            yield log, state
        finally:
            if self.kind != "memory":
                await log.close()

    def stop(self) -> None:
        if self.redis is not None:
            self.redis.stop()


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=KINDS)
def backends(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Iterator[Backends]:
    made = Backends(request.param, tmp_path, clock)
    yield made
    made.stop()


async def append_all(log: Any, batches: list[list[Draft]]) -> list[Event]:
    events: list[Event] = []
    for drafts in batches:
        events += await log.append(drafts, SOURCE)
    return events


def expected(events: list[Event]) -> dict[str, Position]:
    positions = Positions()
    positions.apply(events)
    return positions.snapshot()


def same(loaded: dict[str, Position], want: dict[str, Position]) -> None:
    """Equal, in seq order; deletion times to the millisecond (as events carry them)."""
    assert list(loaded) == list(want)
    for story_id, position in want.items():
        got = loaded[story_id]
        assert (got.seq, got.epics) == (position.seq, position.epics), story_id
        if position.deleted_at is None:
            assert got.deleted_at is None
        else:
            assert got.deleted_at == pytest.approx(position.deleted_at, abs=0.001)


# -- every backend --------------------------------------------------------------------------


async def test_positions_are_written_with_the_events_and_loaded_again(backends: Backends) -> None:
    async with backends.opened() as (log, state):
        assert state.positions == {} and state.horizon == 0
        events = await append_all(log, drafts_of(HISTORY))
    want = expected(events)
    assert want["A"].deleted_at is not None and want["A"].epics == frozenset({"ui", "api"})
    assert want["C"] == Position(events[-1].seq, frozenset({"ui"}))  # re-created
    async with backends.opened() as (_, state):
        same(state.positions, want)
        assert state.horizon == 0 and state.seq == events[-1].seq


async def test_expired_tombstones_go_on_the_next_append(backends: Backends, clock: Clock) -> None:
    batches = drafts_of(HISTORY)
    async with backends.opened() as (log, _):
        events = await append_all(log, batches[:-1])  # A and C deleted
        deleted = {e.story_id: e.seq for e in events if e.type == "story.deleted"}
        assert set(deleted) == {"A", "C"}
        clock.offset = KEEP_DAYS * DAY_S + 60
        (created,) = await log.append(batches[-1], SOURCE)  # C comes back
    async with backends.opened() as (_, state):
        assert "A" not in state.positions
        assert state.positions["C"] == Position(created.seq, frozenset({"ui"}))
        assert state.horizon == max(deleted.values())
        assert state.positions["B"].epics == frozenset({"api", "ops"})


async def test_expire_tombstones_without_an_append(backends: Backends, clock: Clock) -> None:
    async with backends.opened() as (log, _):
        events = await append_all(log, drafts_of(HISTORY[:9]))
        assert await log.expire_tombstones() == 0
        clock.offset = (KEEP_DAYS + 0.5) * DAY_S
        horizon = await log.expire_tombstones()
    assert horizon == max(e.seq for e in events if e.type == "story.deleted")
    async with backends.opened() as (_, state):
        assert state.horizon == horizon
        assert all(p.deleted_at is None for p in state.positions.values())


async def test_fractional_keep_days(backends: Backends, clock: Clock) -> None:
    async with backends.opened() as (log, _):
        log.keep_days = 0.25
        await append_all(log, drafts_of(HISTORY[:9]))
        clock.offset = 0.2 * DAY_S
        assert await log.expire_tombstones() == 0
        clock.offset = 0.3 * DAY_S
        assert await log.expire_tombstones() > 0


# -- sqlite ----------------------------------------------------------------------------------


async def test_sqlite_a_failed_append_writes_no_positions(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    log = SqliteLog(path, buffer_size=10)
    await log.open()
    try:
        batches = drafts_of(HISTORY[:2])
        await log.append(batches[0], SOURCE)
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute("INSERT INTO events (seq, data) VALUES (3, '{}')")  # seq 3 is taken
        with pytest.raises(Exception, match="UNIQUE"):
            await log.append(batches[1], SOURCE)
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
            ids = {row[0] for row in conn.execute("SELECT story_id FROM positions")}
        assert ids == {"A", "B"}
    finally:
        await log.close()


def downgrade_to_v1(path: Path) -> None:
    """Make the file what storywatch wrote before positions existed."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("DROP TABLE positions")
        conn.execute("DELETE FROM meta WHERE key = 'horizon'")
        conn.execute("UPDATE meta SET value = 1 WHERE key = 'schema_version'")


async def test_sqlite_upgrades_a_version_1_file_in_place(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    log = SqliteLog(path, buffer_size=4)
    state = await log.open()
    events = await append_all(log, drafts_of(HISTORY))
    await log.close()
    downgrade_to_v1(path)

    log = SqliteLog(path, buffer_size=4)
    upgraded = await log.open()
    try:
        retained = events[-4:]  # what the replay window kept
        assert upgraded.epoch == state.epoch and upgraded.seq == events[-1].seq
        assert upgraded.horizon == retained[0].seq - 1
        same(upgraded.positions, expected(retained))
        more = await log.append(drafts_of([{"z.md": story("z.md", "Z")}])[0], SOURCE)
    finally:
        await log.close()
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        meta = dict(conn.execute("SELECT key, value FROM meta"))
    assert meta["schema_version"] == SCHEMA_VERSION == 2
    async with contextlib.AsyncExitStack():
        log = SqliteLog(path, buffer_size=4)
        reopened = await log.open()
        await log.close()
    assert reopened.positions["Z"].seq == more[0].seq
    assert reopened.horizon == retained[0].seq - 1


async def test_sqlite_upgrade_of_an_empty_version_1_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    log = SqliteLog(path, buffer_size=4)
    await log.open()
    await log.close()
    downgrade_to_v1(path)
    log = SqliteLog(path, buffer_size=4)
    state = await log.open()
    await log.close()
    assert (state.positions, state.horizon, state.seq) == ({}, 0, 0)


async def test_sqlite_a_bad_horizon_moves_the_file_aside(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    log = SqliteLog(path, buffer_size=4)
    await log.open()
    await log.close()
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("UPDATE meta SET value = 'soon' WHERE key = 'horizon'")
    log = SqliteLog(path, buffer_size=4)
    state = await log.open()
    await log.close()
    assert state.fresh and list(tmp_path.glob("state.db.corrupt-*"))


# -- redis -----------------------------------------------------------------------------------


@pytest.mark.redis
async def test_redis_positions_are_shared_by_two_servers(tmp_path: Path) -> None:
    shared = Backends("redis", tmp_path, time.time)
    try:
        async with shared.opened() as (writer, _), shared.opened() as (reader, _):
            events = await append_all(writer, drafts_of(HISTORY))
            state = await reader.load(0)
            same(state.positions, expected(events))
            assert (await reader.load(0, positions=False)).positions == {}
    finally:
        shared.stop()


@pytest.mark.redis
async def test_redis_a_stream_from_before_positions_starts_its_horizon_at_its_seq(
    tmp_path: Path,
) -> None:
    shared = Backends("redis", tmp_path, time.time)
    try:
        async with shared.opened() as (log, _):
            batches = drafts_of(HISTORY)
            events = await append_all(log, batches[:3])
            await log.redis.hdel(log.keys["meta"], "horizon")
            await log.redis.delete(log.keys["positions"])
            old = await log.load(10)
            assert old.horizon == events[-1].seq and old.positions == {}
            more = await log.append(batches[3], SOURCE)
            state = await log.load(10)
        assert state.horizon == events[-1].seq
        same(state.positions, expected(more))
    finally:
        shared.stop()
