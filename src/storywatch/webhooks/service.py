"""Lifecycle of the outbound webhooks: open the store, start and stop delivery.

``open_webhooks(settings, metrics)`` picks the hooks' store for the backend; ``open()`` it,
hand ``api(...)`` to the server (every node answers ``/api/hooks`` from the store), and
``start(source, epoch=, seq=)`` delivery in the one process that delivers: the process
itself for memory and sqlite, the elected watcher for Redis (``stop()`` when it loses the
lock; the next leader resumes from the durable cursors). ``close()`` at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from storywatch.metrics import Metrics
from storywatch.webhooks.api import HooksApi
from storywatch.webhooks.config import HookConfig
from storywatch.webhooks.sender import HookRunner, Tail
from storywatch.webhooks.source import HookSource
from storywatch.webhooks.store import HookState, HookStore, MemoryStore, SqliteStore

if TYPE_CHECKING:
    from storywatch.config import Settings

logger = logging.getLogger(__name__)

RESTART_AFTER_S = 5.0  # after an unexpected error in a hook's delivery task


class Webhooks:
    def __init__(
        self,
        hooks: Sequence[HookConfig],
        store: HookStore,
        metrics: Metrics | None = None,
        *,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
        window: int | None = None,
    ) -> None:
        self.hooks = tuple(hooks)
        self.window = window  # backend.buffer_size: behind it, hooks get compacted events
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.jitter = jitter
        self.runners: dict[str, HookRunner] = {}
        self.tail: Tail | None = None
        self._source: HookSource | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        await self.store.open()

    def api(self, latest: Callable[[], int], epoch: Callable[[], str]) -> HooksApi:
        return HooksApi(self.hooks, self.store, latest=latest, epoch=epoch)

    async def start(self, source: HookSource, *, epoch: str, seq: int) -> None:
        """Deliver from now on; ``epoch``/``seq`` are the log's latest when called (a hook
        seen for the first time starts there). ``source`` is the event log (the app's:
        :meth:`stop` leaves it open)."""
        if self._tasks:
            raise RuntimeError("webhooks are already being delivered")
        self._source = source
        if not self.hooks:
            return
        tail = self.tail = Tail(epoch, seq)
        states = await self.store.load([hook.name for hook in self.hooks])
        for hook in self.hooks:
            state = states.get(hook.name)
            if state is None:
                state = HookState(epoch=epoch, cursor=seq)
                await self.store.save(hook.name, state)
                logger.info("webhook %s: new; it starts after seq %d", hook.name, seq)
            elif state.epoch == epoch and state.cursor > seq:
                logger.warning(
                    "webhook %s: its cursor %d is ahead of the log (%d); starting at the log's",
                    hook.name,
                    state.cursor,
                    seq,
                )
                state.cursor = seq
                await self.store.save(hook.name, state)
            self.runners[hook.name] = HookRunner(
                hook,
                state,
                source=source,
                store=self.store,
                tail=tail,
                metrics=self.metrics,
                clock=self.clock,
                jitter=self.jitter,
                window=self.window,
            )
        tail.on_move = self._observe_lags
        self._spawn(source.follow(seq, tail.advance, tail.reset), "webhooks: following the log")
        for name, runner in self.runners.items():
            self._spawn(_supervised(runner), f"webhook {name}")

    async def stop(self) -> None:
        """Stop delivering (an attempt in flight is abandoned: its event is sent again)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.runners.clear()
        self._source = None

    async def close(self) -> None:
        await self.stop()
        await self.store.close()

    def _observe_lags(self) -> None:
        if self.metrics is None:
            return
        for name, runner in self.runners.items():
            self.metrics.webhook_lag.labels(name).set(runner.lag)

    def _spawn(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        task.add_done_callback(_log_crash)
        self._tasks.append(task)


def open_webhooks(
    settings: Settings,
    metrics: Metrics | None = None,
    *,
    fence: Callable[[], str] | None = None,
) -> Webhooks:
    """The hooks of ``settings`` with the store of its backend (nothing is opened yet).
    ``fence``: the watcher lock's token this process holds (Redis: only its holder may
    write the hooks' state)."""
    store: HookStore
    kind = settings.backend.kind
    if not settings.webhooks or kind == "memory":
        store = MemoryStore()  # no hooks: no file, no keys
    elif kind == "sqlite":
        store = SqliteStore(SqliteStore.beside(settings.state_path))
    else:
        from storywatch.webhooks.redis import RedisStore

        store = RedisStore(settings.backend, fence)
    return Webhooks(settings.webhooks, store, metrics, window=settings.backend.buffer_size)


async def _supervised(runner: HookRunner) -> None:
    """A bug in one hook's delivery must not silently end it: log, wait, and go on from
    the runner's cursor (an event it was sending is sent again)."""
    while True:
        try:
            await runner.run()
        except Exception:
            logger.exception("webhook %s: delivery failed; restarting it", runner.hook.name)
            await asyncio.sleep(RESTART_AFTER_S)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("%s failed", task.get_name(), exc_info=task.exception())
