"""What the sender needs from the event log: it is one more follower of the log.

Every :class:`~storywatch.eventlog.EventLog` is a :class:`HookSource`: ``follow`` tells the
sender that the log moved on, ``read_after`` catches a hook up from its durable cursor
(after a restart, or while it was busy retrying one event), and ``latest_events_after``
gives a hook that fell behind the log's window each changed story's latest event.
"""

from __future__ import annotations

from typing import Protocol

from storywatch.eventlog import OnEvents, OnReset
from storywatch.events import Event

__all__ = ["HookSource", "OnEvents", "OnReset"]


class HookSource(Protocol):
    async def follow(self, after_seq: int, on_events: OnEvents, on_reset: OnReset) -> None:
        """Run until cancelled: ``on_events`` with every committed event after
        ``after_seq``, in seq order; ``on_reset`` when history was lost (a new epoch)."""
        ...

    async def read_after(self, after_seq: int, limit: int) -> list[Event]:
        """Up to ``limit`` events with seq > ``after_seq``, oldest first. When the log no
        longer holds ``after_seq + 1``, it starts at its oldest."""
        ...

    async def latest_events_after(self, after_seq: int, limit: int) -> list[Event]:
        """Per story whose last event has seq > ``after_seq``: that event as logged, oldest
        first, at most ``limit`` — what a hook behind the log's window gets, compacted."""
        ...
