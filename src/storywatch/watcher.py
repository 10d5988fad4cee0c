"""The only importer of watchfiles: settled batches of paths → re-read → ingest.

watchfiles hands over a set of paths once the tree has been quiet for ``settle_ms``. The
watcher re-reads those files (folders are walked: a moved-in folder arrives as one path),
and passes the parse results to its :class:`Sink` (the ingest), with the two holds of
:mod:`storywatch.holds` that make editors and git come out right.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from watchfiles import Change, awatch

from storywatch import attribution
from storywatch.config import WatchSettings
from storywatch.events import Event, Json
from storywatch.holds import Holds
from storywatch.index import Changes
from storywatch.repo import Repo
from storywatch.story import ParseResult

logger = logging.getLogger(__name__)

# Batches keep collecting while changes keep coming, but never longer than this, so a
# settled file is reported within a second even during a long checkout.
MAX_BATCH_MS = 500
ROOT_POLL_S = 0.2


class Sink(Protocol):
    """Where the watcher's parse results go (the ingest), and what it asks of the index."""

    def owns(self, path: str) -> str | None: ...

    def is_broken(self, path: str) -> bool: ...

    def paths(self) -> Iterator[str]: ...

    async def apply(
        self,
        changes: Changes,
        source: Json,
        *,
        expected_later: int = 0,
        attribution: Mapping[str, Json] | None = None,
    ) -> list[Event]: ...


class Watcher:
    def __init__(self, repo: Repo, sink: Sink, settings: WatchSettings) -> None:
        self.repo = repo
        self.sink = sink
        self.settings = settings
        self.holds = Holds(settings.delete_grace_ms / 1000)
        self.last_head: dict[str, Any] | None = repo.git_head()
        self.running = asyncio.Event()
        self.initial_done = asyncio.Event()
        self._batches = itertools.count(1)
        self._timer: asyncio.TimerHandle | None = None
        self._stop = asyncio.Event()
        # One read-and-apply at a time (batches and expired holds): a slow read must not
        # let an older content of a file be applied after a newer one.
        self._turn = asyncio.Lock()

    async def run(self) -> None:
        """Watch until :meth:`stop`; set ``running`` once changes are being observed.

        If the root folder itself disappears, the watch dies with it: wait for the folder
        to come back, watch it again and diff everything against the index."""
        first_round = True
        while not self._stop.is_set():
            await self._watch_once(first_round)
            first_round = False
            if self._stop.is_set():
                break
            logger.warning("the watched folder %s is gone; waiting for it", self.repo.root)
            while not self._stop.is_set() and not self.repo.root.is_dir():
                await asyncio.sleep(ROOT_POLL_S)
            if self._stop.is_set():
                break
            logger.info("the watched folder %s is back; rescanning", self.repo.root)
        if self._timer is not None:
            self._timer.cancel()

    async def _watch_once(self, first_round: bool) -> None:
        """One awatch on the root, until stopped or until the root vanishes."""
        gone = asyncio.Event()
        # A handle on the watched folder itself: once that folder is deleted its link
        # count drops to 0, even if a new folder (maybe with the same inode) took its path.
        watched = os.open(self.repo.root, os.O_RDONLY | os.O_DIRECTORY)
        changes_iter = awatch(
            self.repo.root,
            watch_filter=self._wanted,
            step=max(1, self.settings.settle_ms),
            debounce=max(MAX_BATCH_MS, self.settings.settle_ms * 2),
            stop_event=_AnyEvent(self._stop, gone),
            force_polling=self.settings.force_polling,
            ignore_permission_denied=True,
            rust_timeout=1000,
            yield_on_timeout=True,
        )
        first = asyncio.ensure_future(changes_iter.__anext__())
        # watchfiles installs its watches before its first await; one turn of the loop
        # is enough for changes made from now on to be seen.
        await asyncio.sleep(0.05)
        if first_round:
            self.running.set()
            await self.initial_done.wait()
        else:
            await self._process(set(self.repo.walk()) | set(self.sink.paths()))
        try:
            raw = await first
            while True:
                if raw:
                    await self._on_batch(raw)
                # Gone, or replaced by a new folder (its inotify watch died with the old one).
                if os.fstat(watched).st_nlink == 0 or not self.repo.root.is_dir():
                    gone.set()
                    await _finish(changes_iter)
                    return
                raw = await changes_iter.__anext__()
        except StopAsyncIteration:
            pass
        finally:
            os.close(watched)

    def stop(self) -> None:
        self._stop.set()

    def _wanted(self, change: Change, path: str) -> bool:
        rel = self.repo.rel(path)
        if rel is None:
            return False
        if _is_git_ref(rel):
            return True  # HEAD moved: the batch it lands in is the one git changed
        if self.repo.rules.wanted(rel):
            return True
        # Folder events matter (a folder moved in or out carries its stories along).
        return self.repo.rules.dir_wanted(rel) and not self.repo.rules.ignored_name(
            rel.rsplit("/", 1)[-1]
        )

    def _expand(self, raw: set[tuple[Change, str]]) -> set[str]:
        rels: set[str] = set()
        index_paths: list[str] | None = None
        for _change, path in raw:
            rel = self.repo.rel(path)
            if rel is None or _is_git_ref(rel):
                continue
            if self.repo.is_dir(rel):  # also a folder named like a story (notes.md/)
                rels.update(self.repo.walk(rel))
                if self.repo.rules.wanted(rel):
                    rels.add(rel)  # a story file replaced by a folder: read as gone
            elif self.repo.rules.wanted(rel):
                rels.add(rel)
                continue
            # A folder that went away takes its stories with it.
            if index_paths is None:
                index_paths = list(self.sink.paths())
            prefix = rel + "/"
            rels.update(p for p in index_paths if p.startswith(prefix))
        return rels

    async def _on_batch(self, raw: set[tuple[Change, str]]) -> None:
        rels = self._expand(raw)
        if not rels:
            # Only git moved (a commit, a checkout touching no story): remember where HEAD
            # is now, so a later, unrelated batch is not tagged with it.
            self.last_head = self.repo.git_head()
            return
        await self._process(rels)

    async def _process(self, rels: set[str]) -> None:
        """Re-read these paths and hand the results over, with the editor-save holds."""
        async with self._turn:
            await self._process_now(rels)

    async def _process_now(self, rels: set[str]) -> None:
        results = await self._read(rels)
        source = self._source()
        commits = await self._attribute(source, results)
        now = asyncio.get_running_loop().time()
        results = self.holds.sort(
            results, source, now, self.sink.owns, self.sink.is_broken, commits
        )
        logger.debug(
            "batch %s: %d paths, %d held, %d to recheck",
            source["batch"],
            len(results),
            len(self.holds.held),
            len(self.holds.recheck),
        )
        # Held paths are emitted later with this batch's source: they count in its size
        # (one that comes back elsewhere in time is a move, counted by that later batch).
        await self.sink.apply(
            results, source, expected_later=self.holds.held_from(source), attribution=commits
        )
        self._schedule()

    async def _read(self, rels: set[str]) -> dict[str, ParseResult | None]:
        # Always off the loop: one hostile file (a megabyte of tiny YAML values) takes
        # seconds to build before the size guards can see it.
        return await asyncio.to_thread(self.repo.read_many, sorted(rels))

    async def _attribute(self, source: Json, paths: Mapping[str, object]) -> Mapping[str, Json]:
        """SPEC §11: when HEAD moved, the commit of every path that matches the new HEAD."""
        git = source.get("git")
        head = git.get("head") if isinstance(git, dict) else None
        if not head or not paths:
            return {}
        return await attribution.attribute(self.repo.root, str(head), list(paths))

    def _source(self) -> Json:
        source: Json = {"kind": "fs", "batch": f"b-{next(self._batches)}"}
        head = self.repo.git_head()
        if head is not None and head != self.last_head:
            source["git"] = head
        self.last_head = head
        return source

    def _schedule(self) -> None:
        """Arm the timer for the earliest held path."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.holds.next_deadline()
        if deadline is not None:
            self._timer = asyncio.get_running_loop().call_at(deadline, self._expire_soon)

    def _expire_soon(self) -> None:
        self._timer = None
        task = asyncio.ensure_future(self._expire())
        task.add_done_callback(_log_failure)

    async def _expire(self) -> None:
        async with self._turn:
            for source, rels, commits in self.holds.due(asyncio.get_running_loop().time()):
                # Read off the loop like every batch: a held file may be the hostile one.
                results = await self._read(set(rels))
                await self.sink.apply(results, source, attribution=commits)
        self._schedule()


class _AnyEvent:
    """Set when either event is: what awatch's ``stop_event`` needs (``is_set``)."""

    def __init__(self, *events: asyncio.Event) -> None:
        self.events = events

    def is_set(self) -> bool:
        return any(event.is_set() for event in self.events)

    def set(self) -> None:  # awatch sets it when cancelled
        self.events[0].set()


async def _finish(changes_iter: Any) -> None:
    """Let awatch see its stop event and release its watches."""
    try:
        while True:
            await changes_iter.__anext__()
    except StopAsyncIteration:
        return


def _is_git_ref(rel: str) -> bool:
    return rel in (".git/HEAD", ".git/packed-refs") or rel.startswith(".git/refs/heads/")


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("processing held changes failed", exc_info=task.exception())
