"""Wiring and lifecycle: open the log → index → initial scan → watcher → server; and back.

Startup order matters: the watcher is observing before the initial scan reads the files,
so nothing changed during the scan is missed, and ``/healthz`` turns 200 only when both are
done. Shutdown is the reverse: stop accepting, close clients with 1001, stop the watcher,
flush and close the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from storywatch.auth import Authenticator, hash_token, new_token
from storywatch.config import Settings, TokenEntry
from storywatch.events import Json
from storywatch.hub import Hub
from storywatch.index import Index
from storywatch.ingest import Ingest
from storywatch.log import EventLog, ReplayBuffer, open_log
from storywatch.metrics import Metrics
from storywatch.paths import PathRules
from storywatch.repo import Repo
from storywatch.server import StoryServer, events_counter
from storywatch.story import ParseError
from storywatch.watcher import Watcher

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
        self.hub: Hub | None = None
        self.index: Index | None = None
        self.ingest: Ingest | None = None
        self.watcher: Watcher | None = None
        self.server: StoryServer | None = None
        self._watch_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        s = self.settings
        state = await self.log.open()
        self.index = Index.from_records(state.index)
        buffer = ReplayBuffer(s.backend.buffer_size, state.epoch, state.seq, state.recent)
        stories = {sid: story.fields for sid, story in self.index.stories.items()}
        self.hub = Hub(buffer, stories)
        self.hub.listeners.append(events_counter(self.metrics))
        self.ingest = Ingest(
            self.index, self.log, self.hub.publish, persist_index=self.log.kind != "memory"
        )
        if self.serve:
            self.server = StoryServer(
                s,
                self.hub,
                self.metrics,
                ingest=self.ingest,
                health=self.health,
                body_of=self._body_of,
                authenticator=Authenticator(self.tokens),
            )
            await self.server.start()
        if self.watch:
            await self._start_watching(fresh=state.fresh)
        self.ready = True
        logger.info(
            "ready: %d stories, epoch %s, seq %d, backend %s",
            len(self.hub),
            self.hub.epoch,
            self.hub.seq,
            self.log.kind,
        )

    async def _start_watching(self, *, fresh: bool) -> None:
        s = self.settings
        assert self.ingest is not None and self.index is not None
        if not s.repo.is_dir():
            from storywatch.errors import ConfigError

            raise ConfigError(f"repo: not a folder: {s.repo}")
        repo = Repo(
            s.repo,
            PathRules(s.watch.include, s.watch.exclude),
            max_file_bytes=s.watch.max_file_bytes,
        )
        self.watcher = Watcher(repo, self.ingest, s.watch)
        self._watch_task = asyncio.create_task(self.watcher.run())
        await self.watcher.running.wait()
        rels = sorted(set(await asyncio.to_thread(repo.walk)) | set(self.index.paths()))
        results = await asyncio.to_thread(repo.read_many, rels)
        for result in results.values():
            if isinstance(result, ParseError) and result.has_front_matter:
                self.metrics.parse_errors.labels(result.reason).inc()
        # A fresh log has no earlier state to compare with: index silently. Otherwise what
        # changed while we were down is emitted, marked as found at startup.
        source: Json = {"kind": "fs", "batch": "startup", "startup": True}
        await self.ingest.apply(results, source, emit=not fresh)
        if fresh and self.hub is not None:
            self.hub.replace_stories({sid: st.fields for sid, st in self.index.stories.items()})
        self.watcher.initial_done.set()

    def health(self) -> tuple[int, Json]:
        hub = self.hub
        backend_ok = self.log.healthy
        status = (
            "ok" if self.ready and backend_ok else ("starting" if not self.ready else "degraded")
        )
        payload: Json = {
            "status": status,
            "stories": len(hub) if hub else 0,
            "seq": hub.seq if hub else 0,
            "epoch": hub.epoch if hub else None,
            "connections": self.server.connection_count if self.server else 0,
            "backend": {"kind": self.log.kind, "ok": backend_ok},
        }
        return (200 if status == "ok" else 503), payload

    def _body_of(self, story_id: str) -> str | None:
        story = self.index.get(story_id) if self.index else None
        return story.body if story else None

    def reload_tokens(self, entries: tuple[TokenEntry, ...]) -> int:
        self.tokens = entries
        return self.server.reload_tokens(entries) if self.server else 0

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close()
        if self.watcher is not None:
            self.watcher.stop()
        if self._watch_task is not None:
            try:
                await asyncio.wait_for(self._watch_task, 5)
            except (TimeoutError, asyncio.CancelledError):
                self._watch_task.cancel()
            except Exception:
                logger.exception("watcher failed while stopping")
        if self.ingest is not None:
            async with self.ingest.lock:  # let an in-flight append finish
                await self.log.close()
        else:
            await self.log.close()
