"""Unit tests for storywatch.writer: the shared flush pass, on a real event loop.

The connections are stand-ins with the four things a writer touches (protocol state,
``paused``, ``transport.write``/``abort`` and ``drain()``); sessions, hub and metrics are
the real ones. The frames written are parsed back from their RFC 6455 bytes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.protocol import State

from storywatch.filters import Filter
from storywatch.metrics import Metrics
from storywatch.session import Session
from storywatch.writer import Flusher, Writer
from tests.test_session import READER, Stream, make_hub, make_limits, make_session, send
from tests.test_sse import parse_stream


class Transport:
    def __init__(self, fail: bool = False) -> None:
        self.writes: list[bytes] = []
        self.fail = fail
        self.aborted = False

    def write(self, data: bytes) -> None:
        if self.fail:
            raise RuntimeError("broken transport")
        self.writes.append(data)

    def abort(self) -> None:
        self.aborted = True


class Protocol:
    def __init__(self) -> None:
        self.state = State.OPEN


class Connection:
    def __init__(self, fail: bool = False) -> None:
        self.protocol = Protocol()
        self.transport = Transport(fail)
        self.paused = False
        self.drained = asyncio.Event()

    async def drain(self) -> None:
        await self.drained.wait()
        self.paused = False


def messages(data: bytes) -> list[dict[str, Any]]:
    """The JSON messages in a run of unmasked, unfragmented text frames."""
    out = []
    while data:
        assert data[0] == 0x81
        size, start = data[1], 2
        if size == 126:
            size, start = int.from_bytes(data[2:4], "big"), 4
        elif size == 127:
            size, start = int.from_bytes(data[2:10], "big"), 10
        out.append(json.loads(data[start : start + size]))
        data = data[start + size :]
    return out


class Setup:
    def __init__(self, write_timeout_s: float = 30.0) -> None:
        self.stream = Stream()
        self.hub = make_hub(self.stream)
        self.metrics = Metrics()
        self.stalled: list[Session] = []
        self.flusher = Flusher(self.metrics, write_timeout_s, self._stalled)

    async def _stalled(self, connection: Any, session: Session) -> None:
        self.stalled.append(session)

    def connect(self, fail: bool = False, **limits: Any) -> tuple[Connection, Session, Writer]:
        now = asyncio.get_running_loop().time()
        session = make_session(now=now, **limits)
        send(session, self.hub, {"type": "subscribe", "sub": "s1", "filter": {}}, now)
        self.hub.sessions.add(session)
        connection = Connection(fail)
        return connection, session, self.flusher.attach(connection, session)  # type: ignore[arg-type]

    def deliveries(self) -> float:
        return self.metrics.registry.get_sample_value("storywatch_deliveries_total") or 0.0


async def turn() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_one_pass_writes_each_connection_once_with_all_its_frames() -> None:
    setup = Setup()
    connections = [setup.connect()[0] for _ in range(3)]
    await turn()
    assert [[m["type"] for m in messages(c.transport.writes[0])] for c in connections] == [
        ["subscribed"]
    ] * 3
    setup.hub.publish([setup.stream.put("A", status="a"), setup.stream.put("B", status="a")])
    await turn()
    for connection in connections:
        assert len(connection.transport.writes) == 2  # the subscribe reply, then one write
        assert [m["story_id"] for m in messages(connection.transport.writes[1])] == ["A", "B"]
    assert setup.deliveries() == 6


async def test_a_connection_whose_write_fails_does_not_stall_the_others() -> None:
    setup = Setup()
    good, _, _ = setup.connect()
    bad, _, bad_writer = setup.connect(fail=True)
    other, _, _ = setup.connect()
    await turn()
    assert bad.transport.aborted and bad_writer.closed
    setup.hub.publish([setup.stream.put("A", status="a")])
    await turn()
    for connection in (good, other):
        assert [m["type"] for m in messages(b"".join(connection.transport.writes))] == [
            "subscribed",
            "story.created",
        ]
    assert bad.transport.writes == []


async def test_a_rate_limited_writer_sends_the_rest_on_a_timer() -> None:
    setup = Setup()
    connection, session, _ = setup.connect(rate_per_s=100, burst=1)
    await turn()
    setup.hub.publish([setup.stream.put(f"S{n}", status="a") for n in range(3)])
    await turn()
    sent = messages(b"".join(connection.transport.writes))
    assert [m.get("story_id") for m in sent] == [None, "S0"]  # one token: one event
    for _ in range(100):  # two more tokens take 20 ms at 100/s
        await asyncio.sleep(0.01)
        if not session.has_frames():
            break
    sent = messages(b"".join(connection.transport.writes))
    assert [m.get("story_id") for m in sent] == [None, "S0", "S1", "S2"]


async def test_a_full_socket_is_written_once_it_drains() -> None:
    setup = Setup()
    connection, _, _ = setup.connect()
    await turn()
    connection.paused = True
    setup.hub.publish([setup.stream.put("A", status="a")])
    await turn()
    assert len(connection.transport.writes) == 1  # only the subscribe reply
    connection.drained.set()
    await turn()
    assert messages(connection.transport.writes[-1])[0]["story_id"] == "A"


async def test_a_socket_that_never_drains_is_handed_over_as_stalled() -> None:
    setup = Setup(write_timeout_s=0.05)
    connection, session, writer = setup.connect()
    await turn()
    connection.paused = True
    setup.hub.publish([setup.stream.put("A", status="a")])
    for _ in range(100):
        await asyncio.sleep(0.01)
        if setup.stalled:
            break
    assert setup.stalled == [session] and writer.closed


async def test_a_closed_writer_writes_nothing_more() -> None:
    setup = Setup()
    connection, _, writer = setup.connect()
    await turn()
    writer.close()
    setup.hub.publish([setup.stream.put("A", status="a")])
    await turn()
    assert len(connection.transport.writes) == 1


async def test_a_stream_is_written_as_sse_while_websockets_still_handshakes() -> None:
    """An SSE stream (SPEC §12) is never upgraded: its connection stays CONNECTING for
    websockets, and the writer writes it there; once the peer is gone it stops."""
    setup = Setup()
    session = Session("c9", READER, make_limits(), 0.0, sse=True)
    setup.hub.sessions.add(session)
    session.open_stream(Filter(), None, setup.hub)
    connection = Connection()
    connection.protocol.state = State.CONNECTING
    writer = setup.flusher.attach(connection, session, stream=True)  # type: ignore[arg-type]
    await turn()
    setup.hub.publish([setup.stream.put("A", status="a")])
    await turn()
    events, _ = parse_stream(b"".join(connection.transport.writes))
    assert [e.type for e in events] == ["snapshot", "story.created"]
    assert setup.deliveries() == 1
    connection.protocol.state = State.CLOSED
    setup.hub.publish([setup.stream.put("B", status="a")])
    await turn()
    assert writer.closed and len(parse_stream(b"".join(connection.transport.writes))[0]) == 2
