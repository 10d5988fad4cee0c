"""``GET /api/stream`` — Server-Sent Events (SPEC §12) — against the real daemon, read
with a plain HTTP client (a raw socket; and once with ``http.client``): headers, auth and
origin, the first message without ``Last-Event-ID``, resuming with it (replay, catch-up,
resync + snapshot), filters and scopes, heartbeats, connection limits, SIGHUP revocation,
and a clean end on shutdown."""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import scaled
from tests.integration.daemon import Client, Daemon, token_config
from tests.integration.helpers import edit, http_get, set_status, story_path, ws_status
from tests.integration.sse_client import SseStream

pytestmark = pytest.mark.integration

UI5 = Path("ui") / "UI-005-dark-mode.md"  # status: ready, epic: ui
Open = Callable[..., Awaitable[SseStream]]


@pytest.fixture
async def sse() -> AsyncIterator[Open]:
    """Opens streams and closes them all at the end, also when a test fails."""
    opened: list[SseStream] = []

    async def open_stream(daemon: Daemon, path: str = "/api/stream", **kwargs: Any) -> SseStream:
        stream = await SseStream.open(daemon.port, path, **kwargs)
        opened.append(stream)
        return stream

    yield open_stream
    for stream in opened:
        await stream.close()


async def test_a_stream_starts_with_a_snapshot_then_every_event(
    daemon: Daemon, repo: Path, sse: Open
) -> None:
    stream = await sse(daemon)
    assert stream.status == 200
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert stream.headers["cache-control"] == "no-store"
    assert stream.headers["x-content-type-options"] == "nosniff"
    assert "content-length" not in stream.headers
    health = daemon.wait_healthy()
    snapshot = await stream.next()
    assert snapshot.type == "snapshot"
    assert snapshot.id == f"{health['epoch']}:{health['seq']}"
    assert set(snapshot.data) == {"epoch", "seq", "stories"}
    assert len(snapshot.data["stories"]) == 50
    assert daemon.wait_healthy()["connections"] == 1  # counted like a WebSocket
    edit(repo / UI5, "status: ready\n", "status: review\n")
    event = await stream.next()
    assert (event.type, event.data["story_id"], event.data["to"]) == (
        "story.transitioned",
        "UI-005",
        "review",
    )
    assert event.id == f"{health['epoch']}:{event.data['seq']}"
    assert "subs" not in event.data and "replay" not in event.data


async def test_filters_and_scopes_apply_like_on_the_websocket(
    daemon: Daemon, repo: Path, sse: Open
) -> None:
    query = "/api/stream?statuses=in-progress&statuses=ready"
    scoped = await sse(daemon, query, token="tok-integration")
    snapshot = await scoped.next()
    assert {(s["epic"], s["status"]) for s in snapshot.data["stories"]} <= {
        ("integration", "in-progress"),
        ("integration", "ready"),
    }
    ready = await sse(daemon, "/api/stream?statuses=ready&epics=ui")
    await ready.next()
    edit(repo / UI5, "status: ready\n", "status: review\n")  # leaves the filter: still told
    event = await ready.next()
    assert (event.type, event.data["story_id"]) == ("story.transitioned", "UI-005")
    set_status(story_path(repo, "INT-006"), "ready")
    event = await scoped.next()
    assert (event.data["story_id"], event.data["to"]) == ("INT-006", "ready")  # not UI-005


@pytest.mark.parametrize(
    ("token", "headers", "path", "status", "code"),
    [
        (None, {}, "/api/stream", 401, "unauthorized"),
        ("tok-nope", {}, "/api/stream", 401, "unauthorized"),
        ("tok-publisher", {}, "/api/stream", 403, "forbidden"),
        ("tok-reader", {"Origin": "http://evil.example"}, "/api/stream", 403, "forbidden"),
        ("tok-reader", {}, "/api/stream?statuses=a&colour=red", 200, None),
        ("tok-reader", {}, "/api/stream?events=story.exploded", 400, "invalid_filter"),
    ],
)
async def test_auth_origin_and_filter_errors_like_other_api_paths(
    daemon: Daemon,
    sse: Open,
    token: str | None,
    headers: dict[str, str],
    path: str,
    status: int,
    code: str | None,
) -> None:
    stream = await sse(daemon, path, token=token, headers=headers)
    assert stream.status == status
    assert stream.headers["x-content-type-options"] == "nosniff"
    if code is not None:
        assert stream.json()["error"]["code"] == code


async def test_the_own_origin_and_a_query_token_are_accepted(daemon: Daemon, sse: Open) -> None:
    own = {"Origin": f"http://127.0.0.1:{daemon.port}"}
    stream = await sse(daemon, "/api/stream?token=tok-reader", token=None, headers=own)
    assert stream.status == 200 and (await stream.next()).type == "snapshot"


async def test_last_event_id_resumes_by_replay_catch_up_or_resync_and_snapshot(
    repo: Path, daemon_factory: type[Daemon], sse: Open
) -> None:
    daemon = daemon_factory(repo, config={"backend": {"buffer_size": 3}}).start()
    health = daemon.wait_healthy()
    epoch = health["epoch"]
    watcher = await Client.connect(daemon.ws_url())
    await watcher.subscribe("all", {})
    for status in ("review", "done", "blocked", "in-progress", "review"):
        set_status(repo / UI5, status)
        await watcher.events(1)
    # seq 5 is the latest; the buffer holds 3..5.
    replayed = await sse(daemon, headers={"Last-Event-ID": f"{epoch}:3"})
    first, second = await replayed.next(), await replayed.next()
    assert [(e.data["seq"], e.data["replay"], e.id) for e in (first, second)] == [
        (4, True, f"{epoch}:4"),
        (5, True, f"{epoch}:5"),
    ]
    caught_up = await sse(daemon, "/api/stream?last_event_id=" + f"{epoch}:0")
    catchup = await caught_up.next()
    assert (catchup.type, catchup.id) == ("catchup", f"{epoch}:5")
    assert catchup.data == {
        "type": "catchup",
        "epoch": epoch,
        "seq": 5,
        "since": 0,
        "stories": [catchup.data["stories"][0]],
        "removed": [],
        "invalid": [],
        "done": True,
    }
    assert catchup.data["stories"][0]["status"] == "review"
    for value, reason in ((f"other:{3}", "epoch_changed"), (f"{epoch}:99", "lost")):
        lost = await sse(daemon, headers={"Last-Event-ID": value})
        resync = await lost.next()
        assert (resync.type, resync.id, resync.data) == (
            "resync",
            "",
            {"reason": reason, "epoch": epoch, "seq": 5},
        )
        snapshot = await lost.next()
        assert (snapshot.type, snapshot.id) == ("snapshot", f"{epoch}:5")
    for malformed in ("", "garbage", f"{epoch}:-1", f"{epoch}:1.5", f"{epoch}:3:4"):
        fresh = await sse(daemon, headers={"Last-Event-ID": malformed})
        assert (await fresh.next()).type == "snapshot", malformed
    # The header wins over the query (an EventSource resends the header, not the URL).
    both = await sse(
        daemon, f"/api/stream?last_event_id={epoch}:0", headers={"Last-Event-ID": f"{epoch}:4"}
    )
    resumed = await both.next()
    assert (resumed.type, resumed.data["seq"]) == ("story.transitioned", 5)
    # ...and then live.
    set_status(repo / UI5, "done")
    live = await both.next()
    assert (live.data["seq"], "replay" in live.data, live.id) == (6, False, f"{epoch}:6")
    await watcher.close()


async def test_a_long_catch_up_has_an_id_only_on_its_last_message(
    repo: Path, daemon_factory: type[Daemon], sse: Open
) -> None:
    daemon = daemon_factory(repo, config={"backend": {"buffer_size": 3}}).start()
    health = daemon.wait_healthy()
    admin = await Client.connect(daemon.ws_url("tok-admin"))
    items = [{"op": "upsert", "story": {"id": f"P{n:03}", "status": "new"}} for n in range(600)]
    await admin.send({"type": "publish", "ref": "r", "items": items})
    await admin.recv_until(lambda m: m.get("type") == "published")
    await admin.close()
    stream = await sse(daemon, headers={"Last-Event-ID": f"{health['epoch']}:{health['seq']}"})
    first, last = await stream.next(), await stream.next()
    assert (first.type, first.id, first.data["done"]) == ("catchup", "", False)
    assert (last.type, last.id, last.data["done"]) == ("catchup", f"{health['epoch']}:600", True)
    assert len(first.data["stories"]) + len(last.data["stories"]) == 600


async def test_heartbeat_comments_keep_the_stream_alive(
    repo: Path, daemon_factory: type[Daemon], sse: Open
) -> None:
    daemon = daemon_factory(repo, config={"server": {"heartbeat_s": 0.2}}).start()
    daemon.wait_healthy()
    stream = await sse(daemon)
    await stream.next()
    with pytest.raises(TimeoutError):
        await stream.next(timeout=1)  # no event: only comments
    assert stream.comments >= 2


async def test_streams_count_toward_the_connection_limits(
    repo: Path, daemon_factory: type[Daemon], sse: Open
) -> None:
    limits = {"max_connections_per_token": 2, "max_connections": 3}
    daemon = daemon_factory(repo, config={"limits": limits}).start()
    daemon.wait_healthy()
    one = await sse(daemon)
    ws = await Client.connect(daemon.ws_url())
    over = await sse(daemon)
    assert over.status == 429 and over.json()["error"]["code"] == "too_many_connections"
    assert await ws_status(daemon.ws_url()) == 429
    await sse(daemon, token="tok-admin")
    full = await sse(daemon, token="tok-integration")
    assert full.status == 503
    assert daemon.wait_healthy()["connections"] == 3
    await one.close()
    await ws.close()
    again = await sse(daemon)
    for _ in range(50):  # a closed stream frees its slot as soon as the server sees it go
        if again.status == 200:
            break
        await asyncio.sleep(0.05)
        again = await sse(daemon)
    assert again.status == 200


async def test_a_revoked_token_ends_its_stream(
    repo: Path, daemon_factory: type[Daemon], sse: Open
) -> None:
    daemon = daemon_factory(repo).start()
    daemon.wait_healthy()
    kept, revoked = await sse(daemon, token="tok-admin"), await sse(daemon)
    await kept.next()
    await revoked.next()
    daemon.config["auth"] = {"tokens": [t for t in token_config() if t["name"] != "reader"]}
    daemon.write_config()
    daemon.signal(signal.SIGHUP)
    assert await revoked.ended(timeout=scaled(1) + 1)
    edit(repo / UI5, "status: ready\n", "status: review\n")
    assert (await kept.next()).data["story_id"] == "UI-005"
    assert (await sse(daemon)).status == 401


async def test_shutdown_ends_every_stream_cleanly(daemon: Daemon, sse: Open) -> None:
    streams = [await sse(daemon) for _ in range(3)]
    for stream in streams:
        await stream.next()
    assert daemon.stop() == 0
    for stream in streams:
        assert await stream.ended()
    assert not any("Traceback" in line for line in daemon.stderr_lines)


def test_a_standard_http_client_reads_the_stream(daemon: Daemon) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=scaled(10))
    auth = {"Authorization": "Bearer tok-reader"}
    connection.request("GET", "/api/stream?epics=ui", headers=auth)
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("Content-Type", "").startswith(
        "text/event-stream"
    )
    lines = []
    while (line := response.readline()) != b"\n":
        lines.append(line.decode())
    assert lines[0].startswith("id: ") and lines[1] == "event: snapshot\n"
    data = json.loads(lines[2].removeprefix("data: "))
    assert {s["epic"] for s in data["stories"]} == {"ui"}
    connection.close()
    assert http_get(daemon, "/healthz")[0] == 200
