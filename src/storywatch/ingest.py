"""The write side: the one way changes enter the stream — diff against the index, then log.

The watcher (settled file batches), ``publish`` messages and the startup scan all come
here. A lock keeps index order and seq order the same. The ingest only *writes*: clients
get the events from the log's followers (:meth:`EventLog.follow`), after the log made them
durable.

What the log answers decides what happens to a batch:
- unreachable (Redis down, disk full): the batch is kept, in order, and appended once the
  log answers again; nothing is diffed twice or lost;
- refused (a batch that can never be written): it is dropped and logged, its publisher gets
  an error, and later batches go on — one bad batch never blocks the stream;
- not the leader any more: the batches are dropped; the new leader diffs the files itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace

from storywatch.errors import BackendError, NotLeaderError, PublishRejected, RefusedError
from storywatch.eventlog import EventLog, IndexRecords
from storywatch.events import Draft, Event, Json
from storywatch.filters import Scope
from storywatch.inbound import Delete, Publish, Upsert
from storywatch.index import Changes, Index
from storywatch.ports import Published
from storywatch.story import ParseError, ParseResult, Story
from storywatch.values import Principal

logger = logging.getLogger(__name__)

RETRY_MAX_S = 2.0

# A shared log's current index and seq, read again before a publish is checked and applied.
Refresh = Callable[[], Awaitable[tuple[Index, int]]]


@dataclass
class _Batch:
    drafts: list[Draft]
    source: Json
    records: IndexRecords | None
    reseed: bool
    events: list[Event] = field(default_factory=list)
    refused: str | None = None  # why the log refused it
    done: bool = False


class Ingest:
    def __init__(
        self,
        index: Index,
        log: EventLog,
        *,
        persist_index: bool = True,
        refresh: Refresh | None = None,
    ) -> None:
        self.index = index
        self.log = log
        self.persist_index = persist_index
        self.refresh = refresh  # a shared log: re-read its index before a publish
        self.last_seq = 0  # the newest seq this process knows the log has
        self.lock = asyncio.Lock()
        self.on_lost_lead: Callable[[], None] = lambda: None
        self.on_parse_error: Callable[[str], None] = lambda reason: None
        self._backlog: deque[_Batch] = deque()
        self._retry: asyncio.Task[None] | None = None

    # -- what the rest of the write side reads -------------------------------------------

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    def reset(self, index: Index, seq: int) -> None:
        """The index and seq the log has (at open, or on taking the watcher lock)."""
        self.index, self.last_seq = index, seq

    def owns(self, path: str) -> str | None:
        return self.index.owns(path)

    def is_broken(self, path: str) -> bool:
        return path in self.index.broken

    def paths(self) -> Iterator[str]:
        return self.index.paths()

    def stories(self) -> dict[str, Json]:
        return {story_id: story.fields for story_id, story in self.index.stories.items()}

    def body_of(self, story_id: str) -> str | None:
        story = self.index.get(story_id)
        return story.body if story else None

    # -- changes from files ----------------------------------------------------------

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
        """Diff these parse results into the index and log what changed; the events of
        this batch once logged ([] while the log is unreachable, or if it refused them).
        ``attribution``: path → the commit its event carries in ``source.git.commit``."""
        for result in changes.values():
            if isinstance(result, ParseError) and result.has_front_matter:
                self.on_parse_error(result.reason)
        async with self.lock:
            batch = await self._apply_locked(
                changes,
                source,
                emit=emit,
                reseed=reseed,
                expected_later=expected_later,
                attribution=attribution,
            )
        return batch.events if batch is not None else []

    async def _apply_locked(
        self,
        changes: Changes,
        source: Json,
        *,
        emit: bool = True,
        reseed: bool = False,
        expected_later: int = 0,
        attribution: Mapping[str, Json] | None = None,
    ) -> _Batch | None:
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
            records = self.index.records(changes)
        if not drafts and not records and not reseed:
            return None
        batch = _Batch(drafts, source, records, reseed)
        self._backlog.append(batch)
        await self._flush()
        return batch

    async def _flush(self) -> None:
        while self._backlog:
            batch = self._backlog[0]
            try:
                batch.events = await self.log.append(
                    batch.drafts, batch.source, batch.records, reseed=batch.reseed
                )
            except NotLeaderError:
                self._backlog.clear()
                self.on_lost_lead()
                return
            except RefusedError as exc:
                batch.refused = str(exc)
                logger.error(
                    "the event log refused a batch of %d events (source %s): %s; dropped",
                    len(batch.drafts),
                    batch.source.get("batch") or batch.source.get("kind"),
                    exc,
                )
            except BackendError:
                self._schedule_retry()
                return
            self._backlog.popleft()
            batch.done = True
            if batch.events:
                self.last_seq = batch.events[-1].seq

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

    # -- the publish port ---------------------------------------------------------------

    async def publish(
        self,
        request: Publish,
        principal: Principal | None,
        attribution: Mapping[str, Json] | None = None,
    ) -> Published:
        """Check and apply a publish on one index state, under the lock (SPEC §13): on a
        shared log that state is re-read first, so every node checks the same thing it
        applies to. ``principal`` None: a trusted local caller (the CLI, which also knows
        each path's commit: ``attribution``)."""
        source: Json = {"kind": "publish", **request.source}
        if principal is not None:
            source["token"] = principal.name  # who published, whatever the client claimed
        async with self.lock:
            if self.refresh is not None:
                # Unreachable: checked and applied on the last known state; the append waits.
                with contextlib.suppress(BackendError):
                    self.index, self.last_seq = await self.refresh()
            if principal is not None and principal.epics.epics is not None:
                self._check_scope(request, principal.epics)
            batch = await self._apply_locked(
                self._changes(request), source, attribution=attribution
            )
        if batch is not None and batch.refused:
            raise PublishRejected("bad_request", "the event log refused this publish")
        events = batch.events if batch is not None else []
        return Published(len(events), events[-1].seq if events else self.last_seq)

    def _check_scope(self, request: Publish, scope: Scope) -> None:
        for item in request.items:
            current = self.index.get(item.story_id)
            if current is not None and not scope.sees(current.fields):
                raise PublishRejected("forbidden", "publish outside this token's epics")
            if isinstance(item, Upsert):
                if not scope.sees(item.fields):
                    raise PublishRejected("forbidden", "publish outside this token's epics")
                # The story whose file the upsert would take over must be in scope too.
                owner = self.index.owns(self._target_path(item))
                taken = self.index.get(owner) if owner is not None else None
                if taken is not None and not scope.sees(taken.fields):
                    raise PublishRejected("forbidden", "publish outside this token's epics")

    def _changes(self, request: Publish) -> dict[str, ParseResult | None]:
        changes: dict[str, ParseResult | None] = {}
        for item in request.items:
            if isinstance(item, Delete):
                path = self.index.owner.get(item.story_id)
                if path is not None:
                    changes[path] = None
                continue
            story = self._story_from(item)
            old_path = self.index.owner.get(story.id)
            if old_path is not None and old_path != story.path:
                changes.setdefault(old_path, None)  # a move, not a duplicate
            changes[story.path] = story
        return changes

    def _target_path(self, item: Upsert) -> str:
        """The file a published story lands on: its ``path``, else where it is, else
        ``<id>.md``."""
        if item.path is not None:
            return item.path
        known = self.index.get(item.story_id)
        return known.path if known else item.default_path

    def _story_from(self, item: Upsert) -> Story:
        known = self.index.get(item.story_id)
        path = self._target_path(item)
        body = item.fields.get("body")
        if not isinstance(body, str):
            body = known.body if known else ""
        fields = {k: v for k, v in item.fields.items() if k != "body"}
        fields["path"] = path
        return Story(id=item.story_id, path=path, fields=fields, body=body)
