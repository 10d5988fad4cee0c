"""What the sender needs from the event log: it is one more follower of the log.

Every :class:`~storywatch.eventlog.EventLog` is a :class:`HookSource`: ``follow`` tells the
sender that the log moved on, ``read_after`` catches a hook up from its durable cursor
(after a restart, or while it was busy retrying one event).
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
