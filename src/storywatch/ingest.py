"""The one way changes enter the stream: diff against the index, log, then fan out.

The watcher (settled file batches), ``publish`` messages and the startup scan all call
:meth:`Ingest.apply`. A lock keeps index order, seq order and delivery order the same.
An event is durable in the log before any client sees it.

When the log is unreachable (Redis down, disk full), what changed is kept, in order, and
appended once the log answers again; nothing is diffed twice or lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

from storywatch.errors import BackendError, NotLeaderError
from storywatch.events import Draft, Event, Json
from storywatch.index import Changes, Index
from storywatch.log import EventLog, IndexRecords
from storywatch.story import ParseError, ParseResult, Story

logger = logging.getLogger(__name__)

RETRY_MAX_S = 2.0
DELIVER_SLICE = 200


class Ingest:
    def __init__(
        self,
        index: Index,
        log: EventLog,
        deliver: Callable[[list[Event]], None] | None,
        *,
        persist_index: bool = True,
        refresh: Callable[[], Awaitable[Index]] | None = None,
    ) -> None:
        self.index = index
        self.log = log
        self.deliver = deliver  # None when the log delivers itself (Redis followers)
        self.persist_index = persist_index
        self.refresh = refresh  # re-read a shared index before diffing a publish
        self.lock = asyncio.Lock()
        self.on_lost_lead: Callable[[], None] = lambda: None
        self.on_parse_error: Callable[[str], None] = lambda reason: None
        self._backlog: deque[tuple[list[Draft], Json, IndexRecords | None, bool]] = deque()
        self._retry: asyncio.Task[None] | None = None

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    async def apply(
        self,
        changes: Changes,
        source: Json,
        *,
        emit: bool = True,
        reseed: bool = False,
        expected_later: int = 0,
        attribution: Mapping[str, Json] | None = None,
    ) -> list[Event]:
        """``attribution``: path → the commit its event carries in ``source.git.commit``."""
        for result in changes.values():
            if isinstance(result, ParseError) and result.has_front_matter:
                self.on_parse_error(result.reason)
        async with self.lock:
            drafts = self.index.apply(changes, emit=emit)
            if attribution:
                drafts = [
                    replace(d, commit=attribution[d.path]) if d.path in attribution else d
                    for d in drafts
                ]
            # The batch's source learns its size here; held deletes share the same dict.
            if source.get("kind") == "fs" and "batch_size" not in source:
                source["batch_size"] = len(drafts) + expected_later
            records: IndexRecords | None = None
            if reseed:
                records = self.index.records(list(self.index.paths()))
            elif self.persist_index:
                records = {p: r for p, r in self.index.records(changes).items()}
            if not drafts and not records and not reseed:
                return []
            self._backlog.append((drafts, source, records, reseed))
            return await self._flush()

    async def _flush(self) -> list[Event]:
        delivered: list[Event] = []
        while self._backlog:
            drafts, source, records, reseed = self._backlog[0]
            try:
                events = await self.log.append(drafts, source, records, reseed=reseed)
            except BackendError as exc:
                if _is_not_leader(exc):
                    self._backlog.clear()
                    self.on_lost_lead()
                    return delivered
                self._schedule_retry()
                return delivered
            self._backlog.popleft()
            logger.debug("appended %d events (source %s)", len(events), source.get("batch"))
            if events and self.deliver is not None:
                # A checkout can make thousands of events: hand them over in slices, so
                # heartbeats, pings and handshakes get the loop in between.
                for start in range(0, len(events), DELIVER_SLICE):
                    if start:
                        await asyncio.sleep(0)
                    self.deliver(events[start : start + DELIVER_SLICE])
            delivered.extend(events)
        return delivered

    def _schedule_retry(self) -> None:
        if self._retry is None or self._retry.done():
            self._retry = asyncio.create_task(self._retry_loop())

    async def _retry_loop(self) -> None:
        delay = 0.1
        logger.warning("event log unavailable; keeping %d pending batches", len(self._backlog))
        while self._backlog:
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
            async with self.lock:
                await self._flush()
        logger.info("event log available again; pending batches written")

    async def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()

    async def publish(
        self,
        items: list[Json],
        source: Json | None,
        attribution: Mapping[str, Json] | None = None,
    ) -> list[Event]:
        """Diff ``publish`` items against the index and emit what changed."""
        source = dict(source) if source else {}
        source.setdefault("kind", "publish")
        if self.refresh is not None:
            fresh = await self.refresh()
            async with self.lock:
                self.index = fresh
        changes: dict[str, ParseResult | None] = {}
        for item in items:
            if item["op"] == "delete":
                path = self.index.owner.get(str(item["id"]))
                if path is not None:
                    changes[path] = None
            else:
                story = self._story_from(item["story"])
                old_path = self.index.owner.get(story.id)
                if old_path is not None and old_path != story.path:
                    changes.setdefault(old_path, None)  # a move, not a duplicate
                changes[story.path] = story
        return await self.apply(changes, source, attribution=attribution)

    def target_path(self, raw: Mapping[str, Any]) -> str:
        """The file a published story lands on: its ``path``, else where it is, else its id."""
        story_id = str(raw["id"])
        known = self.index.get(story_id)
        return str(raw.get("path") or (known.path if known else story_id))

    def _story_from(self, raw: Mapping[str, Any]) -> Story:
        story_id = str(raw["id"])
        known = self.index.get(story_id)
        path = self.target_path(raw)
        body = raw.get("body")
        if not isinstance(body, str):
            body = known.body if known else ""
        fields = {k: v for k, v in raw.items() if k != "body"}
        fields["id"] = story_id
        fields["path"] = path
        return Story(id=story_id, path=path, fields=fields, body=body)


def _is_not_leader(exc: BaseException) -> bool:
    return isinstance(exc, NotLeaderError)
