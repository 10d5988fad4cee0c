"""Full garbage collections at quiet moments, not in the middle of a fan-out.

CPython starts a full (generation 2) collection whenever enough objects have survived into
the oldest generation. With a thousand connections open that pass walks every one of their
objects and holds the event loop for 30–80 ms — and it lands on whatever event happens to be
on its way, which is what a p99 latency is made of. So the daemon decides when:

- once ready, everything built at startup (modules, config, the initial index) is collected
  once and then frozen: it lives as long as the process and is never walked again;
- the interpreter's own full collections become rare (young generations are collected as
  usual, which is where most cyclic garbage dies);
- :class:`GcPacer` runs the full collection itself after ``QUIET_S`` without events, at most
  every ``MIN_INTERVAL_S`` — and at the latest every ``MAX_INTERVAL_S``, however busy, so the
  memory of closed connections is always given back.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from typing import Final

logger = logging.getLogger(__name__)

QUIET_S: Final = 1.0
MIN_INTERVAL_S: Final = 30.0
MAX_INTERVAL_S: Final = 300.0
CHECK_EVERY_S: Final = 0.5
# The third threshold counts young collections between full ones (default 10); at 10 000 the
# interpreter's own full collection comes long after the pacer's.
OLDEST_THRESHOLD: Final = 10_000


def freeze_startup() -> None:
    """Collect once and move every object alive now out of the collector's sight."""
    gc.collect()
    gc.freeze()


class GcPacer:
    def __init__(
        self,
        last_activity: Callable[[], float],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.last_activity = last_activity  # on ``clock``: when the last event was handled
        self.clock = clock
        self.last_full = clock()
        self.collections = 0

    def due(self) -> bool:
        now = self.clock()
        since = now - self.last_full
        if since >= MAX_INTERVAL_S:
            return True
        return since >= MIN_INTERVAL_S and now - self.last_activity() >= QUIET_S

    def collect(self) -> float:
        """One full collection now; its duration in seconds."""
        started = time.perf_counter()
        found = gc.collect()
        took = time.perf_counter() - started
        self.last_full = self.clock()
        self.collections += 1
        logger.debug("full garbage collection: %d objects, %.1f ms", found, took * 1000)
        return took

    async def run(self) -> None:
        young, middle, oldest = gc.get_threshold()
        gc.set_threshold(young, middle, OLDEST_THRESHOLD)
        try:
            while True:
                await asyncio.sleep(CHECK_EVERY_S)
                if self.due():
                    self.collect()
        finally:
            gc.set_threshold(young, middle, oldest)
