"""Webhooks on Redis with the real daemon (SPEC §10): two ``run --backend redis`` processes
on one real redis-server and one local receiver. Exactly one (the elected watcher) delivers;
``kill -9`` it and the other takes the watcher lock and continues from the durable cursor —
at least once, nothing skipped, in order — and every node's ``GET /api/hooks`` agrees; a
SIGTERM hands over the same way, without waiting for the lock to expire.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import scaled
from tests.integration.daemon import Daemon
from tests.integration.redis_server import RedisServer
from tests.integration.test_webhooks import (
    SECRET,
    api,
    assert_signed,
    hook,
    set_fields,
    start,
    write_story,
)
from tests.receiver import Answer, Received, Receiver

pytestmark = [pytest.mark.integration, pytest.mark.redis]


@pytest.fixture
async def gated() -> AsyncIterator[tuple[Receiver, asyncio.Event]]:
    """A receiver that answers while the gate is open and holds requests while it is not."""
    gate = asyncio.Event()
    gate.set()

    async def respond(request: Received) -> Answer:
        await gate.wait()
        return Answer(200)

    receiver = await Receiver(respond).start()
    yield receiver, gate
    await receiver.close()


def leads(daemon: Daemon) -> bool:
    return any("watcher lock acquired" in line for line in daemon.stderr_lines)


async def hooks_of(daemon: Daemon) -> list[dict[str, Any]]:
    status, body = await api(daemon, "GET", "/api/hooks")
    assert status == 200, body
    hooks: list[dict[str, Any]] = body["hooks"]
    return hooks


async def until(check: Callable[[], Any], timeout: float = 30) -> None:
    """Poll (the daemons have no push for their hooks' state) until ``check()`` holds."""
    async with asyncio.timeout(scaled(timeout)):
        while not await check():
            await asyncio.sleep(0.05)


async def test_one_deliverer_and_kill_9_failover_from_the_durable_cursor(
    tmp_path: Path,
    redis_server: RedisServer,
    daemon_factory: type[Daemon],
    gated: tuple[Receiver, asyncio.Event],
) -> None:
    receiver, gate = gated
    repo = tmp_path / "stories"
    repo.mkdir()
    write_story(repo, "R-0", epic="ui", status="draft")
    config = {"webhooks": [hook("shared", receiver.url(), secret=SECRET)]}

    def node() -> Daemon:
        return daemon_factory(
            repo,
            backend="redis",
            config=config,
            extra_args=["--redis-url", redis_server.url],
        )

    a = await start(node())
    b = await start(node())
    assert leads(a) != leads(b), "exactly one process holds the watcher lock"
    leader, other = (a, b) if leads(a) else (b, a)

    # Exactly one delivers: five changes, five requests, each once, in seq order.
    for n in range(1, 6):
        write_story(repo, f"R-{n}", epic="ui")
    got = await receiver.wait_for(5)
    epoch = got[0].json()["epoch"]
    first = got[0].seq
    assert first is not None
    assert [r.seq for r in got] == list(range(first, first + 5))
    assert [r.json()["story_id"] for r in got] == [f"R-{n}" for n in range(1, 6)]
    last = first + 4

    async def both_done() -> bool:
        states = [await hooks_of(d) for d in (leader, other)]
        return all(s[0]["cursor"] == last and s[0]["lag"] == 0 for s in states)

    await until(both_done)
    assert await hooks_of(leader) == await hooks_of(other)  # one store: both agree
    assert len(receiver.requests) == 5  # nobody sent anything twice
    assert (await hooks_of(other))[0]["delivered"] == 5

    # kill -9 the leader with an attempt in flight and two more events behind it.
    gate.clear()
    set_fields(repo / "R-1.md", status="review")
    await receiver.wait_for(6)
    set_fields(repo / "R-2.md", status="review")
    set_fields(repo / "R-3.md", status="review")

    async def lag_is_3() -> bool:
        return bool((await hooks_of(other))[0]["lag"] == 3)

    await until(lag_is_3)
    await asyncio.to_thread(leader.kill)
    gate.set()
    # Changed while nobody holds the lock: the next leader diffs it at takeover.
    set_fields(repo / "R-4.md", status="done")

    # The other node takes the lock (within the TTL) and goes on from the durable cursor:
    # the event in flight again (same webhook-id), then the rest, in order, none skipped.
    got = await receiver.wait_for(10, timeout=40)
    assert leads(other)
    assert [r.seq for r in got[5:]] == [last + 1, last + 1, last + 2, last + 3, last + 4]
    assert got[5].headers["webhook-id"] == got[6].headers["webhook-id"] == f"{epoch}-{last + 1}"
    assert [r.json()["story_id"] for r in got[6:]] == ["R-1", "R-2", "R-3", "R-4"]
    for request in got:
        assert_signed(request)

    # A node that joins later agrees with the deliverer, from the same store.
    rejoined = await start(node())
    assert not leads(rejoined)

    async def agreed() -> bool:
        states = [await hooks_of(d) for d in (other, rejoined)]
        return states[0] == states[1] and states[0][0]["cursor"] == last + 4

    await until(agreed)
    (state,) = await hooks_of(rejoined)
    assert (state["lag"], state["delivered"], state["dead_letters"]) == (0, 9, 0)
    write_story(repo, "R-9", epic="ui")
    got = await receiver.wait_for(11)
    assert got[-1].seq == last + 5 and len(receiver.requests) == 11

    # SIGTERM the deliverer with an attempt in flight: it lets the lock go at once, and the
    # node that joined goes on from the durable cursor.
    gate.clear()
    set_fields(repo / "R-5.md", status="review")
    await receiver.wait_for(12)
    assert await asyncio.to_thread(other.stop) == 0
    gate.set()
    set_fields(repo / "R-0.md", status="review")
    got = await receiver.wait_for(14)
    assert leads(rejoined)
    assert [r.seq for r in got[11:]] == [last + 6, last + 6, last + 7]
    assert [r.json()["story_id"] for r in got[12:]] == ["R-5", "R-0"]
