"""Each hook's durable state: cursor, counters, last error, dead letters.

One writer (the sender of the process that delivers); any node may read (``/api/hooks``).
A state is small and written whole after every change, with its new dead letter (if any)
in the same transaction, so a crash never leaves a cursor past an event that was neither
delivered nor kept as a dead letter.

Backends: :class:`MemoryStore` (nothing survives), :class:`SqliteStore` (its own file beside
the log's, see its docstring) and ``storywatch.webhooks.redis.RedisStore``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

from storywatch.errors import BackendError, StateError
from storywatch.events import Json

DEAD_LETTERS_KEPT: Final = 10_000  # per hook; the oldest go first (the count keeps counting)
BUSY_TIMEOUT_S: Final = 5.0
T = TypeVar("T")


@dataclass(slots=True)
class HookState:
    """Where a hook is: ``cursor`` is the last seq of ``epoch`` it is done with."""

    epoch: str
    cursor: int
    delivered: int = 0
    failed: int = 0  # failed attempts
    dead_letters: int = 0
    last_error: Json | None = None  # {"time", "message"} of the last failure since a success
    next_attempt: str | None = None  # ISO-8601, while a retry is waiting

    def to_json(self) -> Json:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Any) -> HookState | None:
        if not isinstance(data, dict):
            return None
        try:
            return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})
        except TypeError:
            return None


def dead_letter(seq: int, kind: str, story_id: str, attempts: int, error: Json | None) -> Json:
    """One entry of ``GET /api/hooks/{name}/dead``."""
    return {
        "seq": seq,
        "type": kind,
        "story_id": story_id,
        "attempts": attempts,
        "last_error": error,
    }


class HookStore(Protocol):
    kind: str

    async def open(self) -> None: ...

    async def load(self, names: Sequence[str]) -> dict[str, HookState]:
        """The stored state of each of ``names`` that has one."""
        ...

    async def save(self, name: str, state: HookState, dead: Json | None = None) -> None:
        """Write the state (and append a dead letter) at once."""
        ...

    async def dead_letters(self, name: str) -> list[Json]:
        """The kept dead letters, oldest first."""
        ...

    async def close(self) -> None: ...


class MemoryStore:
    kind = "memory"

    def __init__(self) -> None:
        self._states: dict[str, Json] = {}
        self._dead: dict[str, list[Json]] = {}

    async def open(self) -> None:
        return None

    async def load(self, names: Sequence[str]) -> dict[str, HookState]:
        out = {}
        for name in names:
            state = HookState.from_json(self._states.get(name))
            if state is not None:
                out[name] = state
        return out

    async def save(self, name: str, state: HookState, dead: Json | None = None) -> None:
        self._states[name] = state.to_json()
        if dead is not None:
            letters = self._dead.setdefault(name, [])
            letters.append(dead)
            del letters[:-DEAD_LETTERS_KEPT]

    async def dead_letters(self, name: str) -> list[Json]:
        return list(self._dead.get(name, ()))

    async def close(self) -> None:
        return None


class SqliteThread:
    """One sqlite connection, created, used and closed in one worker thread."""

    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self._name = name
        self._executor: ThreadPoolExecutor | None = None
        self.conn: sqlite3.Connection | None = None

    async def open(self, prepare: Callable[[sqlite3.Connection], None]) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)
        await self.run(self._connect, prepare)

    def _connect(self, prepare: Callable[[sqlite3.Connection], None]) -> None:
        try:
            self.conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            prepare(self.conn)
        except sqlite3.Error as exc:
            raise StateError(f"cannot use {self.path}: {exc}") from exc

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise RuntimeError(f"{self.path} is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    def require(self) -> sqlite3.Connection:
        if self.conn is None:
            raise RuntimeError(f"{self.path} is not open")
        return self.conn

    async def close(self) -> None:
        if self._executor is None:
            return
        try:
            await self.run(self._close)
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _close(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            conn.close()


_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS hook_state (name TEXT PRIMARY KEY, state TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS hook_dead ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, letter TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS hook_dead_by_name ON hook_dead (name, id)",
)


class SqliteStore:
    """The hooks' state in ``<state file stem>.hooks.db`` beside the log's ``state.db``.

    A file of its own, not tables in ``state.db``: sqlite has one writer per file, and a
    hook writes its cursor after every delivery. In the log's file those writes would queue
    against the watcher's appends (whose busy wait sleeps in milliseconds), so a busy hook
    would delay the watcher. Its own file has its own lock, and the log's "move a corrupt
    file aside" never takes the dead letters with it. WAL with ``synchronous=NORMAL``: a
    commit survives a crash or ``kill -9``; a power cut may lose the last cursor writes,
    which only means those events are delivered again (at least once, never skipped).
    """

    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db = SqliteThread(self.path, "storywatch-hooks")

    @staticmethod
    def beside(state_path: Path) -> Path:
        return state_path.with_name(f"{state_path.stem}.hooks.db")

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self._db.open(_prepare_store)

    async def load(self, names: Sequence[str]) -> dict[str, HookState]:
        return await self._db.run(self._load, list(names))

    def _load(self, names: list[str]) -> dict[str, HookState]:
        conn = self._db.require()
        out = {}
        for name in names:
            row = conn.execute("SELECT state FROM hook_state WHERE name = ?", (name,)).fetchone()
            state = HookState.from_json(_loads(row[0])) if row else None
            if state is not None:
                out[name] = state
        return out

    async def save(self, name: str, state: HookState, dead: Json | None = None) -> None:
        await self._db.run(self._save, name, _dumps(state.to_json()), dead)

    def _save(self, name: str, state: str, dead: Json | None) -> None:
        conn = self._db.require()
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT OR REPLACE INTO hook_state (name, state) VALUES (?, ?)", (name, state)
            )
            if dead is not None:
                conn.execute(
                    "INSERT INTO hook_dead (name, letter) VALUES (?, ?)", (name, _dumps(dead))
                )
                conn.execute(
                    "DELETE FROM hook_dead WHERE name = ? AND id <= (SELECT id FROM hook_dead"
                    " WHERE name = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                    (name, name, DEAD_LETTERS_KEPT),
                )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise BackendError(f"cannot write the hooks' state to {self.path}: {exc}") from exc

    async def dead_letters(self, name: str) -> list[Json]:
        return await self._db.run(self._dead_letters, name)

    def _dead_letters(self, name: str) -> list[Json]:
        rows = self._db.require().execute(
            "SELECT letter FROM hook_dead WHERE name = ? ORDER BY id", (name,)
        )
        return [letter for (text,) in rows if (letter := _loads(text)) is not None]

    async def close(self) -> None:
        await self._db.close()


def _prepare_store(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    for statement in _SCHEMA:
        conn.execute(statement)


def _dumps(value: Json) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _loads(text: Any) -> Json | None:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None
