"""Delivery under pressure (SPEC §6, issue 5) against the real daemon.

- 200 clients and a burst of 2 000 changes: every client ends on the statuses that are on
  disk; clients under their outbound budget get every matching event, in order, uncoalesced;
  clients over it get coalesced events and still the right final state.
- A client that never reads is closed with 1013 while another keeps receiving, and the
  daemon's RSS stays bounded; one that does not even read its close frame is let go.
- An inbound flood gets ``rate_limited`` and then close 1008; another client is unaffected.
- Connection limits are enforced before the upgrade (503 total, 429 per token), and a
  closed connection frees its slot.

The small helpers at the top are shared by ``test_http_api.py`` and ``test_metrics.py``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import socket
import struct
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import websockets
import yaml
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import scaled
from tests.integration.daemon import Client, Daemon
from tests.integration.helpers import _FRONT, http_get, set_status

pytestmark = pytest.mark.integration

# -- helpers shared by the pressure / HTTP / metrics modules ------------------------------


def front_matter(path: Path) -> dict[str, Any] | None:
    """The YAML front-matter of a markdown file as on disk, or None."""
    match = _FRONT.match(path.read_bytes())
    if match is None:
        return None
    data = yaml.safe_load(match.group(1).decode("utf-8"))
    return data if isinstance(data, dict) else None


def disk_stories(repo: Path) -> dict[str, dict[str, Any]]:
    """Every story on disk: id → {"epic", "status", "file"}."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(repo.rglob("*.md")):
        rel = path.relative_to(repo)
        if any(part.startswith(".") for part in rel.parts):
            continue
        fm = front_matter(path)
        if fm is None or fm.get("id") is None:
            continue
        story_id = str(fm["id"])
        assert story_id not in out, f"duplicate id {story_id} in fixtures"
        out[story_id] = {"epic": fm.get("epic"), "status": fm.get("status"), "file": path}
    return out


def metric_values(text: str) -> dict[str, float]:
    """Prometheus text → {'name{labels}': value} (labels as rendered)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        out[name] = float(value)
    return out


def metrics(daemon: Daemon, token: str | None = None) -> dict[str, float]:
    status, body = http_get(daemon, "/metrics", token)
    assert status == 200, (status, body)
    assert isinstance(body, str), body
    return metric_values(body)


def poll_events(
    daemon: Daemon,
    epoch: str,
    since: int,
    until: int,
    timeout: float = 60,
    token: str = "tok-reader",
) -> list[dict[str, Any]]:
    """Long-poll ``/api/events`` from ``since`` until the stream reaches seq ``until``;
    every event in between (blocking)."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + scaled(timeout)
    cursor = since
    while cursor < until:
        assert time.monotonic() < deadline, f"stream stuck at seq {cursor}, want {until}"
        status, body = http_get(
            daemon, f"/api/events?epoch={epoch}&since={cursor}&wait=5", token, timeout=15
        )
        assert status == 200, (status, body)
        assert body["recovered"] is True, body
        assert body["epoch"] == epoch, body
        events.extend(body["events"])
        cursor = body["seq"]
    return events


async def wait_connections(daemon: Daemon, count: int, timeout: float = 10) -> None:
    """Wait until /healthz counts ``count`` open WebSocket connections."""
    deadline = time.monotonic() + scaled(timeout)
    while True:
        status, body = await asyncio.to_thread(http_get, daemon, "/healthz", None)
        if status == 200 and body["connections"] == count:
            return
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.05)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def apply_event(state: dict[str, Any], event: dict[str, Any]) -> None:
    if event["type"] == "story.deleted":
        state.pop(event["story_id"], None)
    else:
        state[event["story_id"]] = event["story"].get("status")


# -- 200 clients, 2 000 changes --------------------------------------------------------

ROUNDS = 10
EXTRA = 150
FIXTURE_EPICS = ["api", "data", "docs", "infra", "integration", "security", "ui"]

EXTRA_STORY = """\
---
id: LOAD-{n:03d}
title: Generated load story {n}
epic: {epic}
status: draft
labels: [load]
owner: load-team
---
# LOAD-{n:03d}

Generated for the pressure test.
"""


class Watcher:
    """One WebSocket client that reads continuously: snapshot, then events into a state."""

    def __init__(self, name: str, token: str, flt: dict[str, Any], visible: Iterable[str]) -> None:
        self.name = name
        self.token = token
        self.filter = flt
        self.visible = set(visible)  # ids this client should end up knowing
        self.state: dict[str, Any] = {}
        self.events: list[dict[str, Any]] = []
        self.other: list[dict[str, Any]] = []  # resync, error, … (should stay empty)
        self.snapshot_seq = -1
        self.client: Client | None = None
        self.task: asyncio.Task[None] | None = None
        self._pongs: dict[str, asyncio.Future[None]] = {}

    async def start(self, daemon: Daemon) -> None:
        self.client = await Client.connect(daemon.ws_url(self.token))
        subscribed, stories = await self.client.subscribe("s1", self.filter, snapshot=True)
        assert subscribed["type"] == "subscribed", subscribed
        self.snapshot_seq = subscribed["seq"]
        self.state = {s["id"]: s.get("status") for s in stories}
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.client is not None
        with contextlib.suppress(ConnectionClosed):
            async for raw in self.client.ws:
                msg = json.loads(raw)
                kind = msg.get("type", "")
                if kind.startswith("story."):
                    self.events.append(msg)
                    apply_event(self.state, msg)
                elif kind == "pong":
                    future = self._pongs.get(msg.get("nonce"))
                    if future is not None and not future.done():
                        future.set_result(None)
                elif kind != "heartbeat":
                    self.other.append(msg)

    async def barrier(self, nonce: str, timeout: float) -> None:
        """Ping and wait for the pong: every event queued before it has arrived."""
        assert self.client is not None
        future = asyncio.get_running_loop().create_future()
        self._pongs[nonce] = future
        await self.client.send({"type": "ping", "nonce": nonce})
        await asyncio.wait_for(future, timeout)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


async def test_200_clients_burst_of_2000_changes(repo: Path, daemon_factory: type[Daemon]) -> None:
    for n in range(1, EXTRA + 1):
        path = repo / "load" / f"LOAD-{n:03d}.md"
        path.parent.mkdir(exist_ok=True)
        path.write_text(EXTRA_STORY.format(n=n, epic="load"))
    disk = disk_stories(repo)
    assert len(disk) == 50 + EXTRA
    by_epic: dict[str, set[str]] = {}
    for story_id, info in disk.items():
        by_epic.setdefault(info["epic"], set()).add(story_id)
    assert set(FIXTURE_EPICS) <= set(by_epic)
    assert max(len(by_epic[e]) for e in FIXTURE_EPICS) * ROUNDS < 300  # under budget

    # Budget: burst 300 covers every filtered client (at most 9 stories x 10 rounds), while
    # the unfiltered ones, at 50 events/s, must fall behind the stream (hundreds of
    # events/s) and coalesce, even on a slow machine.
    daemon = daemon_factory(
        repo,
        config={
            "watch": {"settle_ms": 50},
            "limits": {"rate_per_s": 50, "burst": 300, "max_connections_per_token": 1000},
        },
    ).start()
    health = daemon.wait_healthy()
    epoch, seq0 = health["epoch"], health["seq"]
    assert health["stories"] == 50 + EXTRA

    # 160 clients under budget: 140 on one fixture epic each, 20 epic-scoped tokens.
    # 40 unfiltered clients receive all 2 000 events: over budget, they may coalesce.
    watchers: list[Watcher] = []
    for i in range(160):
        if i % 8 == 7:
            watchers.append(Watcher(f"scoped-{i}", "tok-integration", {}, by_epic["integration"]))
        else:
            epic = FIXTURE_EPICS[i % len(FIXTURE_EPICS)]
            token = "tok-reader" if i % 2 else "tok-admin"
            watchers.append(Watcher(f"{epic}-{i}", token, {"epics": [epic]}, by_epic[epic]))
    under_budget = list(watchers)
    for i in range(40):
        token = "tok-reader" if i % 2 else "tok-admin"
        watchers.append(Watcher(f"all-{i}", token, {}, disk))
    over_budget = watchers[160:]

    started = time.monotonic()
    gate = asyncio.Semaphore(20)

    async def start(w: Watcher) -> None:
        async with gate:
            await w.start(daemon)

    try:
        await asyncio.gather(*(start(w) for w in watchers))
        print(f"\n200 clients connected and subscribed in {time.monotonic() - started:.1f}s")
        for w in watchers:
            assert w.snapshot_seq == seq0, w.name
            assert set(w.state) == w.visible, w.name

        # 10 rounds: every story's status changes once per round; a round is written
        # once the previous one is in the stream, so each edit is exactly one event.
        ids = sorted(disk)
        reference: list[dict[str, Any]] = []
        burst_started = time.monotonic()
        for r in range(ROUNDS):
            for story_id in ids:
                set_status(disk[story_id]["file"], f"phase-{r}")
            target = seq0 + len(ids) * (r + 1)
            reference += await asyncio.to_thread(
                poll_events, daemon, epoch, target - len(ids), target
            )
        burst_s = time.monotonic() - burst_started
        assert len(reference) == ROUNDS * len(ids)
        assert [e["seq"] for e in reference] == list(range(seq0 + 1, seq0 + 2001))
        assert all(e["type"] == "story.transitioned" for e in reference)
        print(
            f"2000 changes written and in the stream in {burst_s:.1f}s "
            f"({2000 / burst_s:.0f} events/s)"
        )

        # Barrier: a pong queued after the last event arrives after it.
        barrier_started = time.monotonic()
        await asyncio.gather(*(w.barrier("final", scaled(90)) for w in watchers))
        print(f"every client caught up {time.monotonic() - barrier_started:.1f}s later")

        final = disk_stories(repo)
        assert {info["status"] for info in final.values()} == {f"phase-{ROUNDS - 1}"}
        for w in watchers:
            assert w.other == [], (w.name, w.other[:3])
            expected = {sid: final[sid]["status"] for sid in w.visible}
            assert w.state == expected, w.name
            seqs = [e["seq"] for e in w.events]
            assert all(a < b for a, b in itertools.pairwise(seqs)), w.name
            assert all(e["epoch"] == epoch and e["subs"] == ["s1"] for e in w.events), w.name

        for w in under_budget:
            want = [e for e in reference if e["story_id"] in w.visible]
            assert len(want) == len(w.visible) * ROUNDS
            got = [(e["seq"], e["story_id"], e["type"], e["from"], e["to"]) for e in w.events]
            assert got == [
                (e["seq"], e["story_id"], e["type"], e["from"], e["to"]) for e in want
            ], w.name
            assert not any("coalesced" in e for e in w.events), w.name

        coalesced_clients = 0
        frames = []
        for w in over_budget:
            frames.append(len(w.events))
            merged = [e for e in w.events if "coalesced" in e]
            if merged:
                coalesced_clients += 1
            # What a client got, coalesced or not, adds up to the 2 000 events.
            assert sum(e.get("coalesced", 1) for e in w.events) == 2000, w.name
            for e in merged:
                assert e["type"] == "story.transitioned" and e["coalesced"] >= 2, e
                assert e["from"] != e["to"], e
        print(
            f"unfiltered clients: {coalesced_clients}/40 got coalesced events; "
            f"frames per client min {min(frames)} max {max(frames)} (of 2000 events)"
        )
        assert coalesced_clients > 0
    finally:
        await asyncio.gather(*(w.close() for w in watchers), return_exceptions=True)


# -- a client that never reads ----------------------------------------------------------

BIG_STORIES = 20
BIG_STORY = """\
---
id: BIG-{n:02d}
title: A story with a very large front-matter
epic: load
status: draft
blob: {blob}
---
# BIG-{n:02d}
"""


class RawWebSocket:
    """A WebSocket client on a bare socket with a tiny receive buffer that reads only on
    demand, so the server's writes back up."""

    def __init__(self, port: int, token: str, rcvbuf: int = 4096) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(scaled(10))
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: storywatch.v1\r\n"
                f"Authorization: Bearer {token}\r\n\r\n"
            ).encode()
        )
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(4096)
            assert chunk, data
            data += chunk
        head, _, self.buffer = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head

    def send_text(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def send_texts(self, texts: list[str]) -> None:
        """Several text frames in one write (they arrive in one read on the server)."""
        out = bytearray()
        for text in texts:
            payload = text.encode()
            assert len(payload) < 126
            mask = os.urandom(4)
            out += struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask
            out += bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes(out))

    def send_close(self, code: int = 1000) -> None:
        """Answer the server's close frame (ends the closing handshake)."""
        mask = os.urandom(4)
        payload = struct.pack("!H", code)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        with contextlib.suppress(OSError):
            self.sock.sendall(struct.pack("!BB", 0x88, 0x80 | len(payload)) + mask + masked)

    def drain(self, timeout: float) -> tuple[bytes, str]:
        """Read as fast as possible until the server's close frame arrives or the peer
        goes away; (data, how) with how in close / eof / reset / timeout."""
        self.sock.settimeout(timeout)
        data = bytearray(self.buffer)
        pos = 0
        try:
            while True:
                frames, pos = self.parse(data, pos)
                if any(opcode == 8 for opcode, _ in frames):
                    return bytes(data), "close"
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    return bytes(data), "eof"
                data += chunk
        except ConnectionResetError:
            return bytes(data), "reset"
        except TimeoutError:
            return bytes(data), "timeout"

    @classmethod
    def frames(cls, data: bytes) -> list[tuple[int, bytes]]:
        """(opcode, payload) of the complete unmasked server frames in ``data``."""
        return cls.parse(data, 0)[0]

    @staticmethod
    def parse(data: bytes | bytearray, pos: int) -> tuple[list[tuple[int, bytes]], int]:
        """The complete frames from ``pos`` on, and where the next one starts."""
        out: list[tuple[int, bytes]] = []
        while pos + 2 <= len(data):
            start = pos
            b0, b1 = data[pos], data[pos + 1]
            n = b1 & 0x7F
            pos += 2
            if n == 126:
                if pos + 2 > len(data):
                    return out, start
                (n,) = struct.unpack("!H", data[pos : pos + 2])
                pos += 2
            elif n == 127:
                if pos + 8 > len(data):
                    return out, start
                (n,) = struct.unpack("!Q", data[pos : pos + 8])
                pos += 8
            if pos + n > len(data):
                return out, start
            out.append((b0 & 0x0F, bytes(data[pos : pos + n])))
            pos += n
        return out, pos

    def close(self) -> None:
        self.sock.close()


async def test_client_that_never_reads_is_closed_1013_others_keep_receiving(
    repo: Path, daemon_factory: type[Daemon]
) -> None:
    blob = "x" * 100_000
    big = []
    for n in range(1, BIG_STORIES + 1):
        path = repo / "big" / f"BIG-{n:02d}.md"
        path.parent.mkdir(exist_ok=True)
        path.write_text(BIG_STORY.format(n=n, blob=blob))
        big.append(path)
    # A short replay buffer, so that what the daemon keeps of history stays small and the
    # RSS measured is what connections cost.
    daemon = daemon_factory(
        repo,
        config={
            "limits": {"write_timeout_s": 2},
            "backend": {"buffer_size": 40},
        },
    ).start()
    health = daemon.wait_healthy()
    epoch, seq = health["epoch"], health["seq"]
    assert daemon.proc is not None
    pid = daemon.proc.pid

    good = await Client.connect(daemon.ws_url())
    await good.subscribe("s1", {})
    slow = await asyncio.to_thread(RawWebSocket, daemon.port, "tok-reader", 4096)
    slow.send_text(json.dumps({"type": "subscribe", "sub": "s1", "filter": {}}))
    # The good client sees the subscription answered before the flood starts.
    await good.send({"type": "ping", "nonce": "ready"})
    await good.recv_until(lambda m: m.get("type") == "pong")
    rss_before = rss_kib(pid)

    async def dropped_slow() -> float:
        values = await asyncio.to_thread(metrics, daemon)
        return values.get('storywatch_dropped_total{reason="slow"}', 0.0)

    assert await dropped_slow() == 0
    received: list[dict[str, Any]] = []
    rounds = 0
    rss_peak = rss_before
    started = time.monotonic()
    try:
        # Each round sends 20 events of ~100 kB to both clients; the good one reads them.
        # 8 rounds (16 MB) are far more than the socket buffers hold; then the stalled
        # writer has to give up after write_timeout_s (2 s).
        for rounds in range(1, 9):
            for path in big:
                set_status(path, f"round-{rounds}")
            received += await good.events(BIG_STORIES, timeout=30)
            rss_peak = max(rss_peak, rss_kib(pid))
        emitted = time.monotonic()
        deadline = emitted + scaled(20)
        while await dropped_slow() < 1:
            assert time.monotonic() < deadline, "the client that never reads was not dropped"
            rss_peak = max(rss_peak, rss_kib(pid))
            await asyncio.sleep(0.1)
        detected = time.monotonic() - started
        # Read the stalled socket as fast as we can: the 1013 close frame comes after
        # what was queued, unless the server gave up on the closing handshake.
        data, how = await asyncio.to_thread(slow.drain, scaled(15))
        frames = RawWebSocket.frames(data)
        closes = [payload for opcode, payload in frames if opcode == 8]
        code = struct.unpack("!H", closes[0][:2])[0] if closes else 1006
        print(
            f"\nslow client dropped {detected - (emitted - started):.1f}s after the last of "
            f"{rounds} rounds ({detected:.1f}s after the first); read "
            f"{len(data) / 1e6:.1f} MB, {len(frames)} frames, then {how}; close code {code}"
        )
        assert how in ("close", "eof", "reset"), "the server kept the stalled connection open"
        assert code in (1013, 1006), code
        if how == "close":
            slow.send_close(code)
        slow.close()  # a client closes its side once the handshake is done
        assert any("too slow to read" in line for line in daemon.stderr_lines)

        # The good client got every event in order, and still gets new ones.
        for path in big:
            set_status(path, "after")
        received += await good.events(BIG_STORIES, timeout=30)
        assert [e["seq"] for e in received] == list(range(seq + 1, seq + 1 + len(received)))
        assert all(e["epoch"] == epoch for e in received)
        assert not any("coalesced" in e for e in received)
        assert {e["to"] for e in received[-BIG_STORIES:]} == {"after"}
        rss_after = rss_kib(pid)
        print(
            f"daemon RSS before {rss_before / 1024:.1f} MiB, after "
            f"{rss_after / 1024:.1f} MiB (+{(rss_after - rss_before) / 1024:.1f} MiB), "
            f"peak while stalled {rss_peak / 1024:.1f} MiB; "
            f"{len(received)} events of ~100 kB delivered to the good client"
        )
        assert rss_after - rss_before < 100 * 1024
        assert rss_peak - rss_before < 100 * 1024
        await wait_connections(daemon, 1)
    finally:
        slow.close()
        await good.close()


async def test_client_that_never_reads_at_all_is_released(
    repo: Path, daemon_factory: type[Daemon]
) -> None:
    """Like the test above, but the stalled client never reads, not even its close frame:
    the server must still let go of the connection (abort the socket when the closing
    handshake cannot be written), so that it stops holding events for it."""
    blob = "x" * 100_000
    big = []
    for n in range(1, BIG_STORIES + 1):
        path = repo / "big" / f"BIG-{n:02d}.md"
        path.parent.mkdir(exist_ok=True)
        path.write_text(BIG_STORY.format(n=n, blob=blob))
        big.append(path)
    daemon = daemon_factory(
        repo,
        config={
            "limits": {"write_timeout_s": 2},
            "backend": {"buffer_size": 40},
        },
    ).start()
    daemon.wait_healthy()
    assert daemon.proc is not None
    good = await Client.connect(daemon.ws_url())
    await good.subscribe("s1", {})
    slow = await asyncio.to_thread(RawWebSocket, daemon.port, "tok-reader", 4096)
    slow.send_text(json.dumps({"type": "subscribe", "sub": "s1", "filter": {}}))
    await good.send({"type": "ping", "nonce": "ready"})
    await good.recv_until(lambda m: m.get("type") == "pong")
    try:
        for rounds in range(1, 9):
            for path in big:
                set_status(path, f"round-{rounds}")
            await good.events(BIG_STORIES, timeout=30)
        deadline = time.monotonic() + scaled(20)
        while (await asyncio.to_thread(metrics, daemon)).get(
            'storywatch_dropped_total{reason="slow"}', 0
        ) < 1:
            assert time.monotonic() < deadline, "the client that never reads was not dropped"
            await asyncio.sleep(0.1)
        dropped = time.monotonic()
        # The bound under test, not a wait for a slow machine: the server's closing
        # handshake timeout (5 s) and as much again. Not scaled, to stay clear of the
        # WebSocket keepalive (a ping 20 s after the connection opened), which does
        # release the socket, by accident, and would hide the bug.
        deadline = dropped + 10
        while True:
            _, body = await asyncio.to_thread(http_get, daemon, "/healthz", None)
            if body["connections"] == 1:
                break
            if time.monotonic() > deadline:
                rss = rss_kib(daemon.proc.pid) / 1024
                raise AssertionError(
                    f"{time.monotonic() - dropped:.1f}s after the write timeout the stalled "
                    f"connection is still open (healthz connections {body['connections']}, "
                    f"daemon RSS {rss:.0f} MiB)"
                )
            await asyncio.sleep(0.2)
        print(f"\nstalled connection released {time.monotonic() - dropped:.1f}s after the drop")
        # The socket is closed on the server's side: reading it ends.
        _, how = await asyncio.to_thread(slow.drain, scaled(10))
        assert how in ("close", "eof", "reset"), how
    finally:
        slow.close()
        await good.close()


# -- inbound flood ---------------------------------------------------------------------


async def test_inbound_flood_rate_limited_then_1008_other_client_unaffected(
    daemon: Daemon, repo: Path
) -> None:
    """A client that sends as fast as the server answers: first the burst (50) is served,
    then ``rate_limited`` errors, then close 1008; another client never notices."""
    calm = await Client.connect(daemon.ws_url())
    await calm.subscribe("s1", {})
    flood = await Client.connect(daemon.ws_url("tok-admin"))
    replies: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        with contextlib.suppress(ConnectionClosed):
            for n in range(5000):
                await flood.send({"type": "ping", "nonce": n})
                replies.append(await flood.recv(timeout=10))
        code = flood.ws.close_code
        elapsed = time.monotonic() - started
        kinds = [m["type"] for m in replies]
        limited = [m for m in replies if m["type"] == "error"]
        print(
            f"\nflood: {len(replies)} replies in {elapsed:.2f}s: {kinds.count('pong')} pongs, "
            f"{len(limited)} rate_limited, then close {code}"
        )
        assert code == 1008, code
        assert flood.ws.close_reason, "1008 without a reason"
        # Within the limit (burst 50, plus what refilled meanwhile) every ping is answered.
        assert kinds[:50] == ["pong"] * 50, kinds[:60]
        assert [m["nonce"] for m in replies[:50]] == list(range(50))
        assert limited, "closed without a rate_limited error first"
        assert all(m["code"] == "rate_limited" for m in limited), limited[:3]
        first = kinds.index("error")
        assert kinds[first:].count("pong") <= elapsed * 20 + 1  # only what refilled

        # The other client never noticed.
        await calm.send({"type": "ping", "nonce": "still-here"})
        pong, _ = await calm.recv_until(lambda m: m.get("type") == "pong")
        assert pong["nonce"] == "still-here"
        set_status(repo / "ui" / "UI-005-dark-mode.md", "in-progress")
        (event,) = await calm.events(1)
        assert event["story_id"] == "UI-005" and event["to"] == "in-progress"
        values = await asyncio.to_thread(metrics, daemon)
        assert values.get('storywatch_dropped_total{reason="abuse"}', 0) >= 1
    finally:
        await calm.close()
        await flood.close()


async def test_inbound_burst_in_one_write_is_told_rate_limited_before_1008(
    daemon: Daemon,
) -> None:
    """200 pings in one TCP write: the first 50 are answered, the rest get
    ``rate_limited``, and only then (if at all) the connection is closed with 1008."""
    raw = await asyncio.to_thread(RawWebSocket, daemon.port, "tok-reader", 1 << 16)
    try:
        await asyncio.to_thread(
            raw.send_texts, [json.dumps({"type": "ping", "nonce": n}) for n in range(200)]
        )
        data, how = await asyncio.to_thread(raw.drain, scaled(10))
        frames = RawWebSocket.frames(data)
        texts = [json.loads(p) for op, p in frames if op == 1]
        replies = [m for m in texts if m["type"] in ("pong", "error")]
        closes = [struct.unpack("!H", p[:2])[0] for op, p in frames if op == 8]
        print(f"\nburst of 200: {len(replies)} replies, close {closes}, then {how}")
        assert closes == [1008], closes
        assert [m.get("nonce") for m in replies if m["type"] == "pong"][:50] == list(range(50))
        assert any(m["type"] == "error" and m["code"] == "rate_limited" for m in replies)
    finally:
        raw.close()


# -- connection limits -----------------------------------------------------------------


@pytest.fixture
def limited(repo: Path, daemon_factory: type[Daemon]) -> Daemon:
    daemon = daemon_factory(
        repo,
        config={
            "limits": {"max_connections": 3, "max_connections_per_token": 2},
        },
    ).start()
    daemon.wait_healthy()
    return daemon


async def refused_status(daemon: Daemon, token: str) -> int:
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(daemon.ws_url(token), subprotocols=["storywatch.v1"])  # type: ignore[list-item]
    return refused.value.response.status_code


async def test_connection_limits_refused_before_upgrade(limited: Daemon) -> None:
    daemon = limited
    open_clients = [await Client.connect(daemon.ws_url("tok-reader")) for _ in range(2)]
    try:
        assert await refused_status(daemon, "tok-reader") == 429
        open_clients.append(await Client.connect(daemon.ws_url("tok-admin")))
        assert await refused_status(daemon, "tok-integration") == 503
        assert await refused_status(daemon, "tok-reader") in (429, 503)
        # Everyone accepted is still served.
        for n, client in enumerate(open_clients):
            await client.send({"type": "ping", "nonce": n})
            pong, _ = await client.recv_until(lambda m: m.get("type") == "pong")
            assert pong["nonce"] == n
        values = await asyncio.to_thread(metrics, daemon)
        assert values['storywatch_rejected_requests_total{status="429"}'] >= 1
        assert values['storywatch_rejected_requests_total{status="503"}'] >= 1
        assert values["storywatch_connections"] == 3
    finally:
        for client in open_clients:
            await client.close()


async def test_closed_connection_frees_its_slot(limited: Daemon) -> None:
    daemon = limited
    clients = [await Client.connect(daemon.ws_url("tok-reader")) for _ in range(2)]
    clients.append(await Client.connect(daemon.ws_url("tok-admin")))
    try:
        # A reader disconnects: the reader token (2 per token) and the server (3) each
        # have a free slot again, for a reconnect of the same token.
        await clients.pop(0).close()
        await wait_connections(daemon, 2)
        clients.append(await Client.connect(daemon.ws_url("tok-reader")))
        # And once more for the total limit.
        await clients.pop(0).close()
        await wait_connections(daemon, 2)
        clients.append(await Client.connect(daemon.ws_url("tok-integration")))
    finally:
        for client in clients:
            await client.close()
