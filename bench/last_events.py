"""What keeping each story's last event costs (SPEC §10: a hook behind the log's window).

Every backend keeps, with each story's catch-up position, the story's last event as logged,
so a webhook that fell behind the replay window gets each changed story's latest event
(``EventLog.latest_events_after``). This measures, with the real backends:

- storage per story: N stories, each with one ``story.transitioned`` event shaped like the
  fixtures' (≈ 700 bytes of JSON), appended with a replay window of 1 event (so the window
  does not count). sqlite: the vacuumed file with and without ``positions.event`` and the
  index by seq. Redis (when ``redis-server`` is on PATH): ``MEMORY USAGE`` of the
  ``last_seq`` zset and the ``last_event`` hash. memory: the Python heap the kept events
  hold (``tracemalloc``), once the window has let them go;
- the write side: sqlite appends of one event each (one fsync per append), with and without
  writing the last event, interleaved in blocks, same run;
- the read: ``latest_events_after`` pages of 256 over all N stories, per story.

    python bench/last_events.py               # ~30-60 s; one JSON line on stdout
    python bench/last_events.py --stories 2000  # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C

from storywatch.events import Draft, Json
from storywatch.log import sqlite as sqlite_log
from storywatch.log.memory import MemoryLog
from storywatch.log.sqlite import SqliteLog

EPICS = ("integration", "api", "ui", "data", "security", "infra", "documentation")
BATCH = 2000
PAGE = 256


def progress(*parts: Any) -> None:
    print("[bench]", *parts, file=sys.stderr, flush=True)


def draft(n: int, status: str = "review") -> Draft:
    """A status change of a story shaped like the fixtures'."""
    epic = EPICS[n % len(EPICS)]
    story_id = f"{epic[:3].upper()}-{n:05d}"
    story: Json = {
        "id": story_id,
        "title": f"Story {n}: publish story changes to every connected board",
        "branch_name": f"{story_id.lower()}-publish-story-changes",
        "epic": epic,
        "status": status,
        "priority": ("low", "medium", "high")[n % 3],
        "estimate": f"{n % 8 + 1}sp",
        "dependencies": [f"API-{(n * 7) % 50000:05d}"],
        "labels": [epic, "backend"],
        "created": "2025-07-09",
        "author": "planning-agent",
        "owner": f"team-{n % 12}",
        "last_updated": "2025-08-30",
        "path": f"stories/{epic}/{story_id}.md",
    }
    changes = {"status": {"old": "in-progress", "new": status}}
    return Draft("story.transitioned", story_id, story["path"], story, changes)


SOURCE: Json = {"kind": "fs", "batch": "b-1", "batch_size": 1}


async def fill(log: Any, n: int) -> int:
    """Append N events (one per story); the mean size of an event's JSON."""
    sizes = []
    for start in range(0, n, BATCH):
        events = await log.append([draft(i) for i in range(start, min(n, start + BATCH))], SOURCE)
        sizes += [len(e.encoded().encode()) for e in events[:10]]
    return round(statistics.mean(sizes))


async def read_all(log: Any, n: int) -> float:
    """Seconds per story to page through every story's last event."""
    t0 = time.perf_counter()
    after, got = 0, 0
    while True:
        page = await log.latest_events_after(after, PAGE)
        got += len(page)
        if len(page) < PAGE:
            break
        after = page[-1].seq
    assert got == n, (got, n)
    return (time.perf_counter() - t0) / n


# -- sqlite ------------------------------------------------------------------------------------


def vacuumed(path: Path, *statements: str) -> int:
    copy = path.with_name("measure.db")
    copy.unlink(missing_ok=True)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(f"VACUUM INTO '{copy}'")
    with contextlib.closing(sqlite3.connect(copy, isolation_level=None)) as conn:
        for statement in statements:
            conn.execute(statement)
        conn.execute("VACUUM")
    size = copy.stat().st_size
    copy.unlink()
    return size


async def sqlite_storage(n: int, folder: Path) -> dict[str, Any]:
    path = folder / "state.db"
    log = SqliteLog(path, buffer_size=1)
    await log.open()
    try:
        event_bytes = await fill(log, n)
        read_s = await read_all(log, n)
    finally:
        await log.close()
    full = vacuumed(path)
    no_index = vacuumed(path, "DROP INDEX positions_by_seq")
    bare = vacuumed(path, "DROP INDEX positions_by_seq", "ALTER TABLE positions DROP COLUMN event")
    return {
        "stories": n,
        "event_json_bytes": event_bytes,
        "bytes_per_story": round((full - bare) / n, 1),
        "of_which_index_by_seq": round((full - no_index) / n, 1),
        "read_us_per_story": round(read_s * 1e6, 2),
    }


async def sqlite_append_cost(folder: Path, appends: int, rounds: int) -> dict[str, Any]:
    """One-event appends, with and without writing the last event, interleaved."""
    write_last = sqlite_log._write_last_events
    times: dict[str, list[float]] = {"with": [], "without": []}
    path = folder / "append.db"
    log = SqliteLog(path, buffer_size=10_000)
    await log.open()
    try:
        n = 0
        for _ in range(rounds):
            for mode in ("with", "without"):
                sqlite_log._write_last_events = (  # type: ignore[assignment]
                    write_last if mode == "with" else lambda conn, events: None
                )
                t0 = time.perf_counter()
                for _ in range(appends):
                    await log.append([draft(n % 500, f"s{n}")], SOURCE)
                    n += 1
                times[mode].append((time.perf_counter() - t0) / appends)
    finally:
        sqlite_log._write_last_events = write_last  # type: ignore[assignment]
        await log.close()
    with_s, without_s = statistics.median(times["with"]), statistics.median(times["without"])
    return {
        "appends": appends * rounds,
        "ms_per_append_with": round(with_s * 1e3, 3),
        "ms_per_append_without": round(without_s * 1e3, 3),
        "ratio": round(with_s / without_s, 3),
    }


# -- memory ------------------------------------------------------------------------------------


async def memory_storage(n: int) -> dict[str, Any]:
    log = MemoryLog(buffer_size=1)
    tracemalloc.start()  # (tracks what is allocated from now on, so before the events)
    await fill(log, n)
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    kept = log._last
    log._last = {}  # what only the kept last events held
    del kept
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    await fill(log, n)
    read_s = await read_all(log, n)
    return {
        "stories": n,
        "bytes_per_story": round((before - after) / n, 1),
        "read_us_per_story": round(read_s * 1e6, 2),
    }


# -- redis -------------------------------------------------------------------------------------


async def redis_storage(n: int, folder: Path) -> dict[str, Any] | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    from storywatch.config import BackendSettings
    from storywatch.log.redis import RedisLog

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(folder)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        settings = BackendSettings("redis", None, f"redis://127.0.0.1:{port}/0", "b", 1)
        log = RedisLog(settings)
        for _ in range(200):
            with contextlib.suppress(Exception):
                await log.open()
                break
            await asyncio.sleep(0.05)
        try:
            await fill(log, n)
            read_s = await read_all(log, n)
            usage = {}
            for key in ("last_seq", "last_event", "positions"):
                usage[key] = await log.redis.memory_usage(log.keys[key], samples=0) or 0
        finally:
            await log.close()
    finally:
        proc.kill()
        proc.wait()
    return {
        "stories": n,
        "bytes_per_story": round((usage["last_seq"] + usage["last_event"]) / n, 1),
        "of_which_last_seq_zset": round(usage["last_seq"] / n, 1),
        "positions_hash_for_comparison": round(usage["positions"] / n, 1),
        "read_us_per_story": round(read_s * 1e6, 2),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"bench": "last_events", "machine": C.machine()}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        result["sqlite"] = await sqlite_storage(args.stories, folder)
        progress("sqlite", result["sqlite"])
        result["sqlite_append"] = await sqlite_append_cost(folder, args.appends, args.rounds)
        progress("sqlite append", result["sqlite_append"])
        result["memory"] = await memory_storage(args.stories)
        progress("memory", result["memory"])
        result["redis"] = await redis_storage(args.stories, folder)
        progress("redis", result["redis"])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--stories", type=int, default=20_000)
    parser.add_argument("--appends", type=int, default=100, help="one-event appends per block")
    parser.add_argument("--rounds", type=int, default=4, help="blocks of each mode")
    args = parser.parse_args()
    t0 = time.perf_counter()
    result = asyncio.run(main_async(args))
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
