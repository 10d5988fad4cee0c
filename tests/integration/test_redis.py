"""Redis Streams deployments against a real redis-server started by the fixtures."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import scaled
from tests.integration.daemon import Client, Daemon
from tests.integration.helpers import set_status, story_path
from tests.integration.redis_server import RedisServer

pytestmark = pytest.mark.redis


def redis_daemon(
    factory: type[Daemon], repo: Path, redis: RedisServer, command: str, *extra: str
) -> Daemon:
    return factory(
        repo,
        command=command,
        backend="redis",
        extra_args=["--redis-url", redis.url, *extra],
    )


async def wait_for_stories(client: Client, count: int) -> list[dict[str, Any]]:
    """Subscribe with a snapshot once the shared index holds ``count`` stories."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + scaled(15)
    n = 0
    while True:
        n += 1
        _, stories = await client.subscribe(f"probe{n}", snapshot=True)
        await client.send({"type": "unsubscribe", "sub": f"probe{n}"})
        if len(stories) == count or loop.time() > deadline:
            return stories
        await asyncio.sleep(0.1)


async def test_two_servers_and_one_watcher_give_identical_events(
    repo: Path, redis_server: RedisServer, daemon_factory: type[Daemon]
) -> None:
    one = redis_daemon(daemon_factory, repo, redis_server, "serve").start()
    two = redis_daemon(daemon_factory, repo, redis_server, "serve").start()
    redis_daemon(daemon_factory, repo, redis_server, "watch").start()
    a = await Client.connect(one.ws_url())
    b = await Client.connect(two.ws_url())
    assert len(await wait_for_stories(a, 50)) == 50
    assert len(await wait_for_stories(b, 50)) == 50
    await a.subscribe()
    await b.subscribe()
    set_status(story_path(repo, "UI-005"), "done")
    set_status(story_path(repo, "API-002"), "blocked")
    events_a = await a.events(2)
    events_b = await b.events(2)
    strip = [{k: v for k, v in e.items() if k != "subs"} for e in events_a]
    assert strip == [{k: v for k, v in e.items() if k != "subs"} for e in events_b]
    assert {e["story_id"] for e in events_a} == {"UI-005", "API-002"}
    assert events_a[1]["seq"] == events_a[0]["seq"] + 1
    # Replay comes from the stream, on any server.
    c = await Client.connect(two.ws_url())
    since = {"epoch": events_a[0]["epoch"], "seq": events_a[0]["seq"] - 1}
    subscribed, _ = await c.subscribe(since=since)
    assert subscribed["recovered"] is True and subscribed["replayed"] == 2
    replayed = await c.events(2)
    assert [e["seq"] for e in replayed] == [e["seq"] for e in events_a]
    assert all(e["replay"] for e in replayed)
    for client in (a, b, c):
        await client.close()


async def test_leader_failover_loses_and_duplicates_nothing(
    repo: Path, redis_server: RedisServer, daemon_factory: type[Daemon]
) -> None:
    first = redis_daemon(daemon_factory, repo, redis_server, "run").start()
    second = redis_daemon(daemon_factory, repo, redis_server, "run").start()
    watcher = await Client.connect(second.ws_url())
    assert len(await wait_for_stories(watcher, 50)) == 50
    await watcher.subscribe()
    set_status(story_path(repo, "UI-005"), "done")
    (before,) = await watcher.events(1)
    leader = first if any("lock acquired" in line for line in first.stderr_lines) else second
    other = second if leader is first else first
    if leader is second:
        await watcher.close()
        watcher = await Client.connect(other.ws_url())
        await watcher.subscribe(since={"epoch": before["epoch"], "seq": before["seq"]})
    leader.kill()
    # Changes while nobody holds the lock: the new leader diffs them against the index.
    set_status(story_path(repo, "API-002"), "blocked")
    set_status(story_path(repo, "UI-005"), "review")
    events = await watcher.events(2, timeout=25)
    assert {(e["story_id"], e["type"]) for e in events} == {
        ("API-002", "story.transitioned"),
        ("UI-005", "story.transitioned"),
    }
    assert [e["seq"] for e in events] == [before["seq"] + 1, before["seq"] + 2]
    assert all(e["source"].get("startup") for e in events)
    # And the new leader keeps watching.
    set_status(story_path(repo, "UI-005"), "done")
    (after,) = await watcher.events(1, timeout=10)
    assert after["seq"] == before["seq"] + 3 and after["from"] == "review"
    await watcher.no_event(0.5)
    await watcher.close()


async def test_redis_restarted_empty_sends_epoch_changed(
    repo: Path, redis_server: RedisServer, daemon_factory: type[Daemon]
) -> None:
    daemon = redis_daemon(daemon_factory, repo, redis_server, "run").start()
    client = await Client.connect(daemon.ws_url())
    assert len(await wait_for_stories(client, 50)) == 50
    subscribed, _ = await client.subscribe()
    old_epoch = subscribed["epoch"]
    redis_server.stop()
    health = daemon.wait_unhealthy()
    assert health["status"] == "degraded"
    set_status(story_path(repo, "UI-005"), "done")  # seen while Redis is down
    redis_server.start()
    resync, _ = await client.recv_until(lambda m: m["type"] == "resync", timeout=20)
    assert resync["reason"] == "epoch_changed" and resync["epoch"] != old_epoch
    assert resync["sub"] == "s1"
    daemon.wait_healthy()
    # The subscription goes on in the new epoch, and a new snapshot is complete.
    set_status(story_path(repo, "API-002"), "review")
    event, _ = await client.recv_until(
        lambda m: m.get("story_id") == "API-002" and m["type"].startswith("story."), 15
    )
    assert event["epoch"] == resync["epoch"]
    stories = await wait_for_stories(client, 50)
    status = {s["id"]: s["status"] for s in stories}
    assert status["UI-005"] == "done" and status["API-002"] == "review"
    await client.close()


async def test_redis_restarted_with_data_keeps_the_epoch(
    repo: Path, tmp_path: Path, daemon_factory: type[Daemon]
) -> None:
    redis = RedisServer(tmp_path / "redis-aof", persist=True).start()
    try:
        daemon = redis_daemon(daemon_factory, repo, redis, "run").start()
        client = await Client.connect(daemon.ws_url())
        assert len(await wait_for_stories(client, 50)) == 50
        await client.subscribe()
        set_status(story_path(repo, "UI-005"), "done")
        (first,) = await client.events(1)
        assert redis.proc is not None
        redis.proc.send_signal(signal.SIGTERM)  # a clean stop: the AOF is complete
        redis.proc.wait()
        daemon.wait_unhealthy()
        set_status(
            story_path(repo, "API-002"), "blocked"
        )  # kept by the watcher while Redis is down
        redis.start()
        (second,) = await client.events(1, timeout=20)
        assert second["story_id"] == "API-002"
        assert (second["epoch"], second["seq"]) == (first["epoch"], first["seq"] + 1)
        daemon.wait_healthy()
        await client.close()
    finally:
        redis.stop()
