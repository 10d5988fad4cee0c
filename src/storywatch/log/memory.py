"""The memory backend: nothing survives the process. Also the tests' fake."""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Sequence

from storywatch.catchup import DEFAULT_KEEP_DAYS, Position, Positions
from storywatch.eventlog import (
    IndexRecords,
    LocalFollowers,
    LogState,
    OnEvents,
    OnReset,
    check_encodable,
    new_epoch,
)
from storywatch.events import Draft, Event, Json, number, utc_now_iso


class MemoryLog:
    kind = "memory"

    def __init__(
        self,
        epoch: str | None = None,
        *,
        buffer_size: int = 10_000,
        keep_days: float = DEFAULT_KEEP_DAYS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.epoch = epoch or new_epoch()
        self.seq = 0
        self._recent: deque[Event] = deque(maxlen=buffer_size)  # for late followers
        self._followers = LocalFollowers()
        # -- catch-up (SPEC §9): positions live in this process only.
        self.positions = Positions()
        self.keep_days = keep_days
        self.clock = clock
        # -- webhooks (SPEC §10): each story's last event, in seq order (see
        # latest_events_after); it goes with the story's tombstone. Kept as its seq and
        # wire text (the string the event already cached): ~1 kB a story once the replay
        # window let the event go, a third of the event object (bench/last_events.py).
        self._last: dict[str, tuple[int, str]] = {}

    @property
    def healthy(self) -> bool:
        return True

    async def open(self) -> LogState:
        return LogState(
            epoch=self.epoch,
            seq=self.seq,
            positions=self.positions.snapshot(),
            horizon=self.positions.horizon,
        )

    async def append(
        self,
        drafts: Sequence[Draft],
        source: Json,
        index: IndexRecords | None = None,
        *,
        reseed: bool = False,  # only shared backends replace their index wholesale
    ) -> list[Event]:
        stamp = utc_now_iso()
        events = [
            number(draft, self.seq + i, self.epoch, stamp, source)
            for i, draft in enumerate(drafts, start=1)
        ]
        check_encodable(events)
        # -- catch-up (SPEC §9): expired tombstones go on every append.
        self._forget(self.positions.expire(self.clock(), self.keep_days))
        if events:
            self.seq = events[-1].seq
            self.positions.apply(events)
            self._keep_last(events)
            self._recent.extend(events)
            await self._followers.deliver(events)
        return events

    async def follow(self, after_seq: int, on_events: OnEvents, on_reset: OnReset) -> None:
        await self._followers.follow(after_seq, on_events, self.read_after)

    async def read_after(self, after_seq: int, limit: int) -> list[Event]:
        return [event for event in self._recent if event.seq > after_seq][:limit]

    async def expire_tombstones(self) -> int:
        """Drop the tombstones that expired by now; the horizon after (SPEC §9)."""
        self._forget(self.positions.expire(self.clock(), self.keep_days))
        return self.positions.horizon

    # -- webhooks (SPEC §10): each story's last event ----------------------------------

    async def latest_events_after(self, after_seq: int, limit: int) -> list[Event]:
        """Walks the newest entries back to ``after_seq``: O(stories changed since)."""
        kept: list[tuple[int, str]] = []
        for seq, text in reversed(self._last.values()):
            if seq <= after_seq:
                break
            kept.append((seq, text))
        kept.reverse()
        return [
            Event(seq=seq, epoch=self.epoch, data=json.loads(text), _encoded=[text])
            for seq, text in kept[:limit]
        ]

    def _keep_last(self, events: list[Event]) -> None:
        last = self._last
        for event in events:
            last.pop(event.story_id, None)  # re-inserted at the end: the dict stays in seq order
            last[event.story_id] = (event.seq, event.encoded())

    def _forget(self, dropped: list[tuple[str, Position]]) -> None:
        for story_id, _position in dropped:
            self._last.pop(story_id, None)

    async def close(self) -> None:
        return None
