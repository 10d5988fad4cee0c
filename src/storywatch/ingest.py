"""The one way changes enter the stream: diff against the index, log, then fan out.

The watcher (settled file batches), ``publish`` messages and the startup scan all call
:meth:`Ingest.apply`. A lock keeps index order, seq order and delivery order the same.
An event is durable in the log before any client sees it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from storywatch.events import Event, Json
from storywatch.index import Changes, Index
from storywatch.log import EventLog
from storywatch.story import ParseResult, Story

logger = logging.getLogger(__name__)


class Ingest:
    def __init__(
        self,
        index: Index,
        log: EventLog,
        deliver: Callable[[list[Event]], None] | None,
        *,
        persist_index: bool = True,
    ) -> None:
        self.index = index
        self.log = log
        self.deliver = deliver  # None when the log delivers itself (Redis followers)
        self.persist_index = persist_index
        self.lock = asyncio.Lock()
        self.listeners: list[Callable[[list[Event], Json], None]] = []

    async def apply(self, changes: Changes, source: Json, *, emit: bool = True) -> list[Event]:
        async with self.lock:
            drafts = self.index.apply(changes)
            if not emit:
                drafts = []
            # The batch's source learns its size here; held deletes share the same dict.
            if source.get("kind") == "fs" and "batch_size" not in source:
                source["batch_size"] = len(drafts)
            records = self.index.records(changes) if self.persist_index else None
            if not drafts and not records:
                return []
            events = await self.log.append(drafts, source, records)
            if events and self.deliver is not None:
                self.deliver(events)
            for listener in self.listeners:
                listener(events, source)
            return events

    async def publish(self, items: list[Json], source: Json | None) -> list[Event]:
        """Diff ``publish`` items against the index and emit what changed."""
        source = dict(source) if source else {}
        source.setdefault("kind", "publish")
        changes: dict[str, ParseResult | None] = {}
        for item in items:
            if item["op"] == "delete":
                path = self.index.owner.get(str(item["id"]))
                if path is not None:
                    changes[path] = None
            else:
                story = self._story_from(item["story"])
                changes[story.path] = story
        return await self.apply(changes, source)

    def _story_from(self, raw: Mapping[str, Any]) -> Story:
        story_id = str(raw["id"])
        known = self.index.get(story_id)
        path = raw.get("path") or (known.path if known else story_id)
        body = raw.get("body")
        if not isinstance(body, str):
            body = known.body if known else ""
        fields = {k: v for k, v in raw.items() if k != "body"}
        fields["id"] = story_id
        fields["path"] = path
        return Story(id=story_id, path=path, fields=fields, body=body)
