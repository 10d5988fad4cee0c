"""Ingest.apply with emit=False (a fresh log's startup scan): same index, same records."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from storywatch.eventlog import IndexRecords, LogState
from storywatch.events import Draft, Event, Json
from storywatch.index import Index
from storywatch.ingest import Ingest
from storywatch.log.memory import MemoryLog
from storywatch.story import parse_text


class RecordingLog(MemoryLog):
    def __init__(self) -> None:
        super().__init__("ep")
        self.appended: list[tuple[list[str], IndexRecords | None, bool]] = []

    async def append(
        self,
        drafts: Sequence[Draft],
        source: Json,
        index: IndexRecords | None = None,
        *,
        reseed: bool = False,
    ) -> list[Event]:
        self.appended.append(([d.type for d in drafts], index, reseed))
        return await super().append(drafts, source, index, reseed=reseed)


FILES = {
    "a.md": "---\nid: A\nstatus: draft\n---\nbody\n",
    "dupe.md": "---\nid: A\nstatus: done\n---\n",
    "b.md": "---\nid: B\n---\n",
    "broken.md": "---\nid: [\n---\n",
    "readme.md": "# nothing\n",
    "gone.md": None,
}


def scan(
    *, emit: bool, persist: bool, reseed: bool
) -> tuple[Ingest, RecordingLog, Json, list[Event]]:
    log = RecordingLog()
    delivered: list[Event] = []
    ingest = Ingest(Index(), log, persist_index=persist)
    changes = {p: None if t is None else parse_text(p, t) for p, t in FILES.items()}
    source: Json = {"kind": "fs", "batch": "startup", "startup": True}

    async def run() -> list[Event]:
        following = asyncio.create_task(log.follow(0, delivered.extend, no_reset))
        await asyncio.sleep(0)
        try:
            return await ingest.apply(changes, source, emit=emit, reseed=reseed)
        finally:
            following.cancel()

    returned = asyncio.run(run())
    assert returned == delivered  # the log's follower got exactly what was appended
    return ingest, log, source, delivered


async def no_reset(state: LogState) -> None:
    raise AssertionError("a memory log never loses its history")


def test_silent_scan_indexes_like_the_emitting_one_and_persists_the_same_records() -> None:
    for persist, reseed in [(False, False), (True, False), (True, True)]:
        loud, loud_log, _, loud_events = scan(emit=True, persist=persist, reseed=reseed)
        quiet, quiet_log, quiet_source, quiet_events = scan(
            emit=False, persist=persist, reseed=reseed
        )
        for name in ("stories", "owner", "claims", "broken", "dupes"):
            assert getattr(quiet.index, name) == getattr(loud.index, name), name
        assert [e.type for e in loud_events] == ["story.created", "story.invalid", "story.created"]
        assert quiet_events == []
        assert quiet_source["batch_size"] == 0
        # What a persistent backend stores is the same; a silent scan appends no event
        # (and, with nothing to persist, does not call the log at all).
        stored = [(i, r) for _, i, r in loud_log.appended if i is not None or r]
        assert [(i, r) for _, i, r in quiet_log.appended] == stored
        assert len(quiet_log.appended) == (1 if persist else 0)
        assert all(types == [] for types, _, _ in quiet_log.appended)
