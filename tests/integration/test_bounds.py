"""SPEC §13 against the real daemon: nothing a client sends can stop the stream.

Every backend (memory, sqlite, a real redis-server) takes hostile publishes — all of
Unicode, lone surrogates included, every size — and after each one a normal publish still
reaches a subscriber; after all of them a file edit does too. A client that floods snapshot
requests and never reads costs the daemon a bounded amount of memory. A `serve` node checks
a scoped publish against the shared index as it is now.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as sync_connect

from tests.conftest import scaled
from tests.integration.daemon import Client, Daemon
from tests.integration.helpers import edit, http_get, story_path
from tests.integration.redis_server import RedisServer

pytestmark = pytest.mark.integration

FLOOD_LIMITS = {"inbound_per_s": 10_000, "inbound_burst": 10_000}
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(any_text, children, max_size=5)
    ),
    max_leaves=30,
)
stories = st.fixed_dictionaries(
    {"id": any_text | st.integers()},
    optional={
        "path": any_text | st.sampled_from([".hidden/secret.md", "ui/x.md", "a/../b.md"]),
        "epic": any_text,
        "status": any_text,
        "title": any_text,
        "body": any_text,
    },
).flatmap(lambda s: st.dictionaries(any_text, json_values, max_size=4).map(lambda e: {**e, **s}))
items = st.one_of(
    st.fixed_dictionaries({"op": st.just("upsert"), "story": stories}),
    st.fixed_dictionaries({"op": st.just("delete"), "id": any_text | st.integers()}),
    json_values,
)
hostile_publishes = st.fixed_dictionaries(
    {"type": st.just("publish"), "ref": any_text},
    optional={
        "items": st.lists(items, max_size=6),
        "source": json_values | st.dictionaries(any_text, json_values, max_size=20),
    },
)


@contextmanager
def ws(daemon: Daemon, token: str) -> Iterator[ClientConnection]:
    with sync_connect(daemon.ws_url(token), subprotocols=["storywatch.v1"], max_size=None) as conn:  # type: ignore[list-item]
        welcome = json.loads(conn.recv(timeout=scaled(10)))
        assert welcome["type"] == "welcome"
        yield conn


def recv_until(conn: ClientConnection, wanted: Any, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + scaled(timeout)
    while True:
        message = json.loads(conn.recv(timeout=max(0.01, deadline - time.monotonic())))
        if wanted(message):
            return message  # type: ignore[no-any-return]


def start(backend: str, repo: Path, factory: type[Daemon], redis: RedisServer | None) -> Daemon:
    extra = ["--redis-url", redis.url] if redis is not None else []
    config = {"watch": {"settle_ms": 20}, "limits": FLOOD_LIMITS}
    daemon = factory(repo, backend=backend, config=config, extra_args=extra).start()
    daemon.wait_healthy()
    return daemon


@pytest.mark.parametrize("backend", ["memory", "sqlite", "redis"])
def test_hostile_publishes_never_stop_the_stream(
    backend: str, repo: Path, tmp_path: Path, daemon_factory: type[Daemon]
) -> None:
    redis = RedisServer(tmp_path / "redis").start() if backend == "redis" else None
    try:
        daemon = start(backend, repo, daemon_factory, redis)
        with ws(daemon, "tok-admin") as reader, ws(daemon, "tok-admin") as publisher:
            reader.send(json.dumps({"type": "subscribe", "sub": "all", "filter": {}}))
            recv_until(reader, lambda m: m["type"] == "subscribed")
            marker = iter(range(1_000_000))

            @settings(
                max_examples=40,
                deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                database=None,
            )
            @given(message=hostile_publishes)
            def hostile(message: dict[str, Any]) -> None:
                # ASCII escapes: a lone surrogate travels as "\ud800", valid JSON text.
                publisher.send(json.dumps(message))
                answer = recv_until(publisher, lambda m: m["type"] in ("published", "error"))
                if answer["type"] == "error":
                    assert answer["code"] in ("bad_request", "forbidden"), answer
                # The stream still flows: a normal publish reaches the subscriber.
                n = next(marker)
                publisher.send(
                    json.dumps(
                        {
                            "type": "publish",
                            "ref": f"m{n}",
                            "items": [
                                {
                                    "op": "upsert",
                                    "story": {"id": "MARK-1", "path": "mark.md", "n": n},
                                }
                            ],
                        }
                    )
                )
                done = recv_until(publisher, lambda m: m.get("ref") == f"m{n}")
                assert done["type"] == "published", done
                seen = recv_until(reader, lambda m: m.get("story_id") == "MARK-1")
                assert seen["story"]["n"] == n

            hostile()
            # A file edit after all of that still reaches the subscriber.
            edit(story_path(repo, "UI-005"), "status: ready", "status: review")
            event = recv_until(reader, lambda m: m.get("story_id") == "UI-005")
            assert (event["type"], event["to"]) == ("story.transitioned", "review")
        assert http_get(daemon, "/healthz", token=None)[0] == 200
        status, answer = http_get(daemon, "/api/events?since=0&wait=0")
        assert status == 200 and answer["recovered"] in (True, False)
        bad = [line for line in daemon.stderr_lines if "Traceback" in line]
        assert bad == []
    finally:
        if redis is not None:
            redis.stop()


def rss_kb(daemon: Daemon) -> int:
    assert daemon.proc is not None
    for line in Path(f"/proc/{daemon.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def masked_text_frame(payload: bytes) -> bytes:
    """A client's text frame (RFC 6455 §5.3: clients mask; an all-zero mask is a mask)."""
    size = len(payload)
    header = (
        bytes((0x81, 0x80 | size)) if size < 126 else bytes((0x81, 0xFE)) + size.to_bytes(2, "big")
    )
    return header + b"\x00\x00\x00\x00" + payload


def test_snapshot_flood_from_a_client_that_never_reads_is_bounded(
    repo: Path, daemon_factory: type[Daemon]
) -> None:
    bulk = repo / "bulk"
    bulk.mkdir()
    for n in range(3000):  # a snapshot of ~2 MB
        (bulk / f"B-{n:04d}.md").write_text(
            f"---\nid: B-{n:04d}\ntitle: {'bulk story ' * 40}\nepic: bulk\nstatus: draft\n---\n"
        )
    daemon = daemon_factory(repo, config={"limits": FLOOD_LIMITS}).start()
    daemon.wait_healthy()
    before = rss_kb(daemon)
    sock = socket.create_connection(("127.0.0.1", daemon.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(
        b"GET /ws?token=tok-reader HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    assert b" 101 " in sock.recv(1024)
    peak = before
    try:
        for n in range(60):  # ten a second, inside the inbound limit of the shipped config
            for message in (
                {"type": "subscribe", "sub": "s", "snapshot": True},
                {"type": "unsubscribe", "sub": "s"},
            ):
                sock.sendall(masked_text_frame(json.dumps(message).encode()))
            time.sleep(0.05)
            if n % 10 == 0:
                peak = max(peak, rss_kb(daemon))
        peak = max(peak, rss_kb(daemon))
    finally:
        sock.close()
    # Unbounded, 60 snapshots of ~2 MB would be ~120 MB queued for this one client.
    print(f"\nsnapshot flood: daemon RSS {before // 1024} MB before, peak {peak // 1024} MB")
    assert peak - before < 40 * 1024, f"RSS grew by {(peak - before) // 1024} MB"
    status, body = http_get(daemon, "/api/stories?epics=ui")
    assert status == 200 and body["stories"]


async def test_a_serve_node_checks_a_scoped_publish_against_the_shared_index_now(
    repo: Path, redis_server: RedisServer, daemon_factory: type[Daemon]
) -> None:
    extra = ["--redis-url", redis_server.url]
    watcher = daemon_factory(repo, command="run", backend="redis", extra_args=extra).start()
    watcher.wait_healthy()
    server = daemon_factory(repo, command="serve", backend="redis", extra_args=extra).start()
    server.wait_healthy()
    admin = await Client.connect(watcher.ws_url("tok-admin"))
    await admin.subscribe("all", {})
    # A story the serve node's startup index never saw.
    (repo / "security" / "SEC-9-audit.md").write_text(
        "---\nid: SEC-9\ntitle: Audit\nepic: security\nstatus: draft\n---\n"
    )
    (created,) = await admin.events(1)
    assert created["story_id"] == "SEC-9"
    ui = await Client.connect(server.ws_url("tok-ui-publisher"))
    takeover = {"id": "UI-X", "epic": "ui", "path": "security/SEC-9-audit.md"}
    item = {"op": "upsert", "story": takeover}
    await ui.send({"type": "publish", "ref": "takeover", "items": [item]})
    answer, _ = await ui.recv_until(lambda m: m.get("ref") == "takeover")
    assert (answer["type"], answer["code"]) == ("error", "forbidden")
    await admin.no_event(within=1.0)
    for client in (admin, ui):
        await client.close()


async def test_a_fresh_redis_stream_is_settled_before_the_node_is_ready(
    repo: Path, redis_server: RedisServer, daemon_factory: type[Daemon]
) -> None:
    extra = ["--redis-url", redis_server.url]
    daemon = daemon_factory(repo, command="run", backend="redis", extra_args=extra).start()
    daemon.wait_healthy()
    client = await Client.connect(daemon.ws_url())
    await client.subscribe("all", {})
    edit(story_path(repo, "UI-005"), "status: ready", "status: done")
    message, skipped = await client.recv_until(lambda m: m.get("type") != "heartbeat", timeout=10)
    assert message["type"] == "story.transitioned", (message, skipped)
    await client.close()


async def test_every_answer_is_nosniff_and_the_board_has_a_strict_csp(daemon: Daemon) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    writer.write(b"GET /ws?token=tok-reader HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # no Upgrade
    head = (await reader.read(4096)).decode()
    writer.close()
    assert head.split()[1] == "426"
    assert "x-content-type-options: nosniff" in head.lower()
    for path in ("/healthz", "/", "/api/stories", "/nope"):
        status, _ = http_get(daemon, path)
        assert status in (200, 404)
    import urllib.request

    with urllib.request.urlopen(daemon.http + "/", timeout=scaled(5)) as resp:
        csp = resp.headers["Content-Security-Policy"]
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    directives = dict(part.strip().split(" ", 1) for part in csp.split(";") if part.strip())
    assert "default-src" in directives
    connect = directives["connect-src"].split()
    assert "'self'" in connect and "ws:" not in connect and "wss:" not in connect
    assert "'unsafe-inline'" not in directives["script-src"]


def test_a_client_that_sends_but_never_reads_is_closed_with_1013(
    repo: Path, daemon_factory: type[Daemon]
) -> None:
    """Pongs it never reads pile up past `limits.max_queued_bytes`: the daemon closes it
    (1013) instead of holding them, and the other clients go on."""
    config = {"limits": {"max_queued_bytes": 1_000_000, **FLOOD_LIMITS}}
    daemon = daemon_factory(repo, config=config).start()
    daemon.wait_healthy()
    before = rss_kb(daemon)
    sock = socket.create_connection(("127.0.0.1", daemon.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(
        b"GET /ws?token=tok-reader HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    assert b" 101 " in sock.recv(1024)
    ping = masked_text_frame(json.dumps({"type": "ping", "nonce": "n" * 60_000}).encode())
    deadline = time.monotonic() + scaled(20)
    closing = "over its queued-bytes budget"
    try:
        while time.monotonic() < deadline and not any(closing in x for x in daemon.stderr_lines):
            try:
                sock.sendall(ping)
            except OSError:
                break  # the daemon closed it
            time.sleep(0.01)
    finally:
        sock.close()
    assert any(closing in line for line in daemon.stderr_lines), daemon.stderr_lines[-5:]
    assert rss_kb(daemon) - before < 40 * 1024
    status, body = http_get(daemon, "/healthz", token=None)
    assert status == 200 and body["connections"] <= 1
