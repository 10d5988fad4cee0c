"""The memory backend: nothing survives the process. Also the tests' fake."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from storywatch.catchup import DEFAULT_KEEP_DAYS, Positions
from storywatch.events import Draft, Event, Json, number, utc_now_iso
from storywatch.log import IndexRecords, LogState, new_epoch


class MemoryLog:
    kind = "memory"

    def __init__(
        self,
        epoch: str | None = None,
        *,
        keep_days: float = DEFAULT_KEEP_DAYS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.epoch = epoch or new_epoch()
        self.seq = 0
        # -- catch-up (SPEC §9): positions live in this process only.
        self.positions = Positions()
        self.keep_days = keep_days
        self.clock = clock

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
        events = []
        for draft in drafts:
            self.seq += 1
            events.append(number(draft, self.seq, self.epoch, stamp, source))
        # -- catch-up (SPEC §9): expired tombstones go on every append.
        self.positions.expire(self.clock(), self.keep_days)
        self.positions.apply(events)
        return events

    async def expire_tombstones(self) -> int:
        """Drop the tombstones that expired by now; the horizon after (SPEC §9)."""
        self.positions.expire(self.clock(), self.keep_days)
        return self.positions.horizon

    async def close(self) -> None:
        return None
