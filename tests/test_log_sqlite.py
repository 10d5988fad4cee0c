"""The sqlite backend: durable history, epoch, seq and index; bad state files; crashes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from storywatch.errors import BackendError, StateError
from storywatch.eventlog import LogState
from storywatch.events import Draft, Event
from storywatch.log.sqlite import SCHEMA_VERSION, SqliteLog

SRC = Path(__file__).resolve().parents[1] / "src"
SOURCE = {"kind": "watch", "commit": None}


def draft(n: int, status: str = "todo") -> Draft:
    story = {"id": f"S-{n}", "title": f"Story {n} — ünïcode", "status": status}
    return Draft(
        type="story.created", story_id=f"S-{n}", path=f"stories/{n}.md", story=story, changes={}
    )


def record(n: int, status: str = "todo") -> dict[str, object]:
    story = {"id": f"S-{n}", "title": f"Story {n}", "status": status, "path": f"stories/{n}.md"}
    return {"role": "owner", "id": f"S-{n}", "story": story, "body": "text\n"}


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    return tmp_path / "repo" / ".storywatch" / "state.db"


@contextlib.asynccontextmanager
async def opened(path: Path, buffer_size: int = 100) -> AsyncIterator[tuple[SqliteLog, LogState]]:
    log = SqliteLog(path, buffer_size=buffer_size)
    state = await log.open()
    try:
        yield log, state
    finally:
        await log.close()


@contextlib.contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        yield conn


def stored(events: list[Event]) -> list[tuple[int, str, object]]:
    """What the log keeps of events (not per-process fields such as ``born``)."""
    return [(e.seq, e.epoch, e.data) for e in events]


def aside_files(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".corrupt-*"))


# -- normal life ------------------------------------------------------------------------


async def test_fresh_open_creates_schema_and_epoch(state_path: Path) -> None:
    log = SqliteLog(state_path, buffer_size=10)
    assert log.kind == "sqlite"
    assert not log.healthy
    state = await log.open()
    try:
        assert log.healthy
        assert state.fresh
        assert state.seq == 0
        assert state.recent == [] and state.index == {}
        assert len(state.epoch) == 8
    finally:
        await log.close()
    assert not log.healthy
    with raw(state_path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"meta", "events", "index_entries"} <= tables
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        assert meta == {
            "schema_version": SCHEMA_VERSION,
            "epoch": state.epoch,
            "seq": 0,
            "horizon": 0,
        }
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_append_then_reopen_keeps_epoch_seq_and_events(state_path: Path) -> None:
    async with opened(state_path) as (log, state):
        first = await log.append([draft(1), draft(2)], SOURCE)
        second = await log.append([draft(3)], {"kind": "startup"})
        assert [e.seq for e in first + second] == [1, 2, 3]
        assert {e.epoch for e in first + second} == {state.epoch}
        assert first[0].data["seq"] == 1 and first[0].data["source"] == SOURCE
        assert first[0].data["time"] == first[1].data["time"]  # one batch, one time
    async with opened(state_path) as (log, again):
        assert not again.fresh
        assert again.epoch == state.epoch
        assert again.seq == 3
        assert stored(again.recent) == stored(first + second)
        # the stored text is reused as the wire encoding; it must be byte-identical
        assert [e.encoded() for e in again.recent] == [e.encoded() for e in first + second]
        more = await log.append([draft(4)], SOURCE)
        assert [e.seq for e in more] == [4]
        assert more[0].epoch == state.epoch


async def test_concurrent_appends_are_serialized_in_call_order(state_path: Path) -> None:
    async with opened(state_path) as (log, _):
        batches = await asyncio.gather(
            *(log.append([draft(i), draft(i)], SOURCE) for i in range(20))
        )
        seqs = [e.seq for batch in batches for e in batch]
        assert seqs == list(range(1, 41))
        assert [batch[0].story_id for batch in batches] == [f"S-{i}" for i in range(20)]
    async with opened(state_path) as (_, state):
        assert state.seq == 40 and [e.seq for e in state.recent] == seqs


async def test_buffer_is_trimmed_to_buffer_size(state_path: Path) -> None:
    async with opened(state_path, buffer_size=5) as (log, _):
        for n in range(1, 13, 3):
            await log.append([draft(n), draft(n + 1), draft(n + 2)], SOURCE)
    with raw(state_path) as conn:
        assert [r[0] for r in conn.execute("SELECT seq FROM events ORDER BY seq")] == [
            8,
            9,
            10,
            11,
            12,
        ]
    async with opened(state_path, buffer_size=5) as (_, state):
        assert state.seq == 12
        assert [e.seq for e in state.recent] == [8, 9, 10, 11, 12]
    async with opened(state_path, buffer_size=3) as (_, state):  # the window shrank
        assert [e.seq for e in state.recent] == [10, 11, 12]
    with raw(state_path) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 3


async def test_index_records_persist_update_and_delete(state_path: Path) -> None:
    async with opened(state_path) as (log, _):
        await log.append(
            [draft(1), draft(2)], SOURCE, {"stories/1.md": record(1), "stories/2.md": record(2)}
        )
        # no events, only index records: still persisted
        assert await log.append([], SOURCE, {"stories/3.md": record(3)}) == []
        assert await log.append([], SOURCE) == []
    async with opened(state_path) as (log, state):
        assert state.seq == 2
        assert state.index == {
            "stories/1.md": record(1),
            "stories/2.md": record(2),
            "stories/3.md": record(3),
        }
        await log.append(
            [draft(1, "done")],
            SOURCE,
            {"stories/1.md": record(1, "done"), "stories/2.md": None, "stories/gone.md": None},
        )
    async with opened(state_path) as (_, state):
        assert state.seq == 3
        assert state.index == {"stories/1.md": record(1, "done"), "stories/3.md": record(3)}


async def test_failed_append_rolls_back_and_marks_unhealthy(state_path: Path) -> None:
    async with opened(state_path) as (log, _):
        await log.append([draft(1)], SOURCE, {"stories/1.md": record(1)})
        with raw(state_path) as conn:  # another writer takes seq 2 behind our back
            conn.execute("INSERT INTO events (seq, data) VALUES (2, '{}')")
        with pytest.raises(BackendError, match="UNIQUE"):
            await log.append([draft(2)], SOURCE, {"stories/2.md": record(2)})
        assert not log.healthy
        with raw(state_path) as conn:
            assert conn.execute("SELECT count(*) FROM index_entries").fetchone()[0] == 1
            assert dict(conn.execute("SELECT key, value FROM meta"))["seq"] == 1
            conn.execute("DELETE FROM events WHERE seq = 2")
        events = await log.append([draft(2)], SOURCE)
        assert [e.seq for e in events] == [2]  # the failed batch consumed no seq
        assert log.healthy


async def test_gitignore_in_default_folder(state_path: Path, tmp_path: Path) -> None:
    async with opened(state_path):
        pass
    assert (state_path.parent / ".gitignore").read_text() == "*\n"

    elsewhere = tmp_path / "var" / "state.db"
    async with opened(elsewhere):
        pass
    assert elsewhere.exists()
    assert not (elsewhere.parent / ".gitignore").exists()

    custom = tmp_path / "other" / ".storywatch"
    custom.mkdir(parents=True)
    (custom / ".gitignore").write_text("*\n!keep\n")
    async with opened(custom / "state.db"):
        pass
    assert (custom / ".gitignore").read_text() == "*\n!keep\n"  # not overwritten


# -- bad state files --------------------------------------------------------------------


async def make_history(path: Path, count: int = 200) -> str:
    async with opened(path, buffer_size=1000) as (log, state):
        await log.append(
            [draft(n) for n in range(count)],
            SOURCE,
            {f"stories/{n}.md": record(n) for n in range(count)},
        )
        return state.epoch


async def assert_moved_aside(
    path: Path, caplog: pytest.LogCaptureFixture, old_epoch: str | None = None
) -> None:
    with caplog.at_level(logging.WARNING, logger="storywatch.log.sqlite"):
        async with opened(path) as (log, state):
            assert state.fresh and state.seq == 0 and state.recent == [] and state.index == {}
            assert state.epoch != old_epoch
            assert log.healthy
            assert [e.seq for e in await log.append([draft(1)], SOURCE)] == [1]
    warnings = [r for r in caplog.records if r.name == "storywatch.log.sqlite"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    message = warnings[0].getMessage()
    assert "\n" not in message and "unusable" in message and "new epoch" in message
    assert [p.name for p in aside_files(path)] == [
        n for n in os.listdir(path.parent) if ".corrupt-" in n and not n.endswith(("wal", "shm"))
    ]
    (aside,) = aside_files(path)
    assert aside.name.startswith("state.db.corrupt-")
    assert abs(int(aside.name.rsplit("-", 1)[1]) - time.time()) < 60
    async with opened(path) as (_, state):  # the new file is a good one
        assert not state.fresh and state.seq == 1


async def test_random_bytes_file_is_moved_aside(
    state_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state_path.parent.mkdir(parents=True)
    junk = os.urandom(8192)
    state_path.write_bytes(junk)
    await assert_moved_aside(state_path, caplog)
    assert aside_files(state_path)[0].read_bytes() == junk


async def test_truncated_file_is_moved_aside(
    state_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    epoch = await make_history(state_path)
    size = state_path.stat().st_size
    with open(state_path, "r+b") as f:
        f.truncate(size // 2)
    await assert_moved_aside(state_path, caplog, epoch)


async def test_foreign_sqlite_db_is_moved_aside(
    state_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state_path.parent.mkdir(parents=True)
    with raw(state_path) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO users (name) VALUES ('ada')")
    await assert_moved_aside(state_path, caplog)
    with raw(aside_files(state_path)[0]) as conn:  # kept intact for whoever owns it
        assert conn.execute("SELECT name FROM users").fetchall() == [("ada",)]


async def test_garbled_event_json_is_moved_aside(
    state_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    epoch = await make_history(state_path, count=3)
    with raw(state_path) as conn:
        conn.execute("UPDATE events SET data = '{not json' WHERE seq = 2")
    await assert_moved_aside(state_path, caplog, epoch)


async def test_newer_schema_is_refused_and_left_alone(state_path: Path) -> None:
    await make_history(state_path, count=3)
    with raw(state_path) as conn:
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,)
        )
    before = state_path.read_bytes()
    log = SqliteLog(state_path, buffer_size=10)
    with pytest.raises(StateError, match=r"newer schema.*refusing to overwrite"):
        await log.open()
    assert not log.healthy
    assert state_path.read_bytes() == before
    assert aside_files(state_path) == []
    await log.close()  # harmless after a failed open


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
async def test_unwritable_folder_is_a_state_error(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(StateError, match="not writable"):
            await SqliteLog(folder / "state.db", buffer_size=10).open()
    finally:
        folder.chmod(0o700)


async def test_parent_is_a_file_is_a_state_error(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    for path in (blocker / "state.db", blocker / "deeper" / "state.db"):
        log = SqliteLog(path, buffer_size=10)
        with pytest.raises(StateError, match="cannot create the state folder"):
            await log.open()
        assert not log.healthy
    assert blocker.read_text() == "not a folder"


async def test_state_path_is_a_directory_is_a_state_error(tmp_path: Path) -> None:
    (tmp_path / "state.db").mkdir()
    with pytest.raises(StateError, match="is a directory"):
        await SqliteLog(tmp_path / "state.db", buffer_size=10).open()


# -- crash safety -----------------------------------------------------------------------

CHILD = """
import asyncio, json, random, sys
from pathlib import Path
from storywatch.events import Draft
from storywatch.log.sqlite import SqliteLog

async def main() -> None:
    log = SqliteLog(Path(sys.argv[1]), buffer_size=1_000_000)
    state = await log.open()
    print("ready", state.seq, flush=True)
    rng = random.Random(int(sys.argv[2]))
    seq = state.seq
    while True:
        numbers = range(seq + 1, seq + 1 + rng.randint(1, 3))
        drafts = [Draft(type="story.updated", story_id=f"S-{n % 7}", path=f"s/{n % 7}.md",
                        story={"id": f"S-{n % 7}", "n": n}, changes={"n": {"old": None, "new": n}})
                  for n in numbers]
        index = {f"s/{n % 7}.md": {"n": n} for n in numbers}
        for event in await log.append(drafts, {"kind": "watch"}, index):
            print("appended", event.seq, json.dumps(event.data), flush=True)
        seq = numbers[-1]

asyncio.run(main())
"""


def run_and_kill(path: Path, out: Path, seed: int, delay: float) -> dict[int, object]:
    """Start an appending child, SIGKILL it ``delay`` s after it opened; what it printed."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    with open(out, "w") as stdout:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(seed)], stdout=stdout, env=env
        )
    try:
        deadline = time.monotonic() + 20
        while not out.read_text().startswith("ready"):
            assert child.poll() is None, "the child died before opening the log"
            assert time.monotonic() < deadline, "the child never opened the log"
            time.sleep(0.005)
        time.sleep(delay)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    printed: dict[int, object] = {}
    for line in out.read_text().splitlines()[1:]:
        word, _, rest = line.partition(" ")
        seq, _, data = rest.partition(" ")
        assert word == "appended"
        with contextlib.suppress(ValueError):  # the last line, cut by the kill
            printed[int(seq)] = json.loads(data)
    return printed


async def test_sigkill_at_random_moments_loses_nothing_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / ".storywatch" / "state.db"
    epoch: str | None = None
    last = 0
    for round_, delay in enumerate((0.0, 0.04, 0.09, 0.17, 0.26)):
        printed = await asyncio.to_thread(
            run_and_kill, path, tmp_path / f"out{round_}.txt", round_, delay
        )
        async with opened(path, buffer_size=1_000_000) as (_, state):
            assert not state.fresh
            epoch = epoch or state.epoch
            assert state.epoch == epoch
            seqs = [e.seq for e in state.recent]
            assert seqs == list(range(1, state.seq + 1))  # contiguous, no gaps
            assert state.seq >= last
            by_seq: dict[int, Event] = {e.seq: e for e in state.recent}
            for seq, data in printed.items():
                assert by_seq[seq].data == data  # acknowledged → durable, identical
            # the index committed with exactly the events it came with
            latest: dict[str, int] = {}
            for event in state.recent:
                latest[event.data["path"]] = event.seq
            assert state.index == {p: {"n": n} for p, n in latest.items()}
            last = state.seq
        assert aside_files(path) == []
    assert last > 0, "the child never got to append"
