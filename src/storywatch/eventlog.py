"""The event log's contract: what every backend is, and what it hands its followers.

The write side (the ingest) appends batches of drafts; the log numbers them (seq, epoch),
makes them durable and only then hands them to its *followers* — the hub's fan-out to
WebSocket clients, and every later reader. That is the one seam between writing and
reading: nothing reaches a client except through :meth:`EventLog.follow`.

- memory and sqlite call their followers back in this process, right after each commit
  (:class:`LocalFollowers`);
- Redis followers tail the shared stream, so every server of a deployment gets the events
  a watcher elsewhere appended.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol, runtime_checkable

from storywatch.catchup import Position
from storywatch.errors import RefusedError
from storywatch.events import Draft, Event, Json

logger = logging.getLogger(__name__)

# What the backend persists of the index: path → record (None = forget the path).
IndexRecords = dict[str, Json | None]
OnEvents = Callable[[list[Event]], None]
OnReset = Callable[["LogState"], Awaitable[None]]

# Followers get a long batch (a checkout's thousands of events) in slices, with the loop
# free in between for heartbeats, pings and handshakes.
FOLLOW_SLICE: Final = 200
# A late follower is handed at most this many missed events (the replay window's size).
FOLLOW_BACKLOG: Final = 1_000_000


def new_epoch() -> str:
    return secrets.token_hex(4)


@dataclass
class LogState:
    """What a backend knows when it opens (or when a shared stream lost its history)."""

    epoch: str
    seq: int
    recent: list[Event] = field(default_factory=list)  # oldest first, ≤ buffer_size
    index: dict[str, Json] = field(default_factory=dict)  # path → record
    fresh: bool = True  # no history was found (a new epoch was made)
    # -- catch-up (SPEC §9): every story's position (story id → position, by seq) and the
    # horizon (the seq of the newest dropped tombstone; a cursor before it can't catch up).
    positions: dict[str, Position] = field(default_factory=dict)
    horizon: int = 0


class EventLog(Protocol):
    """A durable, numbered stream of events, and the followers reading it."""

    kind: str

    @property
    def healthy(self) -> bool: ...

    async def open(self) -> LogState: ...

    async def append(
        self,
        drafts: Sequence[Draft],
        source: Json,
        index: IndexRecords | None = None,
        *,
        reseed: bool = False,
    ) -> list[Event]:
        """Number the drafts and make them durable before returning them. ``reseed``: the
        records are the whole index, replacing what the backend had.

        Raises :class:`~storywatch.errors.BackendError` when the backend cannot be reached
        (the caller keeps the batch and retries) and :class:`~storywatch.errors.RefusedError`
        when this batch can never be written (the caller drops it)."""
        ...

    async def follow(self, after_seq: int, on_events: OnEvents, on_reset: OnReset) -> None:
        """Call ``on_events`` with every event committed after ``after_seq``, in seq order,
        until cancelled; ``on_reset`` when the stream's history was lost."""
        ...

    async def read_after(self, after_seq: int, limit: int) -> list[Event]:
        """Up to ``limit`` retained events with seq > ``after_seq``, oldest first (a reader
        catching up from a durable cursor). When the log no longer holds ``after_seq + 1``,
        it starts at its oldest."""
        ...

    async def latest_events_after(self, after_seq: int, limit: int) -> list[Event]:
        """Per story whose last event has seq > ``after_seq``: that event as logged, oldest
        first, at most ``limit`` (a webhook behind the replay window gets these, SPEC §10).
        Kept with the story's catch-up position, in the same commit as the append, so it
        does not depend on the replay window; it goes when the story's tombstone expires."""
        ...

    async def expire_tombstones(self) -> int:
        """Drop the catch-up tombstones that expired by now (SPEC §9: on every append, and
        on a catch-up request); the horizon after."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class SharedLog(EventLog, Protocol):
    """A log several processes share (Redis): its index can change under this process,
    and one process at a time may watch the files (the watcher lock)."""

    lock_token: str  # "" unless this process holds the watcher lock

    async def load(self, count: int, *, positions: bool = True) -> LogState:
        """Meta, the last ``count`` events and the whole index, read at once (and the
        catch-up positions, unless ``positions`` is False)."""
        ...

    async def acquire_lock(self) -> bool: ...

    async def renew_lock(self) -> bool: ...

    async def release_lock(self) -> None: ...


class LocalFollowers:
    """The followers of a log that lives in this process, called back after each commit.

    A follower that registers late (after appends began) is first given what it missed, read
    from the backend's retained events, so ``follow(after_seq)`` means the same on every
    backend."""

    def __init__(self) -> None:
        self._followers: list[_Follower] = []

    async def follow(
        self,
        after_seq: int,
        on_events: OnEvents,
        read_after: Callable[[int, int], Awaitable[list[Event]]],
    ) -> None:
        follower = _Follower(after_seq, on_events)
        self._followers.append(follower)
        try:
            follower.catch_up(await read_after(after_seq, FOLLOW_BACKLOG))
            await asyncio.Event().wait()  # until cancelled
        finally:
            self._followers.remove(follower)

    async def deliver(self, events: list[Event]) -> None:
        """Hand freshly committed events to every follower, a slice at a time."""
        for start in range(0, len(events), FOLLOW_SLICE):
            if start:
                await asyncio.sleep(0)
            batch = events[start : start + FOLLOW_SLICE]
            for follower in list(self._followers):
                follower.offer(batch)


class _Follower:
    __slots__ = ("held", "last_seq", "on_events")

    def __init__(self, after_seq: int, on_events: OnEvents) -> None:
        self.last_seq = after_seq
        self.on_events = on_events
        self.held: list[Event] | None = []  # events offered while catching up

    def catch_up(self, missed: list[Event]) -> None:
        held, self.held = self.held or [], None
        self.offer(missed)
        self.offer(held)

    def offer(self, events: list[Event]) -> None:
        if self.held is not None:
            self.held.extend(events)
            return
        fresh = [e for e in events if e.seq > self.last_seq]
        if not fresh:
            return
        self.last_seq = fresh[-1].seq
        try:
            self.on_events(fresh)
        except Exception:  # one broken reader must not stop the others, or the writer
            logger.exception("a follower of the event log failed on seq %d", fresh[0].seq)


def check_encodable(events: Sequence[Event], records: IndexRecords | None = None) -> None:
    """Refuse a batch that could never be stored or sent as UTF-8 JSON (a lone surrogate,
    a value JSON has no form for): :class:`RefusedError`, before anything is written."""
    try:
        texts = [event.encoded() for event in events]
        texts += [
            json.dumps(r, ensure_ascii=False) for r in (records or {}).values() if r is not None
        ]
    except (ValueError, TypeError, RecursionError) as exc:
        raise RefusedError(f"the batch cannot be encoded: {exc}") from exc
    check_utf8(texts)


def check_utf8(texts: Iterable[object]) -> None:
    """:class:`RefusedError` unless every string among ``texts`` is valid UTF-8 (a lone
    surrogate is not): what no backend can store and no client can be sent."""
    try:
        for text in texts:
            if isinstance(text, str):
                text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RefusedError(f"the batch cannot be encoded: {exc}") from exc
