"""Leadership in a shared (Redis) deployment: one process at a time watches the files.

:class:`Leadership` competes for the watcher lock, keeps it renewed while it holds it, and
tells the app when it gained the lock (start watching: diff the files against the shared
index) and when it lost it (stop watching). A renewal that fails for longer than the lock's
TTL means another process may hold it by now: this one steps down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from storywatch.errors import BackendError
from storywatch.eventlog import LogState, SharedLog

logger = logging.getLogger(__name__)

LOCK_RETRY_S: Final = 1.0
RENEW_EVERY_S: Final = 3.0
LOCK_TTL_S: Final = 10.0


class Leadership:
    def __init__(
        self,
        log: SharedLog,
        on_gained: Callable[[LogState, asyncio.Event], Awaitable[None]],
        on_lost: Callable[[], Awaitable[None]],
    ) -> None:
        self.log = log
        self.on_gained = on_gained  # start watching; set the event to step down early
        self.on_lost = on_lost
        self.leading = False
        # Set once the first attempt is settled: the lock was not free, or it was taken
        # and the files were diffed. Until then the process is not ready.
        self.settled = asyncio.Event()

    async def run(self) -> None:
        """Compete for the lock for ever; lead while holding it."""
        while True:
            try:
                acquired = await self.log.acquire_lock()
            except BackendError:
                acquired = False
            if not acquired:
                self.settled.set()
                await asyncio.sleep(LOCK_RETRY_S)
                continue
            lost = asyncio.Event()
            try:
                state = await self.log.load(0)
                self.leading = True
                await self.on_gained(state, lost)
                self.settled.set()
                await self._keep(lost)
            except BackendError as exc:
                logger.warning("watcher lock: %s", exc)
            finally:
                self.leading = False
                self.settled.set()
                await self.on_lost()
            logger.warning("watcher lock lost: this process stops watching")

    async def _keep(self, lost: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        renewed = loop.time()
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), RENEW_EVERY_S)
            if lost.is_set():
                return
            try:
                if not await self.log.renew_lock():
                    return
                renewed = loop.time()
            except BackendError:
                if loop.time() - renewed > LOCK_TTL_S:  # another process may hold it by now
                    return
