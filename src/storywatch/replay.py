"""The replay window — pure: the last ``size`` events, for resuming clients.

Held in memory by the hub (filled from the log at open), so replay and live delivery are
served from one place with no await between them, which is what keeps the seams exact.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from storywatch.events import Event


class ReplayBuffer:
    """The last ``size`` events, for resuming clients."""

    def __init__(self, size: int, epoch: str, seq: int, events: Iterable[Event] = ()) -> None:
        self.epoch = epoch
        self.seq = seq
        self._events: deque[Event] = deque(events, maxlen=size)

    def __len__(self) -> int:
        return len(self._events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self._events)

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
