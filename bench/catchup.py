"""Catch-up at any distance (SPEC §9): cost per changed story, against a full snapshot, and
the storage positions and tombstones take.

Pure core, synthetic history (no daemon, no files): 50 000 stories are created, then events
(edits, status changes, moves between epics, deletes and re-creates) bring the log to
1 000 000 events, the last 100 000 of which touch only 10 000 stories. A client at the seq
before those 100 000 is caught up; a new client gets a full snapshot of the same state.
Both are timed the way a session builds them — choose the stories, cut 500-entry messages,
JSON-encode each — best of ``--rounds``, in the same run, so the ratio is machine-fair:

- ``catchup_s``: ``CatchupState.catch_up`` + ``Catchup.messages`` + ``json.dumps``;
- ``snapshot_s``: the session's snapshot (every story, filtered by scope and filter, in
  500-story chunks) + ``json.dumps``;
- the same for an epic-scoped token and a status filter; and catch-ups over 100 / 1 000 /
  10 000 changed stories, to show the cost follows k (changed stories), not n or events.

Storage, with the real backends: 50 000 creates and then 50 000 deletes appended to a
``SqliteLog`` (replay window 1, so events do not count); after each, the file is vacuumed
and measured with and without the ``positions`` rows: growth per live story and per
tombstone, in bytes. With ``redis-server`` on PATH, the same rows' ``MEMORY USAGE`` in Redis.

    python bench/catchup.py            # ~30-60 s; one JSON line on stdout
    python bench/catchup.py --quick    # 1/10 of the history, for a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from storywatch.catchup import CatchupState, Positions
from storywatch.events import Draft, Json
from storywatch.filters import Filter, Scope
from storywatch.gcpace import OLDEST_THRESHOLD
from storywatch.log.sqlite import SqliteLog

EPICS = ("integration", "api", "ui", "data", "security", "infra", "documentation")
STATUSES = ("draft", "ready", "in-progress", "review", "done")
EPOCH = "bench001"
CHUNK = 500
T0 = 1_767_225_600.0  # 2026-01-01


def progress(*parts: Any) -> None:
    print("[bench]", *parts, file=sys.stderr, flush=True)


def iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ".000Z"


def make_story(n: int, epic: str, status: str) -> Json:
    """A story shaped like the fixtures' (≈ 500 bytes of JSON)."""
    story_id = f"{epic[:3].upper()}-{n:05d}"
    return {
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


class History:
    """A synthetic log: the current stories, and events in their wire form (only what the
    positions read: type, seq, time, story_id, the story's epic, an epic change)."""

    def __init__(self, stories_n: int, events_n: int, tail_events: int, tail_stories: int):
        self.rng = random.Random(15)
        self.stories: dict[str, Json] = {}
        self.deleted: dict[str, Json] = {}
        self.seq = 0
        self.now = T0
        self.ids: list[str] = []
        self.stories_n, self.events_n = stories_n, events_n
        self.tail_events, self.tail_stories = tail_events, tail_stories
        self.since = 0

    def _event(self, kind: str, story: Json, old_epic: str | None = None) -> Json:
        self.seq += 1
        self.now += 2.0
        changes = {"epic": {"old": old_epic, "new": story.get("epic")}} if old_epic else {}
        return {
            "type": kind,
            "seq": self.seq,
            "time": iso(self.now),
            "story_id": story["id"],
            "story": story,
            "changes": changes,
        }

    def _change(self, story_id: str) -> Json:
        rng = self.rng
        if story_id in self.deleted:  # re-created
            story = self.stories[story_id] = self.deleted.pop(story_id)
            return self._event("story.created", story)
        story = self.stories[story_id]
        roll = rng.random()
        if roll < 0.01:
            self.deleted[story_id] = self.stories.pop(story_id)
            return self._event("story.deleted", story)
        if roll < 0.06:
            old = story["epic"]
            story = self.stories[story_id] = {**story, "epic": rng.choice(EPICS)}
            return self._event("story.updated", story, old_epic=old)
        if roll < 0.5:
            story = self.stories[story_id] = {**story, "status": rng.choice(STATUSES)}
            return self._event("story.transitioned", story)
        story = self.stories[story_id] = {**story, "title": f"edited {self.seq}"}
        return self._event("story.updated", story)

    def events(self) -> Iterator[Json]:
        rng = self.rng
        for n in range(self.stories_n):
            story = make_story(n, EPICS[n % len(EPICS)], STATUSES[n % len(STATUSES)])
            self.stories[story["id"]] = story
            self.ids.append(story["id"])
            yield self._event("story.created", story)
        while self.seq < self.events_n - self.tail_events:
            yield self._change(rng.choice(self.ids))
        self.since = self.seq
        tail = rng.sample(self.ids, self.tail_stories)
        for story_id in tail:  # every story of the tail changes at least once
            yield self._change(story_id)
        while self.seq < self.events_n:
            yield self._change(rng.choice(tail))


def best(rounds: int, func: Callable[[], Any]) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return min(times)


def encode_all(messages: Iterable[Json]) -> int:
    return sum(len(json.dumps(m, separators=(",", ":"))) for m in messages)


def snapshot_messages(stories: dict[str, Json], flt: Filter, scope: Scope) -> list[Json]:
    """What ``Session._send_snapshot`` builds."""
    chosen = [s for s in stories.values() if scope.sees(s) and flt.matches_story(s)]
    chunks = [chosen[i : i + CHUNK] for i in range(0, len(chosen), CHUNK)] or [[]]
    return [
        {"type": "snapshot", "sub": "s1", "epoch": EPOCH, "seq": 0, "stories": c, "done": False}
        for c in chunks
    ]


def core(args: argparse.Namespace) -> dict[str, Any]:
    scale = 10 if args.quick else 1
    history = History(50_000 // scale, 1_000_000 // scale, 100_000 // scale, 10_000 // scale)
    state = CatchupState(keep_days=90)
    apply_s = 0.0  # applying only, not making up the history
    batch: list[Json] = []
    for data in history.events():
        batch.append(data)
        if len(batch) == 1000:
            t0 = time.perf_counter()
            state.positions.apply_data(batch)
            apply_s += time.perf_counter() - t0
            batch = []
    t0 = time.perf_counter()
    state.positions.apply_data(batch)
    apply_s += time.perf_counter() - t0
    progress(f"applied {history.seq} events in {apply_s:.1f} s")
    stories, latest, since = history.stories, history.seq, history.since
    now = history.now

    def catchup(flt: Filter, scope: Scope, since_seq: int) -> tuple[float, int, int]:
        result: list[Any] = []

        def run() -> None:
            got = state.catch_up(since_seq, latest, flt, scope, stories, now=now)
            assert got is not None
            result[:] = [got, encode_all(got.messages(EPOCH, sub="s1"))]

        seconds = best(args.rounds, run)
        return seconds, len(result[0].entries), result[1]

    def snapshot(flt: Filter, scope: Scope) -> tuple[float, int, int]:
        result: list[Any] = []

        def run() -> None:
            messages = snapshot_messages(stories, flt, scope)
            result[:] = [sum(len(m["stories"]) for m in messages), encode_all(messages)]

        return best(args.rounds, run), result[0], result[1]

    cases = {
        "everything": (Filter(), Scope()),
        "scoped_2_epics": (Filter(), Scope(frozenset({"integration", "api"}))),
        "filter_status_review": (Filter(statuses=frozenset({"review"})), Scope()),
    }
    out: dict[str, Any] = {}
    for name, (flt, scope) in cases.items():
        c_s, c_entries, c_bytes = catchup(flt, scope, since)
        s_s, s_stories, s_bytes = snapshot(flt, scope)
        out[name] = {
            "catchup_s": round(c_s, 5),
            "catchup_entries": c_entries,
            "catchup_bytes": c_bytes,
            "snapshot_s": round(s_s, 5),
            "snapshot_stories": s_stories,
            "snapshot_bytes": s_bytes,
            "ratio": round(c_s / s_s, 3),
        }
        progress(name, out[name])

    # The cost follows k: cursors with 100 / 1 000 / all changed stories after them.
    by_k: dict[str, Any] = {}
    changed = [pos.seq for _, pos in state.positions.changed_after(since)]
    for k in sorted({100, 1_000, len(changed)}):
        cursor = changed[-k] - 1 if k <= len(changed) else since
        seconds, entries, _ = catchup(Filter(), Scope(), cursor)
        walk = best(args.rounds, lambda c=cursor: state.positions.changed_after(c))
        compute = best(
            args.rounds,
            lambda c=cursor: state.catch_up(c, latest, Filter(), Scope(), stories, now=now),
        )
        by_k[str(k)] = {
            "entries": entries,
            "walk_s": round(walk, 6),  # Positions.changed_after alone
            "compute_s": round(compute, 5),  # + choosing stories / removed, no encoding
            "catchup_s": round(seconds, 5),  # + messages, JSON-encoded
        }
    by_k["0"] = {
        "walk_s": round(best(args.rounds, lambda: state.positions.changed_after(latest)), 6)
    }
    progress("by k", by_k)

    return {
        "stories": len(stories),
        "positions": len(state.positions),
        "tombstones": state.positions.tombstones,
        "events": latest,
        "events_after_since": latest - since,
        "apply_s": round(apply_s, 2),
        "apply_events_per_s": round(latest / apply_s),
        "cases": out,
        "by_changed_stories": by_k,
        "memory_bytes_per_position": memory_per_position(history.stories_n),
    }


def memory_per_position(n: int) -> int:
    """Python heap held by the positions of ``n`` stories (one event each)."""
    events = [
        {
            "type": "story.created",
            "seq": i + 1,
            "time": iso(T0),
            "story_id": f"S-{i:06d}",
            "story": {"epic": EPICS[i % len(EPICS)]},
            "changes": {},
        }
        for i in range(n)
    ]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    positions = Positions()
    positions.apply_data(events)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return round((after - before) / n)


# -- storage ---------------------------------------------------------------------------------


def draft(n: int, kind: str) -> Draft:
    story = make_story(n, EPICS[n % len(EPICS)], "draft")
    return Draft(
        type=kind,  # type: ignore[arg-type]
        story_id=story["id"],
        path=story["path"],
        story=story,
        changes={},
    )


def vacuumed_size(path: Path, *, without_positions: bool = False) -> int:
    copy = path.with_name("measure.db")
    copy.unlink(missing_ok=True)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(f"VACUUM INTO '{copy}'")
    if without_positions:
        with contextlib.closing(sqlite3.connect(copy, isolation_level=None)) as conn:
            conn.execute("DELETE FROM positions")
            conn.execute("VACUUM")
    size = copy.stat().st_size
    copy.unlink()
    return size


async def sqlite_storage(n: int, folder: Path) -> dict[str, Any]:
    path = folder / "state.db"
    log = SqliteLog(path, buffer_size=1)
    await log.open()
    try:
        for kind in ("story.created", "story.deleted"):
            for start in range(0, n, 5000):
                await log.append([draft(i, kind) for i in range(start, min(n, start + 5000))], {})
            if kind == "story.created":
                live = vacuumed_size(path) - vacuumed_size(path, without_positions=True)
        dead = vacuumed_size(path) - vacuumed_size(path, without_positions=True)
    finally:
        await log.close()
    return {
        "rows": n,
        "bytes_per_live_story": round(live / n, 1),
        "bytes_per_tombstone": round(dead / n, 1),
    }


def redis_storage(n: int, folder: Path) -> dict[str, Any] | None:
    """The positions hash and tombstone set as the append script writes them."""
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    import redis

    from storywatch.catchup import Position

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)
        for _ in range(200):
            with contextlib.suppress(redis.ConnectionError):
                client.ping()
                break
            time.sleep(0.05)
        pipe = client.pipeline(transaction=False)
        for i in range(n):
            story = make_story(i, EPICS[i % len(EPICS)], "draft")
            position = Position(1_000_000 + i, frozenset({story["epic"]}))
            pipe.hset("{b}:positions", story["id"], position.encode())
        pipe.execute()
        live = client.memory_usage("{b}:positions", samples=0) or 0
        for i in range(n):
            story = make_story(i, EPICS[i % len(EPICS)], "draft")
            position = Position(2_000_000 + i, frozenset({story["epic"]}), T0 + i)
            pipe.hset("{b}:positions", story["id"], position.encode())
            pipe.zadd("{b}:tombstones", {story["id"]: T0 + i})
        pipe.execute()
        dead = (client.memory_usage("{b}:positions", samples=0) or 0) + (
            client.memory_usage("{b}:tombstones", samples=0) or 0
        )
        client.close()
    finally:
        proc.kill()
        proc.wait()
    return {
        "rows": n,
        "bytes_per_live_story": round(live / n, 1),
        "bytes_per_tombstone": round(dead / n, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1/10 of the history")
    parser.add_argument("--rounds", type=int, default=5, help="best of N timings")
    args = parser.parse_args()
    # The collector as the daemon runs it (storywatch.gcpace): rare full collections. With
    # the interpreter's defaults, full passes over the history's millions of objects would
    # be most of what is measured.
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, OLDEST_THRESHOLD)
    t0 = time.perf_counter()
    result: dict[str, Any] = {"python": sys.version.split()[0], "core": core(args)}
    n = 5_000 if args.quick else 50_000
    with tempfile.TemporaryDirectory() as tmp:
        result["sqlite"] = asyncio.run(sqlite_storage(n, Path(tmp)))
        progress("sqlite", result["sqlite"])
        result["redis"] = redis_storage(n, Path(tmp))
        progress("redis", result["redis"])
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
