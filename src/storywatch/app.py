"""Wiring and lifecycle: open the log → index → initial scan → watcher → server; and back.

Startup order matters: the server answers first (``/healthz`` says ``starting`` or
``degraded`` while the backend is not there yet), the watcher is observing before the
initial scan reads the files, so nothing changed during the scan is missed, and the app is
ready only when both are done. Shutdown is the reverse: stop accepting, close clients with
1001, stop the watcher, flush and close the log.

With Redis, every server follows the shared stream, and processes that may watch compete
for the watcher lock; the holder diffs its files against the shared index when it takes
over, so no change is lost or reported twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storywatch.auth import Authenticator, hash_token, new_token
from storywatch.config import Settings, TokenEntry
from storywatch.errors import BackendError, ConfigError
from storywatch.events import Json
from storywatch.hub import Hub
from storywatch.index import Index
from storywatch.ingest import Ingest
from storywatch.log import EventLog, LogState, ReplayBuffer, open_log
from storywatch.metrics import Metrics
from storywatch.paths import PathRules
from storywatch.repo import Repo, parse_tree, start_workers
from storywatch.server import StoryServer, events_counter
from storywatch.watcher import Watcher
from storywatch.webhooks.service import Webhooks, log_source, open_webhooks

logger = logging.getLogger(__name__)

GENERATED_TOKEN_NAME = "local"
LOCK_RETRY_S = 1.0
RENEW_EVERY_S = 3.0


@dataclass(frozen=True)
class GeneratedToken:
    token: str
    entry: TokenEntry


def local_token(repo: Path) -> GeneratedToken:
    """The zero-config token, kept in ``<repo>/.storywatch/token`` across restarts."""
    folder = repo / ".storywatch"
    path = folder / "token"
    token = None
    with contextlib.suppress(OSError):
        token = path.read_text().strip() or None
    if token is None:
        token = new_token()
        try:
            ensure_state_folder(folder)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(token + "\n")
        except OSError as exc:
            logger.warning(
                "cannot keep the generated token in %s (%s); it lasts this run", path, exc.strerror
            )
    entry = TokenEntry(
        name=GENERATED_TOKEN_NAME,
        sha256=hash_token(token),
        scopes=frozenset({"read", "publish", "admin"}),
        epics=None,
    )
    return GeneratedToken(token, entry)


def ensure_state_folder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    ignore = folder / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")


class App:
    def __init__(
        self,
        settings: Settings,
        *,
        watch: bool = True,
        serve: bool = True,
        tokens: tuple[TokenEntry, ...] | None = None,
    ) -> None:
        self.settings = settings
        self.watch = watch
        self.serve = serve
        self.tokens = tokens if tokens is not None else settings.tokens
        self.metrics = Metrics()
        self.ready = False
        self.log: EventLog = open_log(settings)
        self.shared = self.log.kind == "redis"
        self.hub = Hub(ReplayBuffer(settings.backend.buffer_size, "", 0))
        self.hub.listeners.append(events_counter(self.metrics))
        self.ingest: Ingest | None = None
        self.watcher: Watcher | None = None
        self.server: StoryServer | None = None
        self.leading = False
        self.webhooks: Webhooks | None = None  # SPEC §10
        self._watch_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    # -- startup --------------------------------------------------------------------------

    async def start(self) -> None:
        if self.watch and not self.settings.repo.is_dir():
            raise ConfigError(f"repo: not a folder: {self.settings.repo}")
        if self.serve:
            self.server = StoryServer(
                self.settings,
                self.hub,
                self.metrics,
                ingest=None,
                health=self.health,
                body_of=self._body_of,
                authenticator=Authenticator(self.tokens),
                accepting=lambda: self.ready,
            )
            await self.server.start()
        state = await self._open_log()
        index = Index.from_records(state.index)
        self.hub.load(state.epoch, state.seq, state.recent, _stories_of(index))
        if self.shared:
            self.ingest = Ingest(index, self.log, None, refresh=self._shared_index)
        else:
            persist = self.log.kind != "memory"
            self.ingest = Ingest(index, self.log, self.hub.publish, persist_index=persist)
        self.ingest.on_parse_error = lambda reason: self.metrics.parse_errors.labels(reason).inc()
        # -- outbound webhooks (SPEC §10) ---------------------------------------------------
        # Every node answers /api/hooks from the hooks' store. Memory and sqlite: this
        # process delivers, from before the startup scan (its events are delivered too).
        # Redis: only the elected watcher delivers — `webhooks.start` / `stop` are to be
        # wired to the watcher lock in `_lead` (not done here).
        self.webhooks = open_webhooks(self.settings, self.metrics)
        await self.webhooks.open()
        if self.server is not None:
            self.server.hooks_api = self.webhooks.api(lambda: self.hub.seq, lambda: self.hub.epoch)
        if not self.shared and self.settings.webhooks:
            source = await log_source(self.settings, self.hub)
            await self.webhooks.start(source, epoch=state.epoch, seq=state.seq)
        # ------------------------------------------------------------------------------------
        if self.shared:
            self._spawn(self._follow(state.seq))
            if self.watch:
                self._spawn(self._lead())
        elif self.watch:
            await self._start_watching(fresh=state.fresh)
        if self.server is not None:
            self.server.ingest = self.ingest
        self.ready = True
        logger.info(
            "ready: %d stories, epoch %s, seq %d, backend %s",
            len(self.hub),
            self.hub.epoch,
            self.hub.seq,
            self.log.kind,
        )

    async def _open_log(self) -> LogState:
        """Open the backend; a shared one is retried with backoff until it answers."""
        delay = 0.2
        while True:
            try:
                return await self.log.open()
            except BackendError as exc:
                if not self.shared:
                    raise
                logger.warning("backend unreachable (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _start_watching(self, *, fresh: bool) -> None:
        """Watch, then scan: changes during the scan are seen by both, and diffed once."""
        s = self.settings
        if self.ingest is None:
            return
        repo = Repo(
            s.repo,
            PathRules(s.watch.include, s.watch.exclude),
            max_file_bytes=s.watch.max_file_bytes,
        )
        self.watcher = Watcher(repo, self.ingest, s.watch)
        self._watch_task = asyncio.create_task(self.watcher.run())
        self._watch_task.add_done_callback(_log_crash("watcher"))
        await self.watcher.running.wait()
        # A big tree is parsed in worker processes: they get ready while the walk goes on.
        walked = await asyncio.to_thread(repo.walk, when_big=start_workers)
        rels = sorted(set(walked) | set(self.ingest.index.paths()))
        results = await asyncio.to_thread(parse_tree, repo, rels)
        # With no earlier state there is nothing to tell: index silently (a shared backend
        # gets the whole index). Otherwise what changed while nobody watched is emitted.
        source: Json = {"kind": "fs", "batch": "startup", "startup": True}
        await self.ingest.apply(results, source, emit=not fresh, reseed=fresh and self.shared)
        if fresh and not self.shared:
            self.hub.replace_stories(_stories_of(self.ingest.index))
        self.watcher.initial_done.set()

    async def _stop_watching(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        if self._watch_task is not None:
            try:
                await asyncio.wait_for(self._watch_task, 5)
            except (TimeoutError, asyncio.CancelledError):
                self._watch_task.cancel()
            except Exception:
                logger.exception("watcher failed while stopping")
        self.watcher, self._watch_task = None, None

    # -- shared (Redis) mode --------------------------------------------------------------

    async def _follow(self, after_seq: int) -> None:
        follow = getattr(self.log, "follow")  # noqa: B009 - only shared backends have it
        await follow(after_seq, self.hub.publish, self._on_reset)

    async def _on_reset(self, state: LogState) -> None:
        index = Index.from_records(state.index)
        self.hub.reset(state.epoch, state.seq, _stories_of(index), state.recent)

    async def _shared_index(self) -> Index:
        load = getattr(self.log, "load")  # noqa: B009
        state: LogState = await load(0)
        return Index.from_records(state.index)

    async def _lead(self) -> None:
        """Compete for the watcher lock; while holding it, watch and keep it renewed."""
        log: Any = self.log
        while True:
            try:
                acquired = await log.acquire_lock()
            except BackendError:
                acquired = False
            if not acquired:
                await asyncio.sleep(LOCK_RETRY_S)
                continue
            lost = asyncio.Event()
            try:
                state: LogState = await log.load(0)
                if self.ingest is None:
                    return
                self.ingest.index = Index.from_records(state.index)
                self.ingest.on_lost_lead = lost.set
                logger.info("watcher lock acquired: watching %s", self.settings.repo)
                self.leading = True
                await self._start_watching(fresh=not state.index)
                await self._keep_lock(log, lost)
            except BackendError as exc:
                logger.warning("watcher lock: %s", exc)
            finally:
                self.leading = False
                await self._stop_watching()
            logger.warning("watcher lock lost: this process stops watching")

    async def _keep_lock(self, log: Any, lost: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        renewed = loop.time()
        ttl = 10.0
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), RENEW_EVERY_S)
            if lost.is_set():
                return
            try:
                if not await log.renew_lock():
                    return
                renewed = loop.time()
            except BackendError:
                if loop.time() - renewed > ttl:  # another process may hold it by now
                    return

    # -- queries and control ------------------------------------------------------------

    def health(self) -> tuple[int, Json]:
        backend_ok = self.log.healthy
        if not backend_ok and (self.ready or self.shared):
            status = "degraded"
        else:
            status = "ok" if self.ready else "starting"
        payload: Json = {
            "status": status,
            "stories": len(self.hub),
            "seq": self.hub.seq,
            "epoch": self.hub.epoch or None,
            "connections": self.server.connection_count if self.server else 0,
            "backend": {"kind": self.log.kind, "ok": backend_ok},
        }
        return (200 if status == "ok" else 503), payload

    def _body_of(self, story_id: str) -> str | None:
        story = self.ingest.index.get(story_id) if self.ingest else None
        return story.body if story else None

    def reload_tokens(self, entries: tuple[TokenEntry, ...]) -> int:
        self.tokens = entries
        return self.server.reload_tokens(entries) if self.server else 0

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        task.add_done_callback(_log_crash(getattr(coro, "__name__", "task")))
        self._tasks.append(task)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.webhooks is not None:  # SPEC §10: an attempt in flight is sent again later
            await self.webhooks.close()
        await self._stop_watching()
        if self.ingest is not None:
            await self.ingest.close()
            async with self.ingest.lock:  # let an in-flight append finish
                await self.log.close()
        else:
            await self.log.close()


def _stories_of(index: Index) -> dict[str, Json]:
    return {story_id: story.fields for story_id, story in index.stories.items()}


def _log_crash(name: str) -> Any:
    def check(task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s failed", name, exc_info=task.exception())

    return check
