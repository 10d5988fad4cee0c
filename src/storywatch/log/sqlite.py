"""The sqlite backend (the default): history, epoch, seq and the index survive restarts.

One file, ``<repo>/.storywatch/state.db`` by default, with four tables::

    meta           key TEXT PRIMARY KEY, value    schema_version, epoch, seq, horizon
    events         seq INTEGER PRIMARY KEY, data  the event JSON (``Event.data``)
    index_entries  path TEXT PRIMARY KEY, record  the index record JSON of one path
    positions      story_id TEXT PRIMARY KEY,     per story (SPEC §9): the seq of its last
                   seq, epics, deleted_at         event, every epic it had (JSON), and for a
                                                  tombstone the Unix time it was deleted

Schema version 2 added ``positions`` and ``meta.horizon``; a version-1 file is upgraded in
place at open, its positions seeded from the events it still holds (the horizon is then the
seq before the oldest of them: nothing older was known).

Webhooks (SPEC §10) add, within schema version 2, ``positions.event`` — the story's last
event as logged (its wire JSON, written in the append's transaction) — and an index on
``positions.seq``, so a hook behind the replay window gets each changed story's latest event
(:meth:`SqliteLog.latest_events_after`). A file without them gets them at open, filled from
the events it still holds; storywatch versions without them ignore the column.

Durability. The file is in WAL mode with ``synchronous=FULL``: every commit fsyncs the WAL
before ``COMMIT`` returns, so an event is on disk — surviving a power cut as well as a
crash — before :meth:`SqliteLog.append` returns it. ``NORMAL`` with WAL skips that fsync and
only survives a process crash: after a power loss the last commits can vanish, the same
epoch would then hand out those seqs again for other events, and a client that saw the lost
ones would resume from a cursor that now means something else. One fsync per append (not
per event: a batch of drafts is one commit) is the price of never doing that.
An append is one transaction: the numbered events, the index records, ``meta.seq`` and the
trim of the replay window commit together or not at all.

Threads. sqlite calls block, so they all run in one dedicated worker thread that owns the
connection (created there, used only there, closed there). The asyncio loop only awaits
them. One worker also serializes appends: they run, and are numbered, in the order they are
called. An append whose write has started is not undone by cancelling its caller.

Errors. A write the file system refuses for now (disk full, I/O error, locked) is a
:class:`BackendError`: the caller keeps the batch and retries. A batch that can never be
written (a value that cannot be encoded, a constraint) is a :class:`RefusedError`. Either
way the transaction is rolled back first, so nothing of a failed append is half there.

Bad state. A file that is not ours (not sqlite, another program's database), or that sqlite
finds corrupt or truncated, is moved aside to ``state.db.corrupt-<unix time>`` with one
warning, and a new epoch starts (clients resync). A file written by a newer storywatch is
never touched: that, and a folder or file we cannot open or write, is a :class:`StateError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar

from storywatch.catchup import DAY_S, DEFAULT_KEEP_DAYS, Position, advance
from storywatch.errors import BackendError, RefusedError, StateError
from storywatch.eventlog import (
    IndexRecords,
    LocalFollowers,
    LogState,
    OnEvents,
    OnReset,
    check_encodable,
    new_epoch,
)
from storywatch.events import Draft, Event, Json, number, utc_now_iso

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 2
# PRAGMA application_id: marks the file as ours ("SWT1"), so a foreign db is told apart.
APPLICATION_ID: Final = 0x53575431
BUSY_TIMEOUT_S: Final = 5.0
# sqlite primary result codes that mean "the file's content is bad", not "we can't use it".
_CORRUPT_CODES: Final = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_TABLES_V1: Final = frozenset({"meta", "events", "index_entries"})
_TABLES: Final = _TABLES_V1 | {"positions"}
# -- catch-up (SPEC §9): positions, and an index of the tombstones by deletion time.
_POSITIONS_SCHEMA: Final = (
    "CREATE TABLE positions (story_id TEXT PRIMARY KEY, seq INTEGER NOT NULL,"
    " epics TEXT NOT NULL, deleted_at REAL) WITHOUT ROWID",
    "CREATE INDEX positions_tombstones ON positions (deleted_at) WHERE deleted_at IS NOT NULL",
)
_SCHEMA: Final = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value NOT NULL)",
    "CREATE TABLE events (seq INTEGER PRIMARY KEY, data TEXT NOT NULL)",
    "CREATE TABLE index_entries (path TEXT PRIMARY KEY, record TEXT NOT NULL)",
    *_POSITIONS_SCHEMA,
)
_IN_BATCH: Final = 500  # ids per `IN (...)` look-up
# -- webhooks (SPEC §10): positions.event (a column added at open) is ordered by seq.
_BY_SEQ_INDEX: Final = "CREATE INDEX IF NOT EXISTS positions_by_seq ON positions (seq)"

T = TypeVar("T")


class _Unusable(Exception):
    """The state file's content cannot be trusted: move it aside and start over."""


class SqliteLog:
    kind = "sqlite"

    def __init__(
        self,
        path: Path,
        *,
        buffer_size: int,
        keep_days: float = DEFAULT_KEEP_DAYS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.buffer_size = buffer_size
        self.keep_days = keep_days  # tombstones older than this go at the next append
        self._clock = clock
        self._horizon = 0
        self._executor: ThreadPoolExecutor | None = None
        # Owned by the worker thread once open.
        self._conn: sqlite3.Connection | None = None
        self._epoch = ""
        self._seq = 0
        self._healthy = False
        self._followers = LocalFollowers()

    @property
    def healthy(self) -> bool:
        """Open, and the last write succeeded."""
        return self._healthy

    async def open(self) -> LogState:
        if self._executor is not None:
            raise RuntimeError("the sqlite log is already open")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="storywatch-sqlite")
        try:
            state = await self._run(self._open_sync)
        except BaseException:
            try:
                await self._run(self._close_sync)
            finally:
                self._shutdown()
            raise
        self._healthy = True
        return state

    async def append(
        self,
        drafts: Sequence[Draft],
        source: Json,
        index: IndexRecords | None = None,
        *,
        reseed: bool = False,  # only shared backends replace their index wholesale
    ) -> list[Event]:
        """Number the drafts and make them (and the index records) durable in one commit."""
        if not drafts and not index:
            return []
        events = await self._run(self._append_sync, list(drafts), source, dict(index or {}))
        if events:
            await self._followers.deliver(events)
        return events

    async def follow(self, after_seq: int, on_events: OnEvents, on_reset: OnReset) -> None:
        await self._followers.follow(after_seq, on_events, self.read_after)

    async def read_after(self, after_seq: int, limit: int) -> list[Event]:
        if after_seq >= self._seq:
            return []
        return await self._run(self._read_after_sync, after_seq, limit)

    async def expire_tombstones(self) -> int:
        """Drop the tombstones that expired by now (SPEC §9); the horizon after."""
        return await self._run(self._expire_sync)

    async def latest_events_after(self, after_seq: int, limit: int) -> list[Event]:
        """Each story's last event with seq > ``after_seq`` (SPEC §10), oldest first."""
        if after_seq >= self._seq:
            return []
        return await self._run(self._latest_after_sync, after_seq, limit)

    async def close(self) -> None:
        if self._executor is None:
            return
        try:
            await self._run(self._close_sync)
        finally:
            self._shutdown()

    # -- the loop side ------------------------------------------------------------------

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise RuntimeError("the sqlite log is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    def _shutdown(self) -> None:
        self._healthy = False
        if self._executor is not None:
            self._executor.shutdown(wait=True)  # idle by now: the close job has run
            self._executor = None

    # -- the worker side: everything below runs in the worker thread --------------------

    def _open_sync(self) -> LogState:
        self._prepare_folder()
        try:
            return self._load()
        except _Unusable as bad:
            self._close_sync()
            aside = self._move_aside()
            try:
                state = self._load()
            except _Unusable as again:  # a file we just created: never loop on it
                raise StateError(f"cannot create a state file at {self.path}: {again}") from again
            log.warning(
                "state file %s is unusable (%s); moved it to %s and started a new epoch %s",
                self.path,
                bad,
                aside.name,
                state.epoch,
            )
            return state

    def _prepare_folder(self) -> None:
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create the state folder {folder}: {_reason(exc)}") from exc
        if not os.access(folder, os.W_OK | os.X_OK):
            raise StateError(f"the state folder {folder} is not writable")
        if self.path.is_dir():
            raise StateError(f"the state file {self.path} is a directory")
        if folder.name == ".storywatch":
            ignore = folder / ".gitignore"
            try:
                if not ignore.exists():
                    ignore.write_text("*\n", encoding="utf-8")
            except OSError as exc:
                raise StateError(f"cannot write {ignore}: {_reason(exc)}") from exc

    def _load(self) -> LogState:
        """Open the file, creating the schema if it is new; _Unusable if it is bad."""
        try:
            self._conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            conn = self._conn
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            tables = {
                row[0]
                for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            if not tables and app_id == 0:
                return self._create()
            if app_id != APPLICATION_ID or "meta" not in tables:
                raise _Unusable("not a storywatch state file")
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            version = meta.get("schema_version")
            if isinstance(version, int) and version > SCHEMA_VERSION:
                raise StateError(
                    f"the state file {self.path} has a newer schema (version {version}; this "
                    f"storywatch knows {SCHEMA_VERSION}); refusing to overwrite it: upgrade "
                    "storywatch or move the file away"
                )
            upgrade = version == 1 and tables >= _TABLES_V1
            if not upgrade and (version != SCHEMA_VERSION or not tables >= _TABLES):
                raise _Unusable(f"unknown schema version {version!r}")
            problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise _Unusable(f"integrity check failed: {problems[0]}")
            self._configure()
            if upgrade:
                meta = self._upgrade_from_v1(meta)
            self._add_last_events()
            return self._read(meta)
        except sqlite3.Error as exc:
            code = getattr(exc, "sqlite_errorcode", None)
            if code is not None and code & 0xFF in _CORRUPT_CODES:
                raise _Unusable(str(exc)) from exc
            raise StateError(f"cannot use the state file {self.path}: {exc}") from exc

    def _configure(self) -> None:
        conn = self._require_conn()
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":  # e.g. a file system without shared memory; FULL still holds
            log.warning("state file %s: WAL is unavailable, using journal mode %s", self.path, mode)
        conn.execute("PRAGMA synchronous = FULL")

    def _create(self) -> LogState:
        conn = self._require_conn()
        self._configure()
        epoch = new_epoch()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("schema_version", SCHEMA_VERSION), ("epoch", epoch), ("seq", 0), ("horizon", 0)],
            )
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        self._add_last_events()
        self._epoch, self._seq = epoch, 0
        return LogState(epoch=epoch, seq=0, fresh=True)

    def _read(self, meta: dict[str, Any]) -> LogState:
        conn = self._require_conn()
        epoch, seq = meta.get("epoch"), meta.get("seq")
        if not isinstance(epoch, str) or not epoch or not isinstance(seq, int) or seq < 0:
            raise _Unusable(f"bad meta epoch={epoch!r} seq={seq!r}")
        rows = conn.execute(
            "SELECT seq, data FROM events ORDER BY seq DESC LIMIT ?", (self.buffer_size,)
        ).fetchall()
        rows.reverse()
        recent = [_stored_event(stored_seq, epoch, text) for stored_seq, text in rows]
        expected = list(range(seq - len(recent) + 1, seq + 1))
        if [event.seq for event in recent] != expected:
            raise _Unusable(f"events do not end contiguously at seq {seq}")
        index: dict[str, Json] = {}
        for path, text in conn.execute("SELECT path, record FROM index_entries"):
            record = _json_object(text)
            if not isinstance(path, str) or record is None:
                raise _Unusable(f"bad index record for {path!r}")
            index[path] = record
        positions, horizon = self._read_positions(meta)
        self._trim(conn, seq)  # the window may have shrunk since the last run
        self._epoch, self._seq, self._horizon = epoch, seq, horizon
        return LogState(
            epoch=epoch,
            seq=seq,
            recent=recent,
            index=index,
            fresh=False,
            positions=positions,
            horizon=horizon,
        )

    def _trim(self, conn: sqlite3.Connection, seq: int) -> None:
        conn.execute("DELETE FROM events WHERE seq <= ?", (seq - self.buffer_size,))

    def _move_aside(self) -> Path:
        stamp = int(time.time())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 0
        while aside.exists():
            n += 1
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        try:
            self.path.rename(aside)
            # A stale WAL next to a new file would be replayed into it: it goes too.
            for suffix in ("-wal", "-shm", "-journal"):
                sidecar = self.path.with_name(self.path.name + suffix)
                if sidecar.exists():
                    sidecar.rename(aside.with_name(aside.name + suffix))
        except OSError as exc:
            raise StateError(
                f"cannot move the bad state file {self.path} aside: {_reason(exc)}"
            ) from exc
        return aside

    def _append_sync(self, drafts: list[Draft], source: Json, index: IndexRecords) -> list[Event]:
        conn = self._require_conn()
        now = utc_now_iso()
        events = [
            number(draft, self._seq + i, self._epoch, now, source)
            for i, draft in enumerate(drafts, start=1)
        ]
        # Encode before the transaction: a bad value fails here and the file is untouched.
        # The stored text is the wire encoding, computed once and cached on the event.
        check_encodable(events, index)
        rows = [(event.seq, event.encoded()) for event in events]
        upserts = [
            (path, json.dumps(record, ensure_ascii=False, separators=(",", ":")))
            for path, record in index.items()
            if record is not None
        ]
        deletes = [(path,) for path, record in index.items() if record is None]
        seq = events[-1].seq if events else self._seq
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO events (seq, data) VALUES (?, ?)", rows)
            conn.executemany(
                "INSERT OR REPLACE INTO index_entries (path, record) VALUES (?, ?)", upserts
            )
            conn.executemany("DELETE FROM index_entries WHERE path = ?", deletes)
            horizon = self._write_positions(conn, events)  # SPEC §9, in the same commit
            _write_last_events(conn, events)  # SPEC §10, likewise
            if events:
                conn.execute("UPDATE meta SET value = ? WHERE key = 'seq'", (seq,))
                self._trim(conn, seq)
            conn.execute("COMMIT")
        except (sqlite3.DataError, sqlite3.ProgrammingError, sqlite3.InterfaceError) as exc:
            _rollback(conn)  # this batch itself (too big, a value sqlite cannot bind)
            raise RefusedError(f"the state file refused a batch: {exc}") from exc
        except sqlite3.Error as exc:  # full, I/O, locked, a conflict: the file, for now
            _rollback(conn)
            self._healthy = False
            raise BackendError(f"cannot write the state file {self.path}: {exc}") from exc
        except Exception as exc:  # anything else is about this batch: never retried
            _rollback(conn)
            raise RefusedError(f"the state file refused a batch: {exc}") from exc
        self._seq, self._horizon = seq, horizon
        self._healthy = True
        return events

    def _read_after_sync(self, after_seq: int, limit: int) -> list[Event]:
        conn = self._require_conn()
        rows = conn.execute(
            "SELECT seq, data FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
        ).fetchall()
        return [_stored_event(seq, self._epoch, text) for seq, text in rows]

    # -- catch-up positions (SPEC §9) ----------------------------------------------------

    def _write_positions(self, conn: sqlite3.Connection, events: list[Event]) -> int:
        """Inside an append's transaction: drop expired tombstones, then record where each
        story of ``events`` ended. Returns the horizon after."""
        horizon = self._drop_expired(conn)
        if events:
            ids = list(dict.fromkeys(event.story_id for event in events))
            updates = advance(_positions_of(conn, ids), (event.data for event in events))
            conn.executemany(
                "INSERT OR REPLACE INTO positions (story_id, seq, epics, deleted_at)"
                " VALUES (?, ?, ?, ?)",
                [_position_row(story_id, p) for story_id, p in updates.items()],
            )
        return horizon

    def _drop_expired(self, conn: sqlite3.Connection) -> int:
        cutoff = self._clock() - self.keep_days * DAY_S
        # Not DELETE … RETURNING: that needs sqlite 3.35, older than some Pythons ship.
        expired = "FROM positions WHERE deleted_at IS NOT NULL AND deleted_at <= ?"
        (newest,) = conn.execute(f"SELECT max(seq) {expired}", (cutoff,)).fetchone()
        if newest is None:
            return self._horizon
        conn.execute(f"DELETE {expired}", (cutoff,))
        horizon = max(self._horizon, int(newest))
        conn.execute("UPDATE meta SET value = ? WHERE key = 'horizon'", (horizon,))
        return horizon

    def _expire_sync(self) -> int:
        conn = self._require_conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            horizon = self._drop_expired(conn)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(conn)
            raise BackendError(f"cannot write the state file {self.path}: {exc}") from exc
        self._horizon = horizon
        return horizon

    def _read_positions(self, meta: dict[str, Any]) -> tuple[dict[str, Position], int]:
        conn = self._require_conn()
        horizon = meta.get("horizon")
        if not isinstance(horizon, int) or isinstance(horizon, bool) or horizon < 0:
            raise _Unusable(f"bad meta horizon={horizon!r}")
        positions: dict[str, Position] = {}
        rows = conn.execute("SELECT story_id, seq, epics, deleted_at FROM positions ORDER BY seq")
        for story_id, seq, epics, deleted_at in rows:
            position = _position(seq, epics, deleted_at)
            if not isinstance(story_id, str) or position is None:
                raise _Unusable(f"bad position for {story_id!r}")
            positions[story_id] = position
        return positions, horizon

    def _upgrade_from_v1(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Add the positions (schema 2) to a version-1 file, seeded from its events."""
        conn = self._require_conn()
        rows = conn.execute("SELECT seq, data FROM events ORDER BY seq").fetchall()
        events: list[Json] = []
        for stored_seq, text in rows:
            data = _json_object(text)
            if data is None or data.get("seq") != stored_seq:
                raise _Unusable(f"bad event at seq {stored_seq!r}")
            events.append(data)
        seq = meta.get("seq")
        if not isinstance(seq, int) or seq < 0:
            raise _Unusable(f"bad meta seq={seq!r}")
        horizon = rows[0][0] - 1 if rows else seq
        updates = advance({}, events)
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _POSITIONS_SCHEMA:
                conn.execute(statement)
            conn.executemany(
                "INSERT INTO positions (story_id, seq, epics, deleted_at) VALUES (?, ?, ?, ?)",
                [_position_row(story_id, p) for story_id, p in updates.items()],
            )
            conn.execute("INSERT INTO meta (key, value) VALUES ('horizon', ?)", (horizon,))
            conn.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,)
            )
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        log.info(
            "state file %s upgraded to schema version %d (catch-up positions)",
            self.path,
            SCHEMA_VERSION,
        )
        return dict(conn.execute("SELECT key, value FROM meta").fetchall())

    # -- each story's last event (webhooks, SPEC §10) ------------------------------------

    def _add_last_events(self) -> None:
        """Give a file without them ``positions.event`` and the index by seq, the events
        filled in from those the file still holds (older ones are not known any more)."""
        conn = self._require_conn()
        columns = {row[1] for row in conn.execute("PRAGMA table_info(positions)")}
        if "event" in columns:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("ALTER TABLE positions ADD COLUMN event TEXT")
            conn.execute(_BY_SEQ_INDEX)
            conn.execute(
                "UPDATE positions SET event ="
                " (SELECT data FROM events WHERE events.seq = positions.seq)"
            )
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    def _latest_after_sync(self, after_seq: int, limit: int) -> list[Event]:
        conn = self._require_conn()
        # COALESCE: a row written by a storywatch without the column has none, and its
        # event may still be in the replay window.
        rows = conn.execute(
            "SELECT p.seq, COALESCE(p.event, e.data) FROM positions AS p"
            " LEFT JOIN events AS e ON e.seq = p.seq"
            " WHERE p.seq > ? ORDER BY p.seq LIMIT ?",
            (after_seq, limit),
        ).fetchall()
        out: list[Event] = []
        for seq, text in rows:
            try:
                out.append(_stored_event(seq, self._epoch, text))
            except _Unusable:  # not known any more (see _add_last_events), or damaged
                log.warning("state file %s: no last event kept for seq %s", self.path, seq)
        return out

    def _close_sync(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def _require_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the sqlite log is not open")
        return self._conn


def _write_last_events(conn: sqlite3.Connection, events: list[Event]) -> None:
    """Inside an append's transaction, after the positions: each story's last event."""
    last = {event.story_id: event for event in events}  # the later one wins
    conn.executemany(
        "UPDATE positions SET event = ? WHERE story_id = ?",
        [(event.encoded(), story_id) for story_id, event in last.items()],
    )


def _stored_event(seq: Any, epoch: str, text: Any) -> Event:
    data = _json_object(text)
    if data is None or data.get("seq") != seq or data.get("epoch") != epoch:
        raise _Unusable(f"bad event at seq {seq!r}")
    # The stored text is the wire encoding; reuse it rather than re-encode at startup.
    return Event(seq=seq, epoch=epoch, data=data, _encoded=[text.rstrip()])


def _positions_of(conn: sqlite3.Connection, ids: list[str]) -> dict[str, Position]:
    out: dict[str, Position] = {}
    for start in range(0, len(ids), _IN_BATCH):
        batch = ids[start : start + _IN_BATCH]
        marks = ",".join("?" * len(batch))
        query = (
            f"SELECT story_id, seq, epics, deleted_at FROM positions WHERE story_id IN ({marks})"
        )
        for story_id, seq, epics, deleted_at in conn.execute(query, batch):
            position = _position(seq, epics, deleted_at)
            if position is not None:  # a bad row is rewritten from what the events say
                out[story_id] = position
    return out


def _position(seq: Any, epics: Any, deleted_at: Any) -> Position | None:
    listed = _json_list(epics)
    if not isinstance(seq, int) or seq < 0 or listed is None:
        return None
    if deleted_at is not None and not isinstance(deleted_at, int | float):
        return None
    return Position(seq, frozenset(listed), None if deleted_at is None else float(deleted_at))


def _position_row(story_id: str, position: Position) -> tuple[str, int, str, float | None]:
    epics = json.dumps(sorted(position.epics), ensure_ascii=False, separators=(",", ":"))
    return (story_id, position.seq, epics, position.deleted_at)


def _json_list(text: Any) -> list[str] | None:
    if not isinstance(text, str):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return None
    return value


def _json_object(text: Any) -> Json | None:
    if not isinstance(text, str):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        # sqlite may have rolled back by itself already (e.g. disk full).
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
