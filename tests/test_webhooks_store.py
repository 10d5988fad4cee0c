"""storywatch.webhooks.store and .source: the hooks' durable state, and reading the log."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storywatch.events import Draft
from storywatch.log.sqlite import SqliteLog
from storywatch.webhooks import store as store_module
from storywatch.webhooks.store import HookState, HookStore, MemoryStore, SqliteStore, dead_letter


def letter(seq: int) -> dict[str, object]:
    return dead_letter(seq, "story.updated", f"S-{seq}", 3, {"time": "T", "message": "HTTP 500"})


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[HookStore]:
    made: HookStore = (
        MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "state.hooks.db")
    )
    await made.open()
    yield made
    await made.close()


async def test_a_state_round_trips(store: HookStore) -> None:
    assert await store.load(["h"]) == {}
    state = HookState(
        epoch="ep",
        cursor=7,
        delivered=5,
        failed=2,
        dead_letters=1,
        last_error={"time": "T", "message": "HTTP 500"},
        next_attempt="T2",
    )
    await store.save("h", state)
    assert await store.load(["h", "other"]) == {"h": state}
    state.cursor = 9
    await store.save("h", state, letter(8))
    assert (await store.load(["h"]))["h"].cursor == 9
    assert await store.dead_letters("h") == [letter(8)]
    assert await store.dead_letters("other") == []


async def test_dead_letters_are_kept_oldest_first_up_to_a_cap(
    store: HookStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "DEAD_LETTERS_KEPT", 3)
    state = HookState(epoch="ep", cursor=0)
    for seq in range(1, 6):
        state.cursor = seq
        await store.save("h", state, letter(seq))
        await store.save("g", state, letter(100 + seq))
    assert [d["seq"] for d in await store.dead_letters("h")] == [3, 4, 5]
    assert [d["seq"] for d in await store.dead_letters("g")] == [103, 104, 105]


async def test_the_sqlite_store_survives_a_reopen(tmp_path: Path) -> None:
    path = SqliteStore.beside(tmp_path / ".storywatch" / "state.db")
    assert path.name == "state.hooks.db"
    first = SqliteStore(path)
    await first.open()
    await first.save("h", HookState(epoch="ep", cursor=3, delivered=3), letter(2))
    await first.close()
    second = SqliteStore(path)
    await second.open()
    try:
        assert (await second.load(["h"]))["h"] == HookState(epoch="ep", cursor=3, delivered=3)
        assert await second.dead_letters("h") == [letter(2)]
    finally:
        await second.close()


def draft(n: int) -> Draft:
    story = {"id": f"S-{n}", "path": f"S-{n}.md", "title": f"story {n}"}
    return Draft(
        "story.created", f"S-{n}", f"S-{n}.md", story, {"title": {"old": None, "new": "x"}}
    )


async def test_the_sqlite_log_is_a_hook_source(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    log = SqliteLog(path, buffer_size=5)
    await log.open()
    try:
        appended = await log.append([draft(n) for n in range(1, 9)], {"kind": "fs"})
        got = await log.read_after(6, 100)
        assert [e.seq for e in got] == [7, 8]
        assert [e.data for e in got] == [e.data for e in appended[6:]]
        assert got[0].encoded() == appended[6].encoded()
        # Seqs 1-3 were trimmed (buffer_size 5): reading goes on from the oldest kept.
        assert [e.seq for e in await log.read_after(0, 2)] == [4, 5]
        assert await log.read_after(8, 10) == []
    finally:
        await log.close()
