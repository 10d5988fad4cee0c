"""What the sender needs from the event log, and adapters for today's backends.

The sender is a follower of the log (STYLE "One seam"): it needs the ``follow`` of issue 14's
``EventLog`` to learn that the log moved on, and a backlog read to catch up from a durable
cursor after a restart. :class:`HookSource` is exactly that; when ``EventLog`` grows both,
it satisfies this Protocol and the adapters below go away.

Until then, in this process's memory/sqlite modes the hub is told of every committed event
(after the append returned), so :class:`HubFollow` turns its listeners into ``follow``;
the backlog comes from the hub's replay buffer (memory: nothing else keeps events) or from
the ``events`` table of ``state.db`` (sqlite: the last ``buffer_size`` events, as JSON).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from storywatch.errors import BackendError
from storywatch.events import Event
from storywatch.hub import Hub
from storywatch.log import LogState
from storywatch.webhooks.store import SqliteThread

OnEvents = Callable[[list[Event]], None]
OnReset = Callable[[LogState], Awaitable[None]]


class HookSource(Protocol):
    async def follow(self, after_seq: int, on_events: OnEvents, on_reset: OnReset) -> None:
        """Run until cancelled: ``on_events`` with every committed event after
        ``after_seq``, in seq order; ``on_reset`` when history was lost (a new epoch)."""
        ...

    async def read_after(self, after_seq: int, limit: int) -> list[Event]:
        """Up to ``limit`` events of the current epoch with seq > ``after_seq``, oldest
        first. When the log no longer holds ``after_seq + 1``, it starts at its oldest."""
        ...

    async def close(self) -> None: ...


class HubFollow:
    """``follow`` for a process that appends itself: the hub's listeners see every batch."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def follow(self, after_seq: int, on_events: OnEvents, on_reset: OnReset) -> None:
        self.hub.listeners.append(on_events)
        missed = self.hub.replay(self.hub.epoch, after_seq)  # published before this task ran
        if missed:
            on_events(missed)
        try:
            await asyncio.Event().wait()  # until cancelled
        finally:
            with contextlib.suppress(ValueError):
                self.hub.listeners.remove(on_events)

    async def close(self) -> None:
        return None


class BufferSource(HubFollow):
    """The memory backend: the backlog is the hub's replay buffer."""

    async def read_after(self, after_seq: int, limit: int) -> list[Event]:
        buffer = self.hub.buffer
        if after_seq >= buffer.seq:
            return []
        oldest = buffer.seq - len(buffer) + 1
        events = buffer.after(buffer.epoch, max(after_seq, oldest - 1)) or []
        return events[:limit]


class SqliteSource(HubFollow):
    """The sqlite backend: the backlog is the ``events`` table of ``state.db``, read on a
    connection of its own (WAL: reading never blocks the log's appends)."""

    def __init__(self, hub: Hub, path: Path) -> None:
        super().__init__(hub)
        self._db = SqliteThread(Path(path), "storywatch-hooks-read")

    async def open(self) -> None:
        await self._db.open(_read_only)

    async def read_after(self, after_seq: int, limit: int) -> list[Event]:
        if after_seq >= self.hub.seq:
            return []
        return await self._db.run(self._read, after_seq, limit)

    def _read(self, after_seq: int, limit: int) -> list[Event]:
        try:
            rows = (
                self._db.require()
                .execute(
                    "SELECT seq, data FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                    (after_seq, limit),
                )
                .fetchall()
            )
        except sqlite3.Error as exc:
            raise BackendError(f"cannot read events from {self._db.path}: {exc}") from exc
        events = []
        for seq, text in rows:
            data = json.loads(text)
            encoded = text.rstrip()[:-1]  # stored as the wire encoding: reuse it
            events.append(Event(seq=seq, epoch=data["epoch"], data=data, _encoded=[encoded]))
        return events

    async def close(self) -> None:
        await self._db.close()


def _read_only(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA query_only = ON")
