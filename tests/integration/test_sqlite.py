"""The sqlite backend under the real daemon: restarts, offline changes, crashes, bad state."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.integration.daemon import Client, Daemon
from tests.integration.helpers import set_status, story_path


def restart(daemon_factory: type[Daemon], repo: Path, port: int) -> Daemon:
    d = daemon_factory(repo, backend="sqlite", extra_args=["--port", str(port)]).start()
    d.wait_healthy()
    return d


async def test_restart_keeps_epoch_and_seq_and_resumes(
    repo: Path, daemon_factory: type[Daemon]
) -> None:
    first = daemon_factory(repo, backend="sqlite").start()
    first.wait_healthy()
    client = await Client.connect(first.ws_url())
    await client.subscribe()
    set_status(story_path(repo, "UI-005"), "review")
    (event,) = await client.events(1)
    epoch, seq = event["epoch"], event["seq"]
    await client.close()
    assert first.stop() == 0

    second = restart(daemon_factory, repo, first.port)
    client = await Client.connect(second.ws_url())
    assert client.welcome["epoch"] == epoch
    assert client.welcome["seq"] == seq
    # A client that missed nothing resumes with nothing to replay.
    subscribed, _ = await client.subscribe(since={"epoch": epoch, "seq": seq})
    assert subscribed["recovered"] is True and subscribed["replayed"] == 0
    set_status(story_path(repo, "UI-005"), "done")
    (event,) = await client.events(1)
    assert (event["seq"], event["epoch"]) == (seq + 1, epoch)
    await client.close()


async def test_offline_changes_are_emitted_at_startup(
    repo: Path, daemon_factory: type[Daemon]
) -> None:
    first = daemon_factory(repo, backend="sqlite").start()
    first.wait_healthy()
    client = await Client.connect(first.ws_url())
    await client.subscribe()
    set_status(story_path(repo, "API-002"), "review")
    (seen,) = await client.events(1)
    await client.close()
    first.stop()

    # While the daemon is down: a transition, an edit, a rename, a delete and a new story.
    set_status(story_path(repo, "UI-005"), "done")
    api = story_path(repo, "API-002")
    api.write_text(api.read_text() + "\nMore notes.\n")
    infra = story_path(repo, "INF-014")
    infra.rename(infra.with_name("INF-014-renamed.md"))
    story_path(repo, "SEC-001").unlink()
    (repo / "ui" / "UI-099-new.md").write_text("---\nid: UI-099\ntitle: New\nstatus: draft\n---\n")

    second = restart(daemon_factory, repo, first.port)
    client = await Client.connect(second.ws_url())
    subscribed, _ = await client.subscribe(since={"epoch": seen["epoch"], "seq": seen["seq"]})
    assert subscribed["recovered"] is True
    events = await client.events(subscribed["replayed"])
    kinds = {e["story_id"]: e["type"] for e in events}
    assert kinds == {
        "UI-005": "story.transitioned",
        "API-002": "story.updated",
        "INF-014": "story.moved",
        "SEC-001": "story.deleted",
        "UI-099": "story.created",
    }
    assert all(e["source"]["startup"] is True and e["source"]["kind"] == "fs" for e in events)
    assert [e["seq"] for e in events] == list(range(seen["seq"] + 1, seen["seq"] + 6))
    assert all(e.get("replay") is True for e in events)
    await client.no_event(0.3)
    await client.close()


@pytest.mark.parametrize("round_", range(4))
async def test_sigkill_during_a_burst_loses_and_duplicates_nothing(
    repo: Path, daemon_factory: type[Daemon], round_: int
) -> None:
    """Kill -9 mid-burst, restart, resume: every transition of the final files exactly once."""
    daemon = daemon_factory(repo, backend="sqlite").start()
    daemon.wait_healthy()
    client = await Client.connect(daemon.ws_url())
    subscribed, snapshot = await client.subscribe(snapshot=True)
    status = {s["id"]: s["status"] for s in snapshot}
    cursor = {"epoch": subscribed["epoch"], "seq": subscribed["seq"]}
    received: list[dict[str, Any]] = []

    async def reader() -> None:
        while True:
            message, _ = await client.recv_until(lambda m: m["type"].startswith("story."), 60)
            received.append(message)

    reading = asyncio.create_task(reader())
    rng = random.Random(round_)
    paths = {sid: story_path(repo, sid) for sid in status}
    ids = sorted(paths)
    cycle = ["draft", "ready", "in-progress", "review", "done"]
    kill_after = rng.uniform(0.05, 0.6)
    final: dict[str, str] = {}
    start = asyncio.get_running_loop().time()
    n = 0
    while asyncio.get_running_loop().time() - start < kill_after + 0.3:
        sid = rng.choice(ids)
        new = cycle[(n + len(sid)) % len(cycle)]
        set_status(paths[sid], new)
        final[sid] = new
        n += 1
        if (
            daemon.proc
            and daemon.proc.poll() is None
            and (asyncio.get_running_loop().time() - start > kill_after)
        ):
            daemon.kill()
        await asyncio.sleep(rng.uniform(0.005, 0.03))
    daemon.kill()
    reading.cancel()
    await client.ws.close()

    second = restart(daemon_factory, repo, daemon.port)
    last = received[-1] if received else None
    since = {"epoch": last["epoch"], "seq": last["seq"]} if last else cursor
    client = await Client.connect(second.ws_url())
    subscribed, _ = await client.subscribe(since=since)
    assert subscribed["recovered"] is True
    received += await client.events(subscribed["replayed"], timeout=20)
    await client.no_event(0.5)
    seqs = [e["seq"] for e in received]
    assert seqs == list(range(cursor["seq"] + 1, cursor["seq"] + 1 + len(seqs))), "gap or dup"
    assert len({e["epoch"] for e in received}) <= 1
    for event in received:
        if event["type"] == "story.transitioned":
            assert status[event["story_id"]] == event["from"]
            status[event["story_id"]] = event["to"]
    for sid, expected in final.items():
        assert status[sid] == expected, sid
    await client.close()


async def test_corrupted_state_starts_fresh_with_a_new_epoch(
    repo: Path, daemon_factory: type[Daemon]
) -> None:
    first = daemon_factory(repo, backend="sqlite").start()
    health = first.wait_healthy()
    first.stop()
    state = repo / ".storywatch" / "state.db"
    state.write_bytes(b"this is not a database" * 100)
    second = restart(daemon_factory, repo, first.port)
    again = second.wait_healthy()
    assert again["epoch"] != health["epoch"]
    assert again["stories"] == 50
    assert list((repo / ".storywatch").glob("state.db.corrupt-*"))
    warnings = [line for line in second.stderr_lines if "state.db" in line]
    assert len(warnings) >= 1


async def test_newer_schema_exits_2_with_the_reason(
    repo: Path, daemon_factory: type[Daemon]
) -> None:
    first = daemon_factory(repo, backend="sqlite").start()
    first.wait_healthy()
    first.stop()
    state = repo / ".storywatch" / "state.db"
    with sqlite3.connect(state) as db:
        db.execute("UPDATE meta SET value = 999 WHERE key = 'schema_version'")
    second = daemon_factory(repo, backend="sqlite")
    with pytest.raises(RuntimeError):
        second.start(timeout=10)
    assert second.proc is not None and second.proc.wait(10) == 2
    assert any("newer" in line for line in second.stderr_lines)
