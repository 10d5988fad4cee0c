"""The memory backend: nothing survives the process. Also the tests' fake."""

from __future__ import annotations

from collections.abc import Sequence

from storywatch.events import Draft, Event, Json, number, utc_now_iso
from storywatch.log import IndexRecords, LogState, new_epoch


class MemoryLog:
    kind = "memory"

    def __init__(self, epoch: str | None = None) -> None:
        self.epoch = epoch or new_epoch()
        self.seq = 0

    @property
    def healthy(self) -> bool:
        return True

    async def open(self) -> LogState:
        return LogState(epoch=self.epoch, seq=self.seq)

    async def append(
        self,
        drafts: Sequence[Draft],
        source: Json,
        index: IndexRecords | None = None,
        *,
        reseed: bool = False,  # only shared backends replace their index wholesale
    ) -> list[Event]:
        time = utc_now_iso()
        events = []
        for draft in drafts:
            self.seq += 1
            events.append(number(draft, self.seq, self.epoch, time, source))
        return events

    async def close(self) -> None:
        return None
