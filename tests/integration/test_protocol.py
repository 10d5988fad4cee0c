"""The WebSocket protocol of SPEC §4 against the real daemon: welcome, subscriptions,
filters, snapshots, replay with ``since``, every error code, limits, heartbeat, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import scaled
from tests.integration.daemon import Client, Daemon, copy_fixtures
from tests.integration.test_editors import (
    ISO_MS_Z,
    NEW_STORY,
    UI5,
    Clients,
    assert_consecutive,
    assert_event,
    edit,
    http_get,
)

pytestmark = pytest.mark.integration

ERROR_CODES = {
    "bad_request",
    "unknown_type",
    "invalid_filter",
    "forbidden",
    "rate_limited",
    "too_many_subscriptions",
    "duplicate_sub",
    "unknown_sub",
}


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    async with Clients() as pool:
        yield pool


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the tests that change no file (its seq stays 0)."""
    workdir = tmp_path_factory.mktemp("shared")
    daemon = Daemon(copy_fixtures(workdir / "stories"), workdir).start()
    daemon.wait_healthy()
    yield daemon
    daemon.stop()


async def next_error(client: Client) -> dict[str, Any]:
    message, _ = await client.recv_until(lambda m: m.get("type") == "error")
    assert message["code"] in ERROR_CODES, message
    assert isinstance(message["message"], str) and message["message"], message
    assert "ref" in message, message
    return message


async def still_open(client: Client, nonce: str = "alive") -> None:
    await client.send({"type": "ping", "nonce": nonce})
    pong, _ = await client.recv_until(lambda m: m.get("type") == "pong")
    assert pong["nonce"] == nonce


async def closed_with(client: Client, timeout: float = 5) -> int | None:
    with contextlib.suppress(ConnectionClosed, TimeoutError):
        while True:
            await client.recv(timeout)
    await asyncio.wait_for(client.ws.wait_closed(), scaled(timeout))
    code: int | None = client.ws.close_code
    return code


# -- welcome and subprotocol -----------------------------------------------------------


async def test_welcome(shared: Daemon, clients: Clients) -> None:
    client = await clients.open(shared)
    welcome = client.welcome
    assert set(welcome) >= {
        "type",
        "session",
        "server",
        "epoch",
        "seq",
        "heartbeat_s",
        "user",
        "scopes",
    }
    assert isinstance(welcome["session"], str) and welcome["session"]
    assert welcome["server"].startswith("storywatch/") and len(welcome["server"]) > 11
    health = shared.wait_healthy()
    assert welcome["epoch"] == health["epoch"] and isinstance(welcome["epoch"], str)
    assert welcome["seq"] == health["seq"] == 0
    assert welcome["heartbeat_s"] == 15
    assert welcome["user"] == "reader"
    assert welcome["scopes"] == ["read"]
    other = await clients.open(shared, "tok-admin")
    assert other.welcome["user"] == "admin"
    assert sorted(other.welcome["scopes"]) == ["admin", "publish", "read"]
    assert other.welcome["session"] != welcome["session"]


async def test_subprotocol_selected_when_offered(shared: Daemon, clients: Clients) -> None:
    client = await clients.open(shared)  # the harness offers storywatch.v1
    assert client.ws.subprotocol == "storywatch.v1"


async def test_no_subprotocol_offered_is_accepted(shared: Daemon) -> None:
    async with websockets.connect(shared.ws_url(), max_size=None) as ws:
        assert ws.subprotocol is None
        welcome = json.loads(await asyncio.wait_for(ws.recv(), scaled(5)))
        assert welcome["type"] == "welcome"


async def test_other_subprotocol_only_is_refused_400(shared: Daemon) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(shared.ws_url(), subprotocols=["other.v2"]):
            pass
    assert info.value.response.status_code == 400


# -- subscribe / unsubscribe ---------------------------------------------------------


async def test_subscribe_and_unsubscribe(daemon: Daemon, repo: Path, clients: Clients) -> None:
    client = await clients.open(daemon)
    await client.send({"type": "subscribe", "sub": "s1", "filter": {"epics": ["ui"]}})
    subscribed = await client.recv()
    assert subscribed == {
        "type": "subscribed",
        "sub": "s1",
        "filter": {"epics": ["ui"]},
        "epoch": client.welcome["epoch"],
        "seq": client.welcome["seq"],
        "recovered": None,
        "replayed": 0,
        "compacted": False,
    }
    edit(repo / UI5, "priority: low", "priority: high")
    (event,) = await client.events(1)
    assert event["subs"] == ["s1"]
    await client.send({"type": "unsubscribe", "sub": "s1"})
    assert await client.recv() == {"type": "unsubscribed", "sub": "s1"}
    edit(repo / UI5, "priority: high", "priority: low")
    await client.no_event()
    # the sub id may be reused after unsubscribed
    subscribed, _ = await client.subscribe("s1", {"stories": ["UI-005"]})
    assert subscribed["type"] == "subscribed" and subscribed["seq"] == event["seq"] + 1
    edit(repo / UI5, "priority: low", "priority: medium")
    (event,) = await client.events(1)
    assert event["subs"] == ["s1"] and event["seq"] == subscribed["seq"] + 1


async def test_event_sent_once_with_every_matching_sub(
    daemon: Daemon, repo: Path, clients: Clients
) -> None:
    client = await clients.open(daemon)
    for sub, flt in (
        ("by-epic", {"epics": ["ui"]}),
        ("by-status", {"statuses": ["ready"]}),
        ("other", {"epics": ["api"]}),
        ("all", {}),
    ):
        subscribed, _ = await client.subscribe(sub, flt)
        assert subscribed["type"] == "subscribed"
    edit(repo / UI5, "priority: low", "priority: high")
    (event,) = await client.events(1)
    assert sorted(event["subs"]) == ["all", "by-epic", "by-status"]
    await client.no_event()


# -- filters -------------------------------------------------------------------------

FILTER_CASES: list[tuple[dict[str, list[str]], list[str]]] = [
    ({"epics": ["ui"]}, ["E1", "E4", "E6"]),
    ({"epics": ["ui", "data"]}, ["E1", "E3", "E4", "E6"]),  # OR inside a key
    ({"statuses": ["ready"]}, ["E1", "E2", "E3"]),  # before or after
    ({"stories": ["UI-005", "SEC-004"]}, ["E1", "E5", "E6"]),
    ({"events": ["story.created", "story.deleted"]}, ["E4", "E5"]),
    ({"labels": ["docs", "csv"]}, ["E2", "E3"]),
    ({"owners": ["frontend-team"]}, ["E1", "E4", "E6"]),
    ({"owners": ["alice"]}, ["E4"]),  # assignees count as owners
    ({"epics": ["ui"], "statuses": ["ready"]}, ["E1"]),  # AND across keys
    ({"epics": ["ui"], "events": ["story.transitioned"]}, ["E1", "E6"]),
    ({"epics": ["api", "security"], "labels": ["secrets"]}, ["E5"]),
    ({"statuses": ["nope"]}, []),
    ({}, ["E1", "E2", "E3", "E4", "E5", "E6"]),
]


async def test_filters(daemon: Daemon, repo: Path, clients: Clients) -> None:
    watcher, _ = await clients.subscribed(daemon)
    filtered = []
    for n, (flt, expected) in enumerate(FILTER_CASES):
        client, subscribed = await clients.subscribed(daemon, filter=flt, sub=f"f{n}")
        assert subscribed["filter"] == {k: sorted(v) for k, v in flt.items()}
        filtered.append((client, flt, expected))
    new_story = NEW_STORY.replace(
        "owner: frontend-team", "owner: frontend-team\nassignees: [alice]"
    )
    steps = {
        # UI-005: ui, ready, no labels, frontend-team → in-progress
        "E1": lambda: edit(repo / UI5, "status: ready", "status: in-progress"),
        # API-004: api, ready, labels [api, openapi, docs]: an update
        "E2": lambda: edit(
            repo / "api/v1/API-004-publish-openapi-schema.md",
            "priority:",
            "reviewed: true\npriority:",
        ),
        # DATA-006: data, draft, labels [data, export, csv] → ready
        "E3": lambda: edit(
            repo / "data/DATA-006-export-board-to-csv.md", "status: draft", "status: ready"
        ),
        "E4": lambda: (repo / "ui" / "NEW-001.md").write_text(new_story),
        # SEC-004: security, draft, labels [security, secrets, redaction], deleted
        "E5": lambda: os.remove(repo / "security/SEC-004-secret-scanning-in-story-bodies.md"),
        # UI-005 in-progress → review: no longer matches statuses [ready]
        "E6": lambda: edit(repo / UI5, "status: in-progress", "status: review"),
    }
    seq_of: dict[str, int] = {}
    for name, step in steps.items():
        step()
        (event,) = await watcher.events(1)
        seq_of[name] = event["seq"]

    async def check(client: Client, flt: dict[str, Any], expected: list[str]) -> None:
        events = await client.events(len(expected))
        await client.no_event(0.3)
        got = [e["seq"] for e in events]
        assert got == [seq_of[name] for name in expected], (flt, got, seq_of)

    await asyncio.gather(*(check(c, f, e) for c, f, e in filtered))


async def test_filtered_snapshot_and_http_listing(shared: Daemon, clients: Clients) -> None:
    client = await clients.open(shared)
    _, stories = await client.subscribe(
        "s1", {"epics": ["ui"], "statuses": ["draft", "done"]}, snapshot=True
    )
    assert sorted(s["id"] for s in stories) == ["UI-001", "UI-004", "UI-007"]
    status, listing = http_get(shared, "/api/stories?epics=ui&statuses=draft&statuses=done")
    assert status == 200
    assert [s["id"] for s in listing["stories"]] == ["UI-001", "UI-004", "UI-007"]
    _, stories = await client.subscribe(
        "s2", {"owners": ["data-team"], "labels": ["sqlite"]}, snapshot=True
    )
    assert sorted(s["id"] for s in stories) == ["DATA-001", "DATA-007"]
    _subscribed, stories = await client.subscribe("s3", {"epics": ["none"]}, snapshot=True)
    assert stories == []


@pytest.mark.parametrize(
    "bad",
    [
        {"epic": ["ui"]},  # unknown key
        {"epics": "ui"},  # not a list
        {"statuses": [1, 2]},  # not strings
        {"events": ["story.exploded"]},  # unknown event type
        ["ui"],  # not an object
    ],
)
async def test_invalid_filter(bad: Any, shared: Daemon, clients: Clients) -> None:
    client = await clients.open(shared)
    await client.send({"type": "subscribe", "sub": "s1", "filter": bad})
    error = await next_error(client)
    assert error["code"] == "invalid_filter" and error["ref"] == "s1"
    # no subscription was made
    await client.send({"type": "unsubscribe", "sub": "s1"})
    error = await next_error(client)
    assert error["code"] == "unknown_sub" and error["ref"] == "s1"


# -- snapshot chunking -----------------------------------------------------------------


def add_generated_stories(repo: Path, count: int) -> None:
    folder = repo / "generated"
    folder.mkdir()
    for n in range(count):
        (folder / f"GEN-{n:04d}.md").write_text(
            f"---\nid: GEN-{n:04d}\ntitle: Generated story {n}\nepic: gen\n"
            f"status: {('draft', 'ready', 'done')[n % 3]}\nlabels: [gen]\n"
            f"created: 2025-09-{n % 28 + 1:02d}\n---\nBody of {n}.\n"
        )


async def test_snapshot_chunks(repo: Path, daemon_factory: type[Daemon], clients: Clients) -> None:
    add_generated_stories(repo, 1200)
    daemon = daemon_factory(repo).start()
    daemon.wait_healthy()
    assert daemon.wait_healthy()["stories"] == 1250
    client = await clients.open(daemon)
    await client.send({"type": "subscribe", "sub": "s1", "filter": {}, "snapshot": True})
    subscribed = await client.recv()
    assert subscribed["type"] == "subscribed"
    chunks = []
    while not chunks or not chunks[-1]["done"]:
        chunk = await client.recv()
        assert chunk["type"] == "snapshot", chunk  # nothing else between the chunks
        chunks.append(chunk)
    assert [len(c["stories"]) for c in chunks] == [500, 500, 250]
    assert [c["done"] for c in chunks] == [False, False, True]
    for chunk in chunks:
        assert chunk["sub"] == "s1"
        assert chunk["epoch"] == subscribed["epoch"] and chunk["seq"] == subscribed["seq"]
    ids = [s["id"] for c in chunks for s in c["stories"]]
    assert len(set(ids)) == 1250
    assert all("path" in s and "body" not in s for c in chunks for s in c["stories"])
    # a filtered snapshot is chunked on what matches
    _, stories = await client.subscribe(
        "s2", {"statuses": ["ready"], "epics": ["gen"]}, snapshot=True
    )
    assert len(stories) == 400
    # live events follow the snapshot with no gap
    edit(repo / "generated" / "GEN-0001.md", "status: ready", "status: done")
    (event,) = await client.events(1)
    assert event["seq"] == chunks[-1]["seq"] + 1 and sorted(event["subs"]) == ["s1", "s2"]


async def test_snapshot_then_live_has_no_gap_while_busy(
    daemon: Daemon, repo: Path, clients: Clients
) -> None:
    stop = asyncio.Event()

    async def churn() -> None:
        n = 0
        path = repo / "documentation" / "DOC-001-protocol-reference.md"
        while not stop.is_set():
            text = path.read_text()
            path.write_text(
                text.replace("priority:", f"churn: {n}\npriority:", 1)
                if "churn:" not in text
                else "\n".join(line for line in text.split("\n") if not line.startswith("churn:"))
            )
            n += 1
            await asyncio.sleep(0.05)

    task = asyncio.create_task(churn())
    try:
        await asyncio.sleep(0.2)
        client = await clients.open(daemon)
        await client.send({"type": "subscribe", "sub": "s1", "filter": {}, "snapshot": True})
        subscribed = await client.recv()
        assert subscribed["type"] == "subscribed"
        chunk = await client.recv()
        assert chunk["type"] == "snapshot" and chunk["done"] is True
        events = await client.events(4)
    finally:
        stop.set()
        await task
    assert_consecutive(events, chunk["seq"])


# -- replay with since -------------------------------------------------------------------


async def test_reconnect_with_since_replays_exactly_the_missed_events(
    daemon: Daemon, repo: Path, clients: Clients
) -> None:
    watcher, _ = await clients.subscribed(daemon)
    client, _ = await clients.subscribed(daemon)
    edit(repo / UI5, "priority: low", "priority: high")
    (first,) = await client.events(1)
    await watcher.events(1)
    cursor = {"epoch": first["epoch"], "seq": first["seq"]}
    await client.close()

    steps = [  # one event per story: see test_replay_keeps_every_event_of_one_story
        lambda: edit(repo / UI5, "status: ready", "status: in-progress"),
        lambda: (repo / "ui" / "NEW-001.md").write_text(NEW_STORY),
        lambda: os.rename(
            repo / "ui/board/UI-004-keyboard-navigation.md", repo / "UI-004-keyboard-navigation.md"
        ),
        lambda: os.remove(repo / "api" / "API-007-rate-limit-headers.md"),
        lambda: edit(
            repo / "api/v1/API-004-publish-openapi-schema.md", "priority:", "x: 1\npriority:"
        ),
    ]
    missed = []
    for step in steps:
        step()
        missed.extend(await watcher.events(1))
    assert [e["type"] for e in missed] == [
        "story.transitioned",
        "story.created",
        "story.moved",
        "story.deleted",
        "story.updated",
    ]

    again = await clients.open(daemon)
    assert again.welcome["seq"] == missed[-1]["seq"]
    await again.send({"type": "subscribe", "sub": "s1", "filter": {}, "since": cursor})
    subscribed = await again.recv()
    assert subscribed["type"] == "subscribed"
    assert subscribed["recovered"] is True and subscribed["replayed"] == len(missed)
    replayed = await again.events(len(missed))
    assert_consecutive(replayed, cursor["seq"])
    for got, want in zip(replayed, missed, strict=True):
        assert got["replay"] is True
        assert got["subs"] == ["s1"]
        assert {k: v for k, v in got.items() if k not in ("replay", "subs")} == {
            k: v for k, v in want.items() if k != "subs"
        }
    # then live, no gap, no duplicate
    edit(repo / "ui/UI-003-connection-status-indicator.md", "priority:", "x: 1\npriority:")
    (live,) = await again.events(1)
    assert live["seq"] == missed[-1]["seq"] + 1 and "replay" not in live
    await again.no_event()


async def test_replay_is_filtered(daemon: Daemon, repo: Path, clients: Clients) -> None:
    watcher, subscribed = await clients.subscribed(daemon)
    cursor = {"epoch": subscribed["epoch"], "seq": subscribed["seq"]}
    edit(repo / UI5, "priority: low", "priority: high")
    edit_api = repo / "api/v1/API-004-publish-openapi-schema.md"
    await watcher.events(1)
    edit(edit_api, "priority:", "x: 1\npriority:")
    await watcher.events(1)
    edit(repo / "ui/board/UI-004-keyboard-navigation.md", "status: draft", "status: done")
    events = await watcher.events(1)
    client = await clients.open(daemon)
    await client.send(
        {"type": "subscribe", "sub": "ui", "filter": {"epics": ["ui"]}, "since": cursor}
    )
    subscribed = await client.recv()
    assert subscribed["recovered"] is True and subscribed["replayed"] == 2
    replayed = await client.events(2)
    assert [e["seq"] for e in replayed] == [cursor["seq"] + 1, events[0]["seq"]]
    assert all(e["replay"] is True and e["subs"] == ["ui"] for e in replayed)
    await client.no_event(0.3)


async def test_replay_seams_have_no_gap_and_no_duplicate(
    daemon: Daemon, repo: Path, clients: Clients
) -> None:
    stop = asyncio.Event()

    paths = sorted(p for p in repo.rglob("*.md") if p.read_text().startswith("---\nid:"))

    async def churn() -> None:
        # one story after the other, so that no story has two events in the replay
        for n, path in enumerate(paths * 2):
            if stop.is_set():
                break
            edit(path, "\n---\n", f"\nchurn: {n}\n---\n")
            await asyncio.sleep(0.04)

    task = asyncio.create_task(churn())
    try:
        client, _ = await clients.subscribed(daemon)
        before = await client.events(3)
        await client.close()
        await asyncio.sleep(0.3)  # events go on while we are away
        again = await clients.open(daemon)
        await again.send(
            {
                "type": "subscribe",
                "sub": "s1",
                "filter": {},
                "since": {"epoch": before[-1]["epoch"], "seq": before[-1]["seq"]},
            }
        )
        subscribed, _ = await again.recv_until(lambda m: m["type"] == "subscribed")
        assert subscribed["recovered"] is True and subscribed["replayed"] >= 1
        after = await again.events(subscribed["replayed"] + 5)
    finally:
        stop.set()
        await task
    assert_consecutive(after, before[-1]["seq"])
    flags = [e.get("replay", False) for e in after]
    assert flags == [True] * subscribed["replayed"] + [False] * 5


async def test_since_that_cannot_be_resumed(daemon: Daemon, repo: Path, clients: Clients) -> None:
    watcher, subscribed = await clients.subscribed(daemon)
    epoch = subscribed["epoch"]
    edit(repo / UI5, "priority: low", "priority: high")
    await watcher.events(1)
    client = await clients.open(daemon)
    cases = [
        ("other-epoch", {"epoch": "not-" + epoch, "seq": 0}),
        ("future", {"epoch": epoch, "seq": 99}),
    ]
    for sub, since in cases:
        await client.send({"type": "subscribe", "sub": sub, "filter": {}, "since": since})
        answer = await client.recv()
        assert answer["type"] == "subscribed", answer
        assert answer["recovered"] is False and answer["replayed"] == 0, answer
    await client.no_event(0.3)
    # the current seq: recovered, nothing to replay
    await client.send(
        {"type": "subscribe", "sub": "now", "filter": {}, "since": {"epoch": epoch, "seq": 1}}
    )
    answer = await client.recv()
    assert answer["recovered"] is True and answer["replayed"] == 0
    # seq 0 on a fresh stream replays everything
    await client.send(
        {"type": "subscribe", "sub": "all", "filter": {}, "since": {"epoch": epoch, "seq": 0}}
    )
    answer = await client.recv()
    assert answer["recovered"] is True and answer["replayed"] == 1
    (event,) = await client.events(1)
    assert event["seq"] == 1 and event["replay"] is True and event["subs"] == ["all"]
    # since with a snapshot: recovered says whether replay was possible; the snapshot
    # replaces the replay
    _, stories = await client.subscribe("snap", {}, since={"epoch": epoch, "seq": 0}, snapshot=True)
    assert len(stories) == 50
    await client.no_event(0.3)


async def test_since_older_than_the_buffer(
    repo: Path, daemon_factory: type[Daemon], clients: Clients
) -> None:
    daemon = daemon_factory(repo, config={"backend": {"buffer_size": 3}}).start()
    daemon.wait_healthy()
    watcher, subscribed = await clients.subscribed(daemon)
    for rel in (
        "ui/UI-005-dark-mode.md",
        "ui/UI-003-connection-status-indicator.md",
        "ui/board/UI-001-live-board-kanban-columns.md",
        "ui/board/UI-002-story-detail-drawer.md",
        "ui/board/UI-006-filter-bar.md",
    ):
        edit(repo / rel, "priority:", "x: 1\npriority:")
        await watcher.events(1)
    client = await clients.open(daemon)
    await client.send(
        {
            "type": "subscribe",
            "sub": "old",
            "filter": {},
            "since": {"epoch": subscribed["epoch"], "seq": 1},
        }
    )
    answer = await client.recv()
    # Older than the buffer: a compacted catch-up (SPEC §9), not a replay.
    assert (answer["recovered"], answer["compacted"], answer["replayed"]) == (True, True, 0)
    catchup = await client.recv()
    assert (catchup["type"], catchup["sub"], catchup["since"], catchup["done"]) == (
        "catchup",
        "old",
        1,
        True,
    )
    assert [s["id"] for s in catchup["stories"]] == ["UI-003", "UI-001", "UI-002", "UI-006"]
    await client.send(
        {
            "type": "subscribe",
            "sub": "ok",
            "filter": {},
            "since": {"epoch": subscribed["epoch"], "seq": 2},
        }
    )
    answer = await client.recv()
    assert answer["recovered"] is True and answer["replayed"] == 3
    assert answer["compacted"] is False
    events = await client.events(3)
    assert [e["seq"] for e in events] == [3, 4, 5]


# -- errors ----------------------------------------------------------------------------


async def test_bad_requests_keep_the_connection(shared: Daemon, clients: Clients) -> None:
    client = await clients.open(shared)
    await client.ws.send("this is not json")
    error = await next_error(client)
    assert error["code"] == "bad_request" and error["ref"] is None
    for raw in ("[1, 2]", '"text"', "42", "null"):
        await client.ws.send(raw)
        error = await next_error(client)
        assert error["code"] == "bad_request", raw
    await client.send({"sub": "s7", "filter": {}})  # no type
    error = await next_error(client)
    assert error["code"] == "bad_request" and error["ref"] == "s7"
    await client.send({"type": "subscribe", "filter": {}})  # no sub
    error = await next_error(client)
    assert error["code"] == "bad_request"
    await client.send({"type": "unsubscribe"})  # no sub
    error = await next_error(client)
    assert error["code"] == "bad_request"
    await client.ws.send(b'{"type": "ping"}')  # a binary frame
    error = await next_error(client)
    assert error["code"] == "bad_request"
    await still_open(client)


async def test_unknown_type(shared: Daemon, clients: Clients) -> None:
    client = await clients.open(shared)
    await client.send({"type": "frobnicate", "sub": "s9"})
    error = await next_error(client)
    assert error["code"] == "unknown_type" and error["ref"] == "s9"
    await client.send({"type": "frobnicate", "ref": "r1"})
    error = await next_error(client)
    assert error["code"] == "unknown_type" and error["ref"] == "r1"
    await still_open(client)


async def test_forbidden(shared: Daemon, clients: Clients) -> None:
    publisher = await clients.open(shared, "tok-publisher")
    assert publisher.welcome["scopes"] == ["publish"]
    await publisher.send({"type": "subscribe", "sub": "s1", "filter": {}})
    error = await next_error(publisher)
    assert error["code"] == "forbidden" and error["ref"] == "s1"
    await still_open(publisher)
    reader = await clients.open(shared)
    await reader.send({"type": "publish", "ref": "p1", "items": []})
    error = await next_error(reader)
    assert error["code"] == "forbidden" and error["ref"] == "p1"
    await still_open(reader)


async def test_duplicate_and_unknown_sub(shared: Daemon, clients: Clients) -> None:
    client = await clients.open(shared)
    await client.subscribe("s1")
    await client.send({"type": "subscribe", "sub": "s1", "filter": {"epics": ["ui"]}})
    error = await next_error(client)
    assert error["code"] == "duplicate_sub" and error["ref"] == "s1"
    await client.send({"type": "unsubscribe", "sub": "nope"})
    error = await next_error(client)
    assert error["code"] == "unknown_sub" and error["ref"] == "nope"
    await still_open(client)


async def test_too_many_subscriptions(
    repo: Path, daemon_factory: type[Daemon], clients: Clients
) -> None:
    # a generous inbound budget so the 65 subscribes are not rate limited
    daemon = daemon_factory(repo, config={"limits": {"inbound_burst": 500}}).start()
    client = await clients.open(daemon)
    for n in range(64):
        subscribed, _ = await client.subscribe(f"s{n}", {"stories": [f"X-{n}"]})
        assert subscribed["type"] == "subscribed", subscribed
    await client.send({"type": "subscribe", "sub": "s64", "filter": {}})
    error = await next_error(client)
    assert error["code"] == "too_many_subscriptions" and error["ref"] == "s64"
    await client.send({"type": "unsubscribe", "sub": "s0"})
    await client.recv_until(lambda m: m["type"] == "unsubscribed")
    subscribed, _ = await client.subscribe("s64")
    assert subscribed["type"] == "subscribed"


async def test_rate_limited_then_closed_on_sustained_abuse(
    shared: Daemon, clients: Clients
) -> None:
    client = await clients.open(shared)
    for n in range(60):
        await client.send({"type": "ping", "nonce": n})
    replies = [await client.recv() for _ in range(60)]
    limited = [r for r in replies if r["type"] == "error"]
    assert limited and all(r["code"] == "rate_limited" for r in limited)
    assert sum(r["type"] == "pong" for r in replies) >= 48  # the burst of 50 passes
    await asyncio.sleep(0.5)  # the bucket refills: the connection was kept
    await still_open(client)
    # sustained abuse closes with 1008
    abuser = await clients.open(shared)
    replies: list[str] = []

    async def drain() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for frame in abuser.ws:
                replies.append(json.loads(frame)["type"])

    reader = asyncio.create_task(drain())
    with contextlib.suppress(ConnectionClosed):
        for n in range(150):
            await abuser.send({"type": "ping", "nonce": n})
    # the close frame is what counts (the server may take its close_timeout to hang up)
    protocol = abuser.ws.protocol
    deadline = asyncio.get_running_loop().time() + scaled(5)
    while protocol.close_rcvd is None and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    assert protocol.close_rcvd is not None and protocol.close_rcvd.code == 1008
    reader.cancel()
    abuser.ws.transport.abort()  # don't wait for the server's close_timeout
    await still_open(client)


async def test_message_too_big_closes_1009(shared: Daemon, clients: Clients) -> None:
    client = await clients.open(shared)
    # just under 64 KiB is fine
    await client.send({"type": "ping", "nonce": "x" * (60 * 1024)})
    pong, _ = await client.recv_until(lambda m: m["type"] == "pong")
    assert len(pong["nonce"]) == 60 * 1024
    with contextlib.suppress(ConnectionClosed):
        await client.send({"type": "ping", "nonce": "x" * (70 * 1024)})
    assert await closed_with(client) == 1009


async def test_ping_pong_echoes_nonce(shared: Daemon, clients: Clients) -> None:
    client = await clients.open(shared)
    for nonce in ("n-7", 42, {"a": [1, 2]}):
        await client.send({"type": "ping", "nonce": nonce})
        pong, _ = await client.recv_until(lambda m: m["type"] == "pong")
        assert pong == {"type": "pong", "nonce": nonce}
    await client.send({"type": "ping"})
    pong, _ = await client.recv_until(lambda m: m["type"] == "pong")
    assert pong.get("nonce") is None


async def test_heartbeat(repo: Path, daemon_factory: type[Daemon], clients: Clients) -> None:
    daemon = daemon_factory(repo, config={"server": {"heartbeat_s": 0.3}}).start()
    client = await clients.open(daemon)
    assert client.welcome["heartbeat_s"] == 0.3
    started = asyncio.get_running_loop().time()
    beats = []
    for _ in range(2):
        beat, _ = await client.recv_until(
            lambda m: m["type"] == "heartbeat", timeout=2, skip_heartbeats=False
        )
        beats.append(beat)
    elapsed = asyncio.get_running_loop().time() - started
    assert elapsed <= scaled(1.5)
    for beat in beats:
        assert ISO_MS_Z.match(beat["time"]) and beat["seq"] == client.welcome["seq"]
    # heartbeats carry the latest seq
    edit(repo / UI5, "priority: low", "priority: high")
    beat, _ = await client.recv_until(
        lambda m: m["type"] == "heartbeat" and m["seq"] == 1, timeout=3, skip_heartbeats=False
    )


async def test_sigterm_closes_clients_1001_and_exits_0(
    repo: Path, daemon_factory: type[Daemon], clients: Clients
) -> None:
    daemon = daemon_factory(repo).start()
    first, _ = await clients.subscribed(daemon)
    second = await clients.open(daemon, "tok-admin")
    daemon.signal(signal.SIGTERM)
    assert await closed_with(first) == 1001
    assert await closed_with(second) == 1001
    assert daemon.proc is not None
    code = await asyncio.to_thread(daemon.proc.wait, scaled(10))
    assert code == 0


async def test_sigint_exits_0(repo: Path, daemon_factory: type[Daemon], clients: Clients) -> None:
    daemon = daemon_factory(repo).start()
    client = await clients.open(daemon)
    daemon.signal(signal.SIGINT)
    assert await closed_with(client) == 1001
    assert daemon.proc is not None
    assert await asyncio.to_thread(daemon.proc.wait, scaled(10)) == 0


async def test_events_carry_the_sub_ids_of_this_connection_only(
    daemon: Daemon, repo: Path, clients: Clients
) -> None:
    one, _ = await clients.subscribed(daemon, sub="mine")
    two, _ = await clients.subscribed(daemon, sub="yours")
    edit(repo / UI5, "priority: low", "priority: high")
    (a,) = await one.events(1)
    (b,) = await two.events(1)
    assert a["subs"] == ["mine"] and b["subs"] == ["yours"]
    assert_event(a, one.welcome["epoch"])
    assert {k: v for k, v in a.items() if k != "subs"} == {
        k: v for k, v in b.items() if k != "subs"
    }


async def test_replay_keeps_every_event_of_one_story(
    daemon: Daemon, repo: Path, clients: Clients
) -> None:
    """Replay is not rate limited: every missed event of a story arrives, none merged."""
    watcher, subscribed = await clients.subscribed(daemon)
    cursor = {"epoch": subscribed["epoch"], "seq": subscribed["seq"]}
    edit(repo / UI5, "priority: low", "priority: high")
    edit_events = await watcher.events(1)
    edit(repo / UI5, "status: ready", "status: in-progress")
    edit_events += await watcher.events(1)
    edit(repo / UI5, "status: in-progress", "status: review")
    edit_events += await watcher.events(1)
    client = await clients.open(daemon)
    await client.send({"type": "subscribe", "sub": "s1", "filter": {}, "since": cursor})
    answer = await client.recv()
    assert answer["recovered"] is True and answer["replayed"] == 3
    replayed = await client.events(3, timeout=3)
    assert [e["seq"] for e in replayed] == [1, 2, 3]
    assert [e["type"] for e in replayed] == [
        "story.updated",
        "story.transitioned",
        "story.transitioned",
    ]
    assert all("coalesced" not in e for e in replayed)
