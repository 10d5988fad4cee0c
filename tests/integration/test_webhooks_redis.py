"""Webhooks on Redis (SPEC §10): one deliverer, cursors and counters shared by every node.

The webhooks' own parts on a real redis-server, with the handover under the test's control:
a real ``RedisLog`` appends (the watcher), node A delivers, node B only answers
``/api/hooks``; then A stops (it lost the lock) with an attempt in flight and B takes over
from the durable cursor. The same with two real daemons, ``kill -9`` and SIGTERM:
test_webhooks_redis_daemons.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from storywatch.config import BackendSettings
from storywatch.errors import NotLeaderError
from storywatch.events import Draft
from storywatch.log.redis import RedisLog
from storywatch.webhooks.config import HookConfig, origin_of
from storywatch.webhooks.redis import RedisStore
from storywatch.webhooks.service import Webhooks
from storywatch.webhooks.store import HookState
from tests.conftest import scaled
from tests.integration.redis_server import RedisServer
from tests.receiver import Answer, Received, Receiver

pytestmark = [pytest.mark.integration, pytest.mark.redis]


def draft(n: int) -> Draft:
    story = {"id": f"S-{n}", "path": f"S-{n}.md", "title": f"story {n}", "epic": "ui"}
    return Draft("story.created", f"S-{n}", f"S-{n}.md", story, {})


class Node:
    """One server's webhooks: the Redis store, and delivery when it leads."""

    def __init__(self, settings: BackendSettings, hooks: list[HookConfig]) -> None:
        self.settings = settings
        self.webhooks = Webhooks(hooks, RedisStore(settings))

    async def lead(self, log: RedisLog) -> None:
        """The elected node delivers: the sender follows this node's own log."""
        state = await log.load(0)
        await self.webhooks.start(log, epoch=state.epoch, seq=state.seq)

    async def status(self, latest: int, epoch: str) -> dict[str, Any]:
        api = self.webhooks.api(lambda: latest, lambda: epoch)
        reply = await api.handle("GET", "/api/hooks")
        body: dict[str, Any] = json.loads(reply.body)
        return body["hooks"][0]


@pytest.fixture
async def gated() -> AsyncIterator[tuple[Receiver, asyncio.Event]]:
    """A receiver that answers while the gate is open, and holds requests while not."""
    gate = asyncio.Event()
    gate.set()

    async def respond(request: Received) -> Answer:
        await gate.wait()
        return Answer(200)

    receiver = await Receiver(respond).start()
    yield receiver, gate
    await receiver.close()


async def test_one_deliverer_and_a_failover_from_the_durable_cursor(
    redis_server: RedisServer, gated: tuple[Receiver, asyncio.Event]
) -> None:
    receiver, gate = gated
    settings = BackendSettings(
        kind="redis", path=None, redis_url=redis_server.url, stream="hk", buffer_size=100
    )
    hooks = [HookConfig(name="h", url=receiver.url(), origin=origin_of(receiver.url()))]
    watcher = RedisLog(settings)
    opened = await watcher.open()
    epoch = opened.epoch
    a, b = Node(settings, hooks), Node(settings, hooks)
    for node in (a, b):
        await node.webhooks.open()
    try:
        await watcher.append([draft(1), draft(2)], {"kind": "fs"})  # before any hook: skipped
        await a.lead(watcher)
        await watcher.append([draft(n) for n in range(3, 8)], {"kind": "fs"})
        got = await receiver.wait_for(5)
        assert [r.seq for r in got] == [3, 4, 5, 6, 7]
        assert [r.headers["webhook-id"] for r in got] == [f"{epoch}-{n}" for n in range(3, 8)]

        # Both nodes answer from Redis, and agree.
        async with asyncio.timeout(scaled(10)):
            while (await b.status(7, epoch))["cursor"] != 7:
                await asyncio.sleep(0.02)
        assert await a.status(7, epoch) == await b.status(7, epoch)
        assert (await b.status(7, epoch))["delivered"] == 5

        # A loses the lock with an attempt in flight; B leads and resumes from the cursor.
        gate.clear()
        await watcher.append([draft(8), draft(9)], {"kind": "fs"})
        await receiver.wait_for(6)
        await a.webhooks.stop()
        gate.set()
        await watcher.append([draft(10)], {"kind": "fs"})
        await b.lead(watcher)
        got = await receiver.wait_for(9)
        assert [r.seq for r in got][5:] == [8, 8, 9, 10]  # 8 again: it was in flight
        async with asyncio.timeout(scaled(10)):
            while (await a.status(10, epoch))["cursor"] != 10:
                await asyncio.sleep(0.02)
        assert (await a.status(10, epoch))["lag"] == 0
        assert len(receiver.requests) == 9  # only B delivered after the failover
    finally:
        for node in (a, b):
            await node.webhooks.close()
        await watcher.close()


async def test_only_the_holder_of_the_watcher_lock_writes_a_hooks_state(
    redis_server: RedisServer,
) -> None:
    """A deliverer that lost the lock while it was stalled cannot move a cursor back."""
    settings = BackendSettings("redis", None, redis_server.url, "fenced", 1000)
    leader = RedisLog(settings)
    await leader.open()
    assert await leader.acquire_lock()
    token = leader.lock_token
    held = RedisStore(settings, fence=lambda: token)
    stale = RedisStore(settings, fence=lambda: "a-token-that-lost-the-lock")
    unfenced = RedisStore(settings)
    try:
        await held.save("h", HookState(epoch="e", cursor=7))
        with pytest.raises(NotLeaderError):
            await stale.save("h", HookState(epoch="e", cursor=2), {"seq": 3})
        assert (await unfenced.load(["h"]))["h"].cursor == 7
        assert await unfenced.dead_letters("h") == []
        await leader.release_lock()
        with pytest.raises(NotLeaderError):  # nobody holds it now: the old holder neither
            await held.save("h", HookState(epoch="e", cursor=8))
    finally:
        for store in (held, stale, unfenced):
            await store.close()
        await leader.close()
