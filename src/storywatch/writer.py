"""Writes sessions' frames to their sockets: one pass per loop turn over every connection
that has something to send.

A session calls its writer's :meth:`Writer.schedule` whenever it queues a frame. The
:class:`Flusher` collects those writers and, once per turn of the event loop, drains each
one into a single socket write — the frames are complete WebSocket frames, built once per
event for every connection. An event offered to a thousand connections therefore costs one
loop callback and one metrics update, not a thousand.

Nothing per connection waits unless it has to: a writer held by its rate limit sets a timer;
only a connection whose socket buffer is full gets a task, which waits for the buffer to
drain for at most ``write_timeout_s`` and otherwise closes the connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from storywatch.metrics import Metrics
from storywatch.session import Session, nothing

logger = logging.getLogger(__name__)

MAX_FRAMES_PER_PASS = 256  # per connection; the rest waits for the next turn (fairness)
_OPEN = State.OPEN  # looked up once: an enum member access is not free, per connection
_STREAMING = State.CONNECTING  # an SSE stream: websockets' handshake never completes


class Flusher:
    def __init__(
        self,
        metrics: Metrics,
        write_timeout_s: float,
        on_stalled: Callable[[ServerConnection, Session], Coroutine[Any, Any, None]],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.write_timeout_s = write_timeout_s
        # A socket that did not drain in time, or a session over its byte budget.
        self.on_stalled = on_stalled
        self.clock = clock  # the hub's: sessions' token buckets run on it
        self._ready: list[Writer] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.last_pass = 0.0  # on ``clock``: the last pass that wrote something

    def attach(
        self, connection: ServerConnection, session: Session, *, stream: bool = False
    ) -> Writer:
        """Drain ``session`` into ``connection``: an open WebSocket, or with ``stream`` an
        SSE stream (SPEC §12), written on a connection websockets never upgraded."""
        writer = Writer(self, connection, session, _STREAMING if stream else _OPEN)
        session.wakeup = writer.schedule
        writer.schedule()
        return writer

    def enqueue(self, writer: Writer) -> None:
        if not self._ready:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._loop.call_soon(self._flush)
        self._ready.append(writer)

    def _flush(self) -> None:
        ready, self._ready = self._ready, []
        now = self.clock()
        delivered = 0
        born: set[float] = set()
        for writer in ready:
            writer.queued = False
            try:
                count, first_born = writer.flush(now)
            except Exception:  # one broken connection must not stall the others
                logger.exception("writing to connection %s failed; closing it", writer.session.id)
                writer.close()
                writer.connection.transport.abort()
                continue
            if count:
                delivered += count
                born.add(first_born)
        if delivered:
            self.last_pass = now
            # Once per pass, not per connection: a Prometheus update takes a lock.
            self.metrics.deliveries.inc(delivered)
            wall = time.time()
            for created in born:
                self.metrics.latency.observe(max(0.0, wall - created))


class Writer:
    """One connection's place in the flusher."""

    __slots__ = (
        "_closer",
        "_drainer",
        "_timer",
        "closed",
        "connection",
        "flusher",
        "live",
        "queued",
        "session",
    )

    def __init__(
        self, flusher: Flusher, connection: ServerConnection, session: Session, live: State
    ) -> None:
        self.flusher = flusher
        self.connection = connection
        self.session = session
        self.live = live  # the protocol state in which this connection may be written to
        self.queued = False
        self.closed = False
        self._timer: asyncio.TimerHandle | None = None
        self._drainer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None

    def schedule(self) -> None:
        if not self.queued and not self.closed:
            self.queued = True
            self.flusher.enqueue(self)

    def flush(self, now: float) -> tuple[int, float]:
        """Write what the session may send now; (live events written, first one's birth)."""
        if self.closed:
            return 0, 0.0
        connection = self.connection
        if self.session.overloaded:  # piled up past its byte budget: it is not reading
            self.close()
            self._closer = asyncio.get_running_loop().create_task(
                self.flusher.on_stalled(connection, self.session)
            )
            return 0, 0.0
        if self._drainer is not None:
            return 0, 0.0
        if connection.protocol.state is not self.live:
            self.close()
            return 0, 0.0
        if connection.paused:
            self._wait_for_drain()
            return 0, 0.0
        out = self.session.drain(now, MAX_FRAMES_PER_PASS)
        frames = out.frames
        if frames:
            # No extension is ever negotiated (compression is off), so these bytes are
            # exactly what websockets would have framed itself.
            connection.transport.write(frames[0] if len(frames) == 1 else b"".join(frames))
        if connection.paused:
            self._wait_for_drain()
        elif out.wait > 0:
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(out.wait, self._tick)
        elif self.session.has_frames():
            self.schedule()  # more than one pass's worth: other connections go first
        return out.delivered, out.born

    def _tick(self) -> None:
        self._timer = None
        self.schedule()

    def _wait_for_drain(self) -> None:
        if self._drainer is None:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            async with asyncio.timeout(self.flusher.write_timeout_s):
                await self.connection.drain()
        except TimeoutError:
            self.close()
            await self.flusher.on_stalled(self.connection, self.session)
            return
        except OSError:  # the connection was lost while its buffer was full
            self.close()
            return
        self._drainer = None
        self.schedule()

    def close(self) -> None:
        """The connection is gone: stop writing and drop any timer or waiting task."""
        if self.closed:
            return
        self.closed = True
        self.session.wakeup = nothing
        if self._timer is not None:
            self._timer.cancel()
        # The waiting task stays referenced: when it is the one closing, it must not be
        # collected half way through the close handshake.
        if self._drainer is not None and self._drainer is not asyncio.current_task():
            self._drainer.cancel()


# -- a stream's connection (SPEC §12): websockets never upgrades it ------------------------


def only_write(connection: ServerConnection) -> None:
    """A stream only writes: what the client still sends is discarded, and its end of
    the connection (EOF) marks the connection closed, so its writer stops. (websockets'
    parser would read those bytes as WebSocket frames and half-close the connection.)"""
    protocol = connection.protocol

    def discard() -> Any:
        while not (yield from protocol.reader.at_eof()):
            protocol.reader.discard()
        protocol.state = State.CLOSED
        yield

    protocol.parser = discard()
    next(protocol.parser)


async def end_stream(connection: ServerConnection, timeout_s: float) -> None:
    """Close a stream's TCP connection after what is buffered (abort a peer that does not
    read it within ``timeout_s``) and wait until it is closed: only then may the server's
    ``process_request`` return, so websockets never writes a response behind the stream."""
    transport = connection.transport
    transport.close()
    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.shield(connection.connection_lost_waiter)
    except TimeoutError:
        transport.abort()
        await asyncio.shield(connection.connection_lost_waiter)
