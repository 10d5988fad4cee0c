"""The event log: numbers drafts into events (seq, epoch), keeps them durable, replays them.

Backends implement :class:`EventLog`. The replay window itself is held in memory by
:class:`ReplayBuffer` (filled from the backend at open), so replay and live delivery are
served from one place with no await between them, which is what keeps the seams exact.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from storywatch.catchup import Position
from storywatch.events import Event, Json

if TYPE_CHECKING:
    from storywatch.config import Settings
    from storywatch.events import Draft

# What the backend persists of the index: path → record (None = forget the path).
IndexRecords = dict[str, Json | None]


def new_epoch() -> str:
    return secrets.token_hex(4)


@dataclass
class LogState:
    """What a backend knows when it opens."""

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
    """A durable, numbered stream of events."""

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
        records are the whole index, replacing what the backend had."""
        ...

    async def close(self) -> None: ...


class ReplayBuffer:
    """The last ``size`` events, for resuming clients."""

    def __init__(self, size: int, epoch: str, seq: int, events: Iterable[Event] = ()) -> None:
        self.epoch = epoch
        self.seq = seq
        self._events: deque[Event] = deque(events, maxlen=size)

    def __len__(self) -> int:
        return len(self._events)

    def add(self, event: Event) -> None:
        self._events.append(event)
        self.seq = event.seq

    def reset(self, epoch: str, seq: int) -> None:
        self._events.clear()
        self.epoch, self.seq = epoch, seq

    def after(self, epoch: Any, since_seq: Any) -> list[Event] | None:
        """Every event after ``since_seq``, or None when that cursor cannot be resumed."""
        if epoch != self.epoch or not isinstance(since_seq, int) or isinstance(since_seq, bool):
            return None
        if since_seq > self.seq or since_seq < 0:
            return None
        if since_seq == self.seq:
            return []
        oldest = self._events[0].seq if self._events else self.seq + 1
        if since_seq < oldest - 1:
            return None
        start = since_seq - oldest + 1
        return [self._events[i] for i in range(start, len(self._events))]


def open_log(settings: Settings) -> EventLog:
    """The backend named by the settings; each is imported only when used."""
    kind = settings.backend.kind
    keep_days = settings.catchup_keep_days  # how long tombstones are kept (SPEC §9)
    if kind == "memory":
        from storywatch.log.memory import MemoryLog

        return MemoryLog(keep_days=keep_days)
    if kind == "sqlite":
        from storywatch.log.sqlite import SqliteLog

        return SqliteLog(
            settings.state_path, buffer_size=settings.backend.buffer_size, keep_days=keep_days
        )
    from storywatch.log.redis import RedisLog

    return RedisLog(settings.backend, keep_days=keep_days)
