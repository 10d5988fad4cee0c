"""The event log backends; :func:`open_log` picks one by the settings.

The contract they implement lives in :mod:`storywatch.eventlog`; each backend is imported
only when used (so ``redis`` is not loaded by a sqlite deployment).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from storywatch.config import Settings
    from storywatch.eventlog import EventLog


def open_log(settings: Settings) -> EventLog:
    """The backend named by the settings."""
    kind = settings.backend.kind
    keep_days = settings.catchup_keep_days  # how long tombstones are kept (SPEC §9)
    if kind == "memory":
        from storywatch.log.memory import MemoryLog

        return MemoryLog(buffer_size=settings.backend.buffer_size, keep_days=keep_days)
    if kind == "sqlite":
        from storywatch.log.sqlite import SqliteLog

        return SqliteLog(
            settings.state_path, buffer_size=settings.backend.buffer_size, keep_days=keep_days
        )
    from storywatch.log.redis import RedisLog

    return RedisLog(settings.backend, keep_days=keep_days)
