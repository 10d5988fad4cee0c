"""Wiring and lifecycle: open the log → index → follow → initial scan → watcher → server.

The one way an event travels: file → story → index/diff (the ingest, the write side) →
event log → its followers (the hub, which fans out to the sessions) → sockets. The app
builds each part and hands the read side what it needs through small ports
(:mod:`storywatch.ports`); the parts never reach into each other.

Startup order matters: the server answers first (``/healthz`` says ``starting`` or
``degraded`` while the backend is not there yet), the hub follows the log before anything
is appended, the watcher is observing before the initial scan reads the files (so nothing
changed during the scan is missed), and the app is ready only when all that is done.
Shutdown is the reverse: stop accepting, close clients with 1001, stop the watcher, flush
and close the log.

With Redis, every server follows the shared stream, and processes that may watch compete
for the watcher lock (:class:`~storywatch.leader.Leadership`); the holder diffs its files
against the shared index when it takes over, so no change is lost or reported twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storywatch.auth import Authenticator, hash_token, new_token
from storywatch.catchup import CatchupState
from storywatch.config import Settings
from storywatch.errors import BackendError, ConfigError
from storywatch.eventlog import EventLog, LogState, SharedLog
from storywatch.events import Json
from storywatch.gitlog import git_history
from storywatch.hub import Hub
from storywatch.index import Index
from storywatch.ingest import Ingest
from storywatch.leader import Leadership
from storywatch.log import open_log
from storywatch.metrics import Metrics, events_counter
from storywatch.paths import PathRules
from storywatch.replay import ReplayBuffer
from storywatch.repo import Repo, parse_tree, start_workers
from storywatch.server import StoryServer
from storywatch.values import TokenEntry
from storywatch.watcher import Watcher
from storywatch.webhooks.service import Webhooks, open_webhooks

logger = logging.getLogger(__name__)

GENERATED_TOKEN_NAME = "local"


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
        self.shared: SharedLog | None = self.log if isinstance(self.log, SharedLog) else None
        self.hub = Hub(ReplayBuffer(settings.backend.buffer_size, "", 0))
        self.hub.listeners.append(events_counter(self.metrics))
        self.ingest = Ingest(
            Index(),
            self.log,
            persist_index=self.log.kind != "memory",
            refresh=self._shared_index if self.shared is not None else None,
        )
        self.ingest.on_parse_error = lambda reason: self.metrics.parse_errors.labels(reason).inc()
        self.leadership: Leadership | None = None
        if self.shared is not None and watch:
            self.leadership = Leadership(self.shared, self._lead, self._step_down)
        self.watcher: Watcher | None = None
        self.server: StoryServer | None = None
        # Outbound webhooks (SPEC §10): another follower of the log. Every node answers
        # /api/hooks from the hooks' store; one process delivers (the watcher, on Redis).
        self.webhooks: Webhooks = open_webhooks(settings, self.metrics, fence=self._lock_token)
        self._watch_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        # -- catch-up (SPEC §9): a catch-up request drops expired tombstones in the log too.
        self.hub.on_catchup = self._expire_tombstones
        self._expiring: asyncio.Task[None] | None = None
        self._expire_again = False

    # -- startup --------------------------------------------------------------------------

    async def start(self) -> None:
        if self.watch and not self.settings.repo.is_dir():
            raise ConfigError(f"repo: not a folder: {self.settings.repo}")
        if self.serve:
            self.server = StoryServer(
                self.settings,
                self.hub,
                self.metrics,
                publisher=self.ingest,
                bodies=self.ingest,
                # SPEC §11: the history API reads git in the watched repo (serve: none).
                commits_of=git_history(self.settings.repo) if self.watch else None,
                hooks_api=self.webhooks.api(lambda: self.hub.seq, lambda: self.hub.epoch),
                health=self.health,
                authenticator=Authenticator(self.tokens),
                accepting=lambda: self.ready,
            )
            await self.server.start()
        state = await self._open_log()
        self.ingest.reset(Index.from_records(state.index), state.seq)
        self.hub.load(
            state.epoch, state.seq, state.recent, self.ingest.stories(), self._catchup(state)
        )
        # The hub is a follower of the log like any other reader; it follows from the
        # state it loaded, so nothing appended from now on can slip past it.
        self._spawn("hub", self.log.follow(state.seq, self.hub.publish, self._on_reset))
        await self.webhooks.open()
        if self.shared is None:  # this process writes the log: it delivers (from before
            # the startup scan, so what the scan emits is delivered too)
            await self.webhooks.start(self.log, epoch=state.epoch, seq=state.seq)
        if self.leadership is not None:
            self._spawn("leadership", self.leadership.run())
            await self.leadership.settled.wait()
        elif self.watch:
            await self._start_watching(fresh=state.fresh)
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
                if self.shared is None:
                    raise
                logger.warning("backend unreachable (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _start_watching(self, *, fresh: bool) -> None:
        """Watch, then scan: changes during the scan are seen by both, and diffed once."""
        s = self.settings
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
        rels = sorted(set(walked) | set(self.ingest.paths()))
        results = await asyncio.to_thread(parse_tree, repo, rels)
        # With no earlier state there is nothing to tell: index silently (a shared backend
        # gets the whole index). Otherwise what changed while nobody watched is emitted.
        source: Json = {"kind": "fs", "batch": "startup", "startup": True}
        shared = self.shared is not None
        await self.ingest.apply(results, source, emit=not fresh, reseed=fresh and shared)
        if fresh:
            self.hub.replace_stories(self.ingest.stories())
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

    async def _lead(self, state: LogState, lost: asyncio.Event) -> None:
        """This process took the watcher lock: diff the files against the shared index."""
        self.ingest.reset(Index.from_records(state.index), state.seq)
        self.ingest.on_lost_lead = lost.set
        logger.info("watcher lock acquired: watching %s", self.settings.repo)
        # The elected watcher delivers the webhooks, from their durable cursors.
        await self.webhooks.start(self.log, epoch=state.epoch, seq=state.seq)
        await self._start_watching(fresh=not state.index)

    async def _step_down(self) -> None:
        """The watcher lock is lost: stop watching and delivering (the next leader goes on
        from the durable cursors; an attempt in flight is sent again)."""
        await self.webhooks.stop()
        await self._stop_watching()

    async def _on_reset(self, state: LogState) -> None:
        stories = _stories_of(Index.from_records(state.index))
        if state.epoch == self.hub.epoch:  # the watcher reseeded the index: same stream
            self.hub.replace_stories(stories)
        else:  # history was lost (Redis restarted empty): start over and tell everyone
            self.hub.reset(state.epoch, state.seq, stories, state.recent, self._catchup(state))

    # -- catch-up (SPEC §9) -----------------------------------------------------------

    def _catchup(self, state: LogState) -> CatchupState:
        """What the hub answers catch-ups from: the positions and horizon the log loaded,
        and which story files are broken (read here, from the index records)."""
        return CatchupState.load(
            state.positions,
            state.horizon,
            state.index,
            keep_days=self.settings.catchup_keep_days,
        )

    def _expire_tombstones(self) -> None:
        """A catch-up was asked for: drop the expired tombstones from the log as well (the
        hub already dropped its own). One at a time; a request meanwhile runs it again."""
        if self._expiring is not None and not self._expiring.done():
            self._expire_again = True
            return
        self._expiring = asyncio.get_running_loop().create_task(self._expire())

    async def _expire(self) -> None:
        self._expire_again = True
        while self._expire_again:
            self._expire_again = False
            try:
                await self.log.expire_tombstones()
            except BackendError as exc:  # the next append or request tries again
                logger.warning("cannot drop expired catch-up tombstones: %s", exc)
                return

    def _lock_token(self) -> str:
        return self.shared.lock_token if self.shared is not None else ""

    async def _shared_index(self) -> tuple[Index, int]:
        if self.shared is None:
            return self.ingest.index, self.ingest.last_seq
        state = await self.shared.load(0, positions=False)
        return Index.from_records(state.index), state.seq

    # -- queries and control ------------------------------------------------------------

    def health(self) -> tuple[int, Json]:
        backend_ok = self.log.healthy
        if not backend_ok and (self.ready or self.shared is not None):
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

    def reload_tokens(self, entries: tuple[TokenEntry, ...]) -> int:
        self.tokens = entries
        return self.server.reload_tokens(entries) if self.server else 0

    def _spawn(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        task.add_done_callback(_log_crash(name))
        self._tasks.append(task)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._stop_watching()
        if self._expiring is not None:  # SPEC §9: let a tombstone expiry finish
            with contextlib.suppress(Exception):
                await self._expiring
        await self.webhooks.close()  # SPEC §10: an attempt in flight is sent again later
        await self.ingest.close()
        async with self.ingest.lock:  # let an in-flight append finish
            await self.log.close()


def _stories_of(index: Index) -> dict[str, Json]:
    return {story_id: story.fields for story_id, story in index.stories.items()}


def _log_crash(name: str) -> Any:
    def check(task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s failed", name, exc_info=task.exception())

    return check
