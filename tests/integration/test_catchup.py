"""Catch-up at any distance (SPEC §9) against the real daemon, on every backend.

A client subscribes, goes away, and comes back with ``since`` long after the replay buffer
(``backend.buffer_size: 5``) has moved on, while an observer stayed connected the whole
time with the same token and filter. Between them: edits, status changes, stories moving
in and out of the ``integration`` epic, deletes, creates, a create-and-delete, a broken
file. The client that came back must hold exactly what the observer holds (and what a
fresh snapshot holds), with a scoped token too; on sqlite across a restart (positions are
durable); on Redis from another server (positions are shared). Then the HTTP pages.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from storywatch.filters import Filter
from tests.integration.daemon import Client, Daemon
from tests.integration.helpers import edit, http_get, set_status, story_path
from tests.integration.redis_server import RedisServer

pytestmark = pytest.mark.integration

SMALL = {"backend": {"buffer_size": 5}}
BROKEN = "---\nid: INT-006\ntitle: [unclosed\n---\nbody\n"
NEW_STORY = "---\nid: {id}\ntitle: New {id}\nepic: integration\nstatus: in-progress\n---\n"
CASES = [
    ("tok-reader", {"statuses": ["in-progress", "review"]}),
    ("tok-integration", {}),
    ("tok-integration", {"statuses": ["in-progress", "review", "blocked"]}),
]


class Holder:
    """What a client holds: stories by id, applied as docs/protocol.md says."""

    def __init__(self, stories: list[dict[str, Any]]) -> None:
        self.held = {s["id"]: s for s in stories}
        self.seq = 0

    def apply(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "catchup":
            for story in message["stories"]:
                self.held[story["id"]] = story
            for story_id in message["removed"]:
                self.held.pop(story_id, None)
        elif kind.startswith("story."):
            assert message["seq"] > self.seq, "in seq order, no duplicate"
            self.seq = message["seq"]
            if kind == "story.deleted":
                self.held.pop(message["story_id"], None)
            elif kind != "story.invalid":
                self.held[message["story_id"]] = message["story"]

    def state(self, flt: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """What it shows: the stories it holds that match its filter now."""
        matches = Filter.parse(flt).matches_story
        return {k: v for k, v in sorted(self.held.items()) if matches(v)}


async def barrier(client: Client, holder: Holder) -> None:
    """Apply everything the server queued for ``client`` before now (a pong is queued
    behind the events already fanned out to it)."""
    await client.send({"type": "ping", "nonce": "barrier"})
    _, before = await client.recv_until(lambda m: m.get("type") == "pong")
    for message in before:
        holder.apply(message)


async def catch_up(
    client: Client, sub: str, flt: dict[str, Any], epoch: str, seq: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Subscribe with ``since``; ``subscribed`` and the catch-up messages (if any)."""
    since = {"epoch": epoch, "seq": seq}
    await client.send({"type": "subscribe", "sub": sub, "filter": flt, "since": since})
    subscribed, _ = await client.recv_until(lambda m: m.get("type") == "subscribed")
    chunks: list[dict[str, Any]] = []
    while subscribed["compacted"] and not (chunks and chunks[-1]["done"]):
        chunk, _ = await client.recv_until(lambda m: m.get("type") == "catchup")
        chunks.append(chunk)
    return subscribed, chunks


async def snapshot_state(client: Client, sub: str, flt: dict[str, Any]) -> dict[str, Any]:
    _, stories = await client.subscribe(sub, flt, snapshot=True)
    await client.send({"type": "unsubscribe", "sub": sub})
    return {s["id"]: s for s in sorted(stories, key=lambda s: s["id"])}


class Changes:
    """File changes, each awaited as its event on an unfiltered watcher (the sequencer)."""

    def __init__(self, repo: Path, watcher: Client) -> None:
        self.repo = repo
        self.watcher = watcher
        self.last_seq = 0

    async def do(self, change: Callable[[], object], story_id: str, kind: str) -> None:
        change()
        message, _ = await self.watcher.recv_until(
            lambda m: m.get("story_id") == story_id and m.get("type") == kind, timeout=15
        )
        self.last_seq = message["seq"]

    async def while_away(self) -> None:
        """More events than the buffer holds, of every kind the catch-up must fold."""
        repo = self.repo
        int6, int8 = story_path(repo, "INT-006"), story_path(repo, "INT-008")
        int1, int4 = story_path(repo, "INT-001"), story_path(repo, "INT-004")
        ui3, ui5 = story_path(repo, "UI-003"), story_path(repo, "UI-005")
        await self.do(lambda: set_status(int6, "review"), "INT-006", "story.transitioned")
        await self.do(lambda: set_status(int8, "done"), "INT-008", "story.transitioned")
        await self.do(
            lambda: edit(int1, "epic: integration", "epic: ui"), "INT-001", "story.updated"
        )
        await self.do(lambda: edit(ui3, "epic: ui", "epic: integration"), "UI-003", "story.updated")
        await self.do(int4.unlink, "INT-004", "story.deleted")
        new = repo / "integration" / "INT-100.md"
        await self.do(
            lambda: new.write_text(NEW_STORY.format(id="INT-100")), "INT-100", "story.created"
        )
        gone = repo / "integration" / "INT-101.md"
        await self.do(
            lambda: gone.write_text(NEW_STORY.format(id="INT-101")), "INT-101", "story.created"
        )
        await self.do(gone.unlink, "INT-101", "story.deleted")
        await self.do(lambda: set_status(ui5, "in-progress"), "UI-005", "story.transitioned")
        await self.do(lambda: int6.write_text(BROKEN), "INT-006", "story.invalid")
        for status in ("blocked", "in-progress", "review"):
            await self.do(partial(set_status, int8, status), "INT-008", "story.transitioned")

    async def more_while_away(self) -> None:
        int8 = story_path(self.repo, "INT-008")
        for status in ("done", "blocked", "in-progress", "review", "ready", "review"):
            await self.do(partial(set_status, int8, status), "INT-008", "story.transitioned")
        new = self.repo / "integration" / "INT-100.md"
        await self.do(new.unlink, "INT-100", "story.deleted")
        await self.do(
            lambda: new.write_text(NEW_STORY.format(id="INT-100")), "INT-100", "story.created"
        )

    async def live(self) -> None:
        """One more change every case sees: INT-100 between in-progress and review."""
        path = self.repo / "integration" / "INT-100.md"
        status = "review" if "status: in-progress" in path.read_text() else "in-progress"
        await self.do(lambda: set_status(path, status), "INT-100", "story.transitioned")


@contextlib.asynccontextmanager
async def connected(daemon: Daemon, token: str = "tok-reader") -> AsyncIterator[Client]:
    client = await Client.connect(daemon.ws_url(token))
    try:
        yield client
    finally:
        await client.close()


async def away_and_back(
    daemon: Daemon,
    repo: Path,
    meanwhile: Callable[[Changes], Awaitable[None]],
    back_to: Callable[[], Daemon] | None = None,
) -> None:
    """For each case: an observer stays, a client leaves, changes happen, the client comes
    back (to ``back_to()``, default the same daemon) and must hold what the observer holds
    — and what a fresh snapshot holds."""
    async with contextlib.AsyncExitStack() as stack:
        watcher = await stack.enter_async_context(connected(daemon))
        await watcher.subscribe("all", {})
        observers: list[tuple[Client, Holder]] = []
        left: list[tuple[str, int, list[dict[str, Any]]]] = []
        for n, (token, flt) in enumerate(CASES):
            observer = await stack.enter_async_context(connected(daemon, token))
            _, stories = await observer.subscribe(f"o{n}", flt, snapshot=True)
            observers.append((observer, Holder(stories)))
            async with connected(daemon, token) as leaving:
                subscribed, stories = await leaving.subscribe(f"a{n}", flt, snapshot=True)
                left.append((subscribed["epoch"], subscribed["seq"], stories))
        changes = Changes(repo, watcher)
        await meanwhile(changes)
        target = back_to() if back_to is not None else daemon
        for n, ((token, flt), (epoch, seq, held)) in enumerate(zip(CASES, left, strict=True)):
            async with connected(target, token) as back:
                subscribed, chunks = await catch_up(back, f"b{n}", flt, epoch, seq)
                assert (subscribed["recovered"], subscribed["compacted"]) == (True, True)
                assert subscribed["replayed"] == 0 and subscribed["seq"] >= changes.last_seq
                assert [c["done"] for c in chunks] == [False] * (len(chunks) - 1) + [True]
                assert {(c["epoch"], c["seq"], c["since"]) for c in chunks} == {
                    (epoch, subscribed["seq"], seq)
                }
                holder = Holder(held)
                for chunk in chunks:
                    holder.apply(chunk)
                assert holder.state(flt) == await snapshot_state(back, f"f{n}", flt), token
                if back_to is None:
                    observer, seen = observers[n]
                    await barrier(observer, seen)
                    assert holder.state(flt) == seen.state(flt), (token, flt)
                told = {s["id"] for c in chunks for s in c["stories"]}
                broken = [p["story_id"] for c in chunks for p in c["invalid"]]
                assert broken == (["INT-006"] if "INT-006" in told else [])
                if token == "tok-integration":  # a story it could never see is never named
                    assert "UI-005" not in told | {i for c in chunks for i in c["removed"]}
                # ...then live, after the catch-up's seq, with no gap.
                await changes.live()
                live, _ = await back.recv_until(lambda m: m.get("story_id") == "INT-100")
                assert live["seq"] == changes.last_seq > subscribed["seq"]
                assert live["subs"] == [f"b{n}"] and "replay" not in live
        # A cursor beyond the latest seq, or of another epoch, is not recovered.
        async with connected(target) as other:
            for since in ({"epoch": "nope", "seq": 1}, {"epoch": left[0][0], "seq": 10**6}):
                await other.send({"type": "subscribe", "sub": str(since), "since": since})
                answer, _ = await other.recv_until(lambda m: m.get("type") == "subscribed")
                assert (answer["recovered"], answer["compacted"]) == (False, False)


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_a_client_away_past_the_buffer_is_caught_up_exactly(
    backend: str, repo: Path, daemon_factory: type[Daemon]
) -> None:
    daemon = daemon_factory(repo, backend=backend, config=SMALL).start()
    daemon.wait_healthy()
    await away_and_back(daemon, repo, Changes.while_away)


@pytest.mark.redis
async def test_on_redis_another_server_catches_up_from_the_shared_positions(
    repo: Path, daemon_factory: type[Daemon], redis_server: RedisServer
) -> None:
    args = ["--redis-url", redis_server.url]
    daemon = daemon_factory(repo, backend="redis", config=SMALL, extra_args=args).start()
    daemon.wait_healthy()
    later: list[Daemon] = []

    def second_server() -> Daemon:
        if not later:  # started after the changes: it knows them only from Redis
            server = daemon_factory(
                repo, command="serve", backend="redis", config=SMALL, extra_args=args
            ).start()
            server.wait_healthy()
            later.append(server)
        return later[0]

    await away_and_back(daemon, repo, Changes.while_away)
    await away_and_back(daemon, repo, Changes.more_while_away, back_to=second_server)


async def test_positions_survive_a_restart_on_sqlite(
    repo: Path, daemon_factory: type[Daemon]
) -> None:
    daemon = daemon_factory(repo, backend="sqlite", config=SMALL).start()
    daemon.wait_healthy()
    flt = {"statuses": ["in-progress", "review"]}
    async with connected(daemon, "tok-integration") as client:
        subscribed, stories = await client.subscribe("s", flt, snapshot=True)
        epoch, cursor = subscribed["epoch"], subscribed["seq"]
        watcher = await Client.connect(daemon.ws_url())
        await watcher.subscribe("all", {})
        changes = Changes(repo, watcher)
        await changes.while_away()
        await watcher.close()
    assert daemon.stop() == 0
    # Changed while nobody watched: emitted at the next start, after the earlier ones.
    set_status(repo / "integration" / "INT-100.md", "review")
    edit(story_path(repo, "UI-003"), "epic: integration", "epic: ui")
    again = daemon_factory(repo, backend="sqlite", config=SMALL).start()
    health = again.wait_healthy()
    assert health["epoch"] == epoch and health["seq"] == changes.last_seq + 2
    async with connected(again, "tok-integration") as back:
        subscribed, chunks = await catch_up(back, "s", flt, epoch, cursor)
        assert (subscribed["recovered"], subscribed["compacted"]) == (True, True)
        holder = Holder(stories)
        for chunk in chunks:
            holder.apply(chunk)
        assert "UI-003" in {i for c in chunks for i in c["removed"]}
        assert holder.state(flt) == await snapshot_state(back, "f", flt)


async def test_a_catch_up_of_1203_stories_comes_in_chunks_of_500(
    repo: Path, daemon_factory: type[Daemon]
) -> None:
    daemon = daemon_factory(repo, config=SMALL).start()
    daemon.wait_healthy()
    async with connected(daemon, "tok-admin") as admin:
        subscribed, _ = await admin.subscribe("s", {}, snapshot=True)
        epoch, cursor = subscribed["epoch"], subscribed["seq"]
        for start in range(0, 1203, 401):
            items = [
                {"op": "upsert", "story": {"id": f"P{n:04}", "status": "new"}}
                for n in range(start, min(start + 401, 1203))
            ]
            await admin.send({"type": "publish", "ref": f"r{start}", "items": items})
            done, _ = await admin.recv_until(lambda m: m.get("type") == "published")
            assert done["count"] == len(items)
    async with connected(daemon) as back:
        subscribed, chunks = await catch_up(back, "s", {}, epoch, cursor)
    assert subscribed["compacted"] is True
    assert [len(c["stories"]) + len(c["removed"]) for c in chunks] == [500, 500, 203]
    assert [s["id"] for c in chunks for s in c["stories"]] == [f"P{n:04}" for n in range(1203)]


# -- HTTP: GET /api/events behind the buffer (SPEC §9) --------------------------------------


async def test_http_pages_a_catch_up_and_continues_it_with_next(
    repo: Path, daemon_factory: type[Daemon]
) -> None:
    """1 000 entries a page; ``next`` (``compacted=1``) goes on even where ``since`` came
    within the buffer — where a plain replay would leave INT-008 held as in ``review``."""
    daemon = daemon_factory(repo, config=SMALL).start()
    health = daemon.wait_healthy()
    epoch, cursor = health["epoch"], health["seq"]
    flt = "statuses=review"
    _, first = http_get(daemon, f"/api/events?since={cursor}&{flt}&wait=0")
    assert first["recovered"] is True and "compacted" not in first
    held = {s["id"]: s for s in http_get(daemon, f"/api/stories?{flt}")[1]["stories"]}
    assert "INT-008" in held
    async with connected(daemon, "tok-admin") as admin:

        async def publish(items: list[dict[str, Any]]) -> None:
            await admin.send({"type": "publish", "ref": "r", "items": items})
            await admin.recv_until(lambda m: m.get("type") == "published")

        # INT-008 leaves the filter, 1 000 other stories change, then INT-008 changes again
        # (in no way the filter may see): it is the 1 001st entry, past the first page.
        int8 = {"id": "INT-008", "epic": "integration"}
        await publish([{"op": "upsert", "story": {**int8, "status": "done"}}])
        for start in range(0, 1000, 500):
            await publish(
                [
                    {"op": "upsert", "story": {"id": f"P{n:04}", "status": "review"}}
                    for n in range(start, start + 500)
                ]
            )
        await publish([{"op": "upsert", "story": {**int8, "status": "blocked"}}])
    status, page = http_get(daemon, f"/api/events?epoch={epoch}&since={cursor}&{flt}")
    assert status == 200 and page["compacted"] is True and page["more"] is True
    assert page["events"] == [] and page["recovered"] is True
    assert len(page["stories"]) + len(page["removed"]) == 1000
    assert "INT-008" not in page["removed"]
    assert page["next"] == (
        f"/api/events?epoch={epoch}&since={page['seq']}&compacted=1&statuses=review"
    )
    # The page ended inside the replay buffer: a plain replay from there misses INT-008.
    _, plain = http_get(daemon, f"/api/events?epoch={epoch}&since={page['seq']}&{flt}&wait=0")
    assert "compacted" not in plain and plain["events"] == []
    for entry in page["stories"]:
        held[entry["id"]] = entry
    _, rest = http_get(daemon, page["next"])
    assert rest["compacted"] is True and rest["more"] is False and "next" not in rest
    assert rest["removed"] == ["INT-008"] and rest["seq"] == daemon.wait_healthy()["seq"]
    for story_id in rest["removed"]:
        held.pop(story_id, None)
    _, now = http_get(daemon, f"/api/stories?{flt}")
    assert held == {s["id"]: s for s in now["stories"]}
    # Beyond the latest seq or of another epoch: not recovered, as before.
    for query in (f"epoch={epoch}&since=999999", f"epoch=other&since={cursor}&compacted=1"):
        _, lost = http_get(daemon, f"/api/events?{query}&wait=0")
        assert (lost["recovered"], lost["events"]) == (False, [])


async def test_http_catch_up_with_a_scoped_token(repo: Path, daemon_factory: type[Daemon]) -> None:
    daemon = daemon_factory(repo, config=SMALL).start()
    health = daemon.wait_healthy()
    async with connected(daemon) as watcher:
        await watcher.subscribe("all", {})
        await Changes(repo, watcher).while_away()
    status, page = http_get(
        daemon, f"/api/events?since={health['seq']}&epoch={health['epoch']}", "tok-integration"
    )
    assert status == 200 and page["compacted"] is True and page["more"] is False
    assert set(page["removed"]) == {"INT-001", "INT-004", "INT-101"}
    assert "UI-005" not in {s["id"] for s in page["stories"]}
    assert [p["story_id"] for p in page["invalid"]] == ["INT-006"]


async def test_a_catch_up_request_drops_expired_tombstones_from_the_log(
    repo: Path, daemon_factory: type[Daemon], tmp_path: Path
) -> None:
    """``keep_days`` of about a second: once the tombstone is due, the next catch-up request
    (no append in between) refuses older cursors and drops it from the state file too."""
    state = tmp_path / "state.db"
    config = {"catchup": {"keep_days": 1e-5}, "backend": {"buffer_size": 2, "path": str(state)}}
    daemon = daemon_factory(repo, backend="sqlite", config=config).start()
    health = daemon.wait_healthy()
    epoch, cursor = health["epoch"], health["seq"]
    async with connected(daemon) as client:
        await client.subscribe("all", {})
        changes = Changes(repo, client)
        await changes.do(story_path(repo, "INT-004").unlink, "INT-004", "story.deleted")
        deleted = changes.last_seq
        ui5 = story_path(repo, "UI-005")
        for status in ("review", "done", "blocked"):
            await changes.do(partial(set_status, ui5, status), "UI-005", "story.transitioned")
        n = 0
        while True:  # until the tombstone is due (about a second after the delete)
            n += 1
            subscribed, _ = await catch_up(client, f"c{n}", {}, epoch, cursor)
            await client.send({"type": "unsubscribe", "sub": f"c{n}"})
            if not subscribed["recovered"]:
                break
            await asyncio.sleep(0.1)  # time must pass: a poll, within the inbound budget
    assert subscribed["compacted"] is False
    # Written by the request (in the background, right after), not by an append.
    for _ in range(100):
        if horizon_of(state) == deleted:
            break
        await asyncio.sleep(0.05)
    assert horizon_of(state) == deleted
    assert daemon.wait_healthy()["seq"] == changes.last_seq  # no append since
    async with connected(daemon) as client:
        subscribed, chunks = await catch_up(client, "after", {}, epoch, deleted)
        assert subscribed["compacted"] is True and chunks[-1]["removed"] == []


def horizon_of(state: Path) -> int:
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{state}?mode=ro", uri=True)) as db:
        (value,) = db.execute("SELECT value FROM meta WHERE key = 'horizon'").fetchone()
    return int(value)
