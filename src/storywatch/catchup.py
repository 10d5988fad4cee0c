"""Catch-up at any distance (SPEC §9) — pure: per-story positions, tombstones, the horizon.

A client that was away longer than the replay buffer needs, per story, only where it ended:
the current state of every story changed since its cursor that it may see now, and the ids
of those it may no longer see. :class:`Positions` keeps, per story id (live or deleted), the
seq of its last event, every epic it ever had (so a story that left a token's epics reaches
that token as removed, and one that never was in them never does) and, for a tombstone, when
it was deleted. Tombstones older than ``keep_days`` are dropped; the *horizon* is the seq of
the newest dropped tombstone: a cursor at or after it can still be caught up exactly.

Cost. Positions are a dict kept in the order of their seq: every update pops the story and
inserts it again at the end, so the entries after a cursor are a suffix of the dict. A
catch-up walks that suffix backwards from the newest entry and stops at the first position at
or before ``since``: O(k) Python steps for k stories changed since the cursor, independent of
the number of stories (n) and of events (e) since. (CPython also skips, in C, the free slots
that updates leave in the dict's entry table until its next resize; there are fewer of them
than n, costing nanoseconds each.) Applying an event is O(1); expiring is O(log t) per
dropped tombstone (a heap of t tombstones by deletion time). Memory: one small record per
story, with identical epic sets shared. ``bench/catchup.py`` measures all of it.

Nothing here does I/O or reads a clock: time is passed in, as Unix seconds.
"""

from __future__ import annotations

import datetime as dt
import heapq
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from storywatch.events import Event, Json
from storywatch.filters import FILTER_KEYS, Filter, Scope

CHUNK: Final = 500  # entries (stories + removed) per `catchup` message
PAGE: Final = 1000  # entries per `GET /api/events` answer
DEFAULT_KEEP_DAYS: Final = 90.0
DAY_S: Final = 86_400.0


@dataclass(frozen=True, slots=True)
class Position:
    """Where one story ended: its last event, its epics, and whether it is deleted."""

    seq: int  # the seq of the story's last event
    epics: frozenset[str]  # every epic it ever had (as ``str``, the way a scope compares)
    deleted_at: float | None = None  # a tombstone: Unix time of the delete

    def encode(self) -> str:
        """Compact JSON, as the Redis backend stores it: ``{"s", "e", "d"?}``."""
        out: Json = {"s": self.seq, "e": sorted(self.epics)}
        if self.deleted_at is not None:
            out["d"] = self.deleted_at
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> Position:
        """The inverse of :meth:`encode`; ValueError when it is not one. An empty epic list
        may come as ``{}`` (Redis' Lua JSON encoder writes empty tables as objects)."""
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError("a position is a JSON object")
        seq, epics, deleted = value.get("s"), value.get("e", []), value.get("d")
        if isinstance(seq, float) and seq.is_integer():
            seq = int(seq)
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise ValueError(f"bad position seq {seq!r}")
        if epics == {}:
            epics = []
        if not isinstance(epics, list) or not all(isinstance(e, str) for e in epics):
            raise ValueError(f"bad position epics {epics!r}")
        if deleted is not None and (
            isinstance(deleted, bool) or not isinstance(deleted, int | float)
        ):
            raise ValueError(f"bad position deletion time {deleted!r}")
        return cls(seq, frozenset(epics), None if deleted is None else float(deleted))


# -- what one event tells ----------------------------------------------------------------


def event_epics(data: Json) -> tuple[str, ...]:
    """The epics of a story's states before and after one event (its wire form or its
    draft's ``to_json()``): every state of a story is the state after some event, and the
    state before its first one, so these add up to every epic it ever had."""
    story = data.get("story")
    epic = story.get("epic") if isinstance(story, dict) else None
    after = () if epic is None else (str(epic),)
    changes = data.get("changes")
    change = changes.get("epic") if changes else None
    if not isinstance(change, dict) or change.get("old") is None:
        return after  # the usual case: the epic did not change
    old = str(change["old"])
    return after if old in after else (*after, old)


def event_time(iso: str) -> float:
    """Unix seconds of an event's ``time`` (``2026-11-26T07:00:00.123Z``)."""
    return dt.datetime.fromisoformat(iso).timestamp()


def advance(prior: Mapping[str, Position], events: Iterable[Json]) -> dict[str, Position]:
    """The new position of every story these events (wire form, in seq order) touch, in seq
    order; ``prior`` holds their positions before (missing: never seen, or dropped)."""
    out: dict[str, Position] = {}
    for data in events:
        story_id = str(data["story_id"])
        old = out.pop(story_id, None) or prior.get(story_id)
        epics = _merged(old, event_epics(data))
        deleted_at = event_time(data["time"]) if data["type"] == "story.deleted" else None
        out[story_id] = Position(int(data["seq"]), epics, deleted_at)
    return out


def _merged(old: Position | None, new: tuple[str, ...]) -> frozenset[str]:
    if old is None:
        return frozenset(new)
    if old.epics.issuperset(new):
        return old.epics  # the usual case: no new epic, no new set
    return old.epics.union(new)


# -- the positions -----------------------------------------------------------------------


class Positions:
    """Every story's position, ordered by seq, plus the tombstones' expiry and the horizon."""

    def __init__(self, entries: Mapping[str, Position] | None = None, horizon: int = 0) -> None:
        items = sorted((entries or {}).items(), key=lambda item: item[1].seq)
        self._by_id: dict[str, Position] = {}
        self._epic_sets: dict[frozenset[str], frozenset[str]] = {}  # one object per set
        for story_id, position in items:
            self._by_id[story_id] = self._interned(position)
        self.horizon = horizon
        # (deleted_at, seq, story_id) of tombstones, lazily cleaned: an entry whose story
        # was re-created (or deleted again) since is skipped when it comes up.
        self._tombstones: list[tuple[float, int, str]] = []
        self._tombstone_count = 0
        self._rebuild_heap()

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, story_id: object) -> bool:
        return story_id in self._by_id

    def get(self, story_id: str) -> Position | None:
        return self._by_id.get(story_id)

    def items(self) -> Iterator[tuple[str, Position]]:
        """Every position, oldest seq first."""
        return iter(self._by_id.items())

    def snapshot(self) -> dict[str, Position]:
        """A copy in seq order (positions are immutable; the dict is not shared)."""
        return dict(self._by_id)

    @property
    def tombstones(self) -> int:
        return self._tombstone_count

    # -- updates --------------------------------------------------------------------------

    def apply(self, events: Iterable[Event]) -> None:
        """Take committed events, in seq order."""
        self.apply_data(event.data for event in events)

    def apply_data(self, events: Iterable[Json]) -> None:
        """:meth:`apply` for events in their wire form (``Event.data``)."""
        self.put(advance(self._by_id, events))

    def put(self, updates: Mapping[str, Position]) -> None:
        """New positions (from :func:`advance`), in seq order, all newer than any held."""
        by_id = self._by_id
        for story_id, position in updates.items():
            old = by_id.pop(story_id, None)
            if old is not None and old.deleted_at is not None:
                self._tombstone_count -= 1
            if old is None or position.epics is not old.epics:  # else: interned already
                position = self._interned(position)
            by_id[story_id] = position
            if position.deleted_at is not None:
                self._tombstone_count += 1
                heapq.heappush(self._tombstones, (position.deleted_at, position.seq, story_id))
        if len(self._tombstones) > 2 * self._tombstone_count + 64:
            self._rebuild_heap()  # churn (deleted, re-created) left mostly stale entries

    def expire(self, now: float, keep_days: float) -> list[tuple[str, Position]]:
        """Drop the tombstones deleted ``keep_days`` (fractions allowed) or more before
        ``now``; raise the horizon to the newest dropped. Returns what was dropped."""
        cutoff = now - keep_days * DAY_S
        heap, by_id = self._tombstones, self._by_id
        dropped: list[tuple[str, Position]] = []
        while heap and heap[0][0] <= cutoff:
            _deleted_at, seq, story_id = heapq.heappop(heap)
            position = by_id.get(story_id)
            if position is None or position.deleted_at is None or position.seq != seq:
                continue  # stale: re-created or deleted again since
            del by_id[story_id]
            self._tombstone_count -= 1
            self.horizon = max(self.horizon, seq)
            dropped.append((story_id, position))
        return dropped

    def _rebuild_heap(self) -> None:
        self._tombstones = [
            (p.deleted_at, p.seq, story_id)
            for story_id, p in self._by_id.items()
            if p.deleted_at is not None
        ]
        heapq.heapify(self._tombstones)
        self._tombstone_count = len(self._tombstones)

    def _interned(self, position: Position) -> Position:
        epics = self._epic_sets.setdefault(position.epics, position.epics)
        if epics is position.epics:
            return position
        return Position(position.seq, epics, position.deleted_at)

    # -- reading --------------------------------------------------------------------------

    def catchable(self, since: Any, latest: int) -> bool:
        """Whether a cursor ``since`` (of the current epoch) can be caught up exactly."""
        return (
            isinstance(since, int)
            and not isinstance(since, bool)
            and self.horizon <= since <= latest
        )

    def changed_after(self, since: int) -> list[tuple[str, Position]]:
        """The positions with seq > ``since``, oldest first — O(their number)."""
        out: list[tuple[str, Position]] = []
        for story_id, position in reversed(self._by_id.items()):
            if position.seq <= since:
                break
            out.append((story_id, position))
        out.reverse()
        return out

    def catch_up(
        self,
        since: Any,
        latest: int,
        flt: Filter,
        scope: Scope,
        stories: Mapping[str, Json],
        invalid: Mapping[str, Json],
    ) -> Catchup | None:
        """What a client at ``since`` needs to hold the state of ``latest`` (None: it
        cannot be caught up: bad cursor, older than the horizon, newer than ``latest``).

        ``stories``: the current last-good state of every live story (by id); ``invalid``:
        the stories whose file is broken now, id → ``{"story_id", "path", "error"}``. The
        filter's ``events`` key is ignored, as in snapshots. Expire tombstones first."""
        if not self.catchable(since, latest):
            return None
        entries = _entries(self.changed_after(since), flt, scope, stories, invalid)
        return Catchup(since=since, seq=latest, entries=tuple(entries))

    def page(
        self,
        since: Any,
        latest: int,
        flt: Filter,
        scope: Scope,
        stories: Mapping[str, Json],
        invalid: Mapping[str, Json],
        limit: int = PAGE,
    ) -> Page | None:
        """The first ``limit`` entries of :meth:`catch_up`, for ``GET /api/events``: with
        ``more``, ``seq`` is the last entry's seq (the client's next ``since``)."""
        if not self.catchable(since, latest):
            return None
        entries: list[Entry] = []
        for entry in _entries(self.changed_after(since), flt, scope, stories, invalid):
            if len(entries) == limit:
                return Page(since=since, seq=entries[-1].seq, more=True, entries=tuple(entries))
            entries.append(entry)
        return Page(since=since, seq=latest, more=False, entries=tuple(entries))


def _entries(
    changed: Iterable[tuple[str, Position]],
    flt: Filter,
    scope: Scope,
    stories: Mapping[str, Json],
    invalid: Mapping[str, Json],
) -> Iterator[Entry]:
    """The entries of a catch-up, in the order of ``changed``: stories that match ``flt``
    and ``scope`` now, and removals the scope may know of. (One loop, with the checks that
    cannot fail skipped: this runs once per changed story.)"""
    epics = scope.epics
    story_filter = None if _story_keys_empty(flt) else flt.matches_story
    for story_id, position in changed:
        story = stories.get(story_id)
        if (
            story is not None
            and (epics is None or scope.sees(story))
            and (story_filter is None or story_filter(story))
        ):
            problem = invalid.get(story_id) if invalid else None
            if problem is not None and _reason(problem) == "duplicate_id":
                problem = None  # the original is healthy: nothing is wrong with the story
            yield Entry(story_id, position.seq, story, problem)
        elif epics is None or not epics.isdisjoint(position.epics):
            yield Entry(story_id, position.seq, None, None)
        # else: never in the token's epics: it must not even learn the id


def _story_keys_empty(flt: Filter) -> bool:
    """No key but ``events`` (ignored here): every story matches."""
    return all(getattr(flt, key) is None for key in FILTER_KEYS if key != "events")


def _reason(problem: Json) -> Any:
    error = problem.get("error")
    return error.get("reason") if isinstance(error, dict) else None


# -- the answers ---------------------------------------------------------------------------


class Entry(NamedTuple):
    """One story in a catch-up: its current state, or removed (``story`` None). A named
    tuple: one is made per changed story, and that is cheaper than a frozen dataclass."""

    story_id: str
    seq: int  # the story's last seq
    story: Json | None
    problem: Json | None = None  # {"story_id", "path", "error"} when its file is broken now


def _lists(entries: Iterable[Entry]) -> Json:
    stories: list[Json] = []
    removed: list[str] = []
    invalid: list[Json] = []
    for entry in entries:
        if entry.story is None:
            removed.append(entry.story_id)
            continue
        stories.append(entry.story)
        if entry.problem is not None:
            invalid.append(entry.problem)
    return {"stories": stories, "removed": removed, "invalid": invalid}


@dataclass(frozen=True, slots=True)
class Catchup:
    """A whole catch-up: the state of ``seq`` for a client at ``since``."""

    since: int
    seq: int
    entries: tuple[Entry, ...]  # ordered by the stories' last seq

    def count(self, size: int = CHUNK) -> int:
        """How many ``catchup`` messages it takes (one, empty, when there is nothing)."""
        return max(1, -(-len(self.entries) // size))

    def messages(self, epoch: str, *, sub: str | None = None, size: int = CHUNK) -> Iterator[Json]:
        """The ``catchup`` messages (SPEC §9), with ``sub`` on WebSocket, without on SSE —
        lazily: a session builds one when its socket can take it, never all at once."""
        entries, count = self.entries, self.count(size)
        for n in range(count):
            message: Json = {"type": "catchup"}
            if sub is not None:
                message["sub"] = sub
            message.update({"epoch": epoch, "seq": self.seq, "since": self.since})
            message.update(_lists(entries[n * size : (n + 1) * size]))
            message["done"] = n == count - 1
            yield message


@dataclass(frozen=True, slots=True)
class Page:
    """One answer of ``GET /api/events`` behind the replay buffer."""

    since: int
    seq: int  # the last entry's seq when ``more``, else the latest seq
    more: bool
    entries: tuple[Entry, ...]

    def to_json(self, epoch: str) -> Json:
        return {
            "epoch": epoch,
            "seq": self.seq,
            "recovered": True,
            "compacted": True,
            "events": [],
            **_lists(self.entries),
            "more": self.more,
        }


# -- which files are broken now ------------------------------------------------------------


class Broken:
    """The stories whose file is broken now, as the log tells it — id → ``{"story_id",
    "path", "error"}`` — for a catch-up's ``invalid``.

    A ``story.invalid`` (not ``duplicate_id``: a duplicate leaves the story itself healthy)
    marks the story; any other event of it clears the mark (a fix is diffed against the
    last good state, so it comes as an update, a move or a transition). The one case the
    log cannot tell: a file fixed back to exactly its last good content emits no event, so
    the mark stays until the story's next event — as for a client that never left."""

    def __init__(self, problems: Mapping[str, Json] | None = None) -> None:
        self.problems: dict[str, Json] = dict(problems or {})

    @classmethod
    def from_records(cls, records: Mapping[str, Json]) -> Broken:
        """From the index records a backend loads (``LogState.index``: path → record)."""
        problems: dict[str, Json] = {}
        for path, record in records.items():
            error = record.get("error")
            if record.get("role") == "owner" and isinstance(error, dict):
                story_id = str(record["id"])
                problems[story_id] = {
                    "story_id": story_id,
                    "path": path,
                    "error": {k: error.get(k) for k in ("reason", "message", "line")},
                }
        return cls(problems)

    def apply(self, events: Iterable[Event]) -> None:
        for event in events:
            data = event.data
            story_id = str(data["story_id"])
            if data["type"] != "story.invalid":
                self.problems.pop(story_id, None)
                continue
            error = data.get("error")
            if isinstance(error, dict) and error.get("reason") != "duplicate_id":
                self.problems[story_id] = {
                    "story_id": story_id,
                    "path": data["path"],
                    "error": error,
                }


class CatchupState:
    """Everything a reader (the hub, the SSE stream, the HTTP API) keeps to answer
    catch-ups: the positions, the broken files and the expiry rule. Apply every committed
    event here in the same synchronous step that updates the stories a catch-up reads, so
    both describe the same seq."""

    def __init__(
        self,
        positions: Positions | None = None,
        broken: Broken | None = None,
        *,
        keep_days: float = DEFAULT_KEEP_DAYS,
    ) -> None:
        self.positions = positions or Positions()
        self.broken = broken or Broken()
        self.keep_days = keep_days

    @classmethod
    def load(
        cls,
        positions: Mapping[str, Position],
        horizon: int,
        index: Mapping[str, Json],
        *,
        keep_days: float = DEFAULT_KEEP_DAYS,
    ) -> CatchupState:
        """From what a backend loaded (``LogState.positions``, ``.horizon``, ``.index``)."""
        return cls(Positions(positions, horizon), Broken.from_records(index), keep_days=keep_days)

    @property
    def horizon(self) -> int:
        return self.positions.horizon

    def apply(self, events: Iterable[Event]) -> None:
        events = list(events)
        self.positions.apply(events)
        self.broken.apply(events)

    def expire(self, now: float) -> None:
        self.positions.expire(now, self.keep_days)

    def catch_up(
        self,
        since: Any,
        latest: int,
        flt: Filter,
        scope: Scope,
        stories: Mapping[str, Json],
        *,
        now: float,
    ) -> Catchup | None:
        """A catch-up request: expire what is due, then answer (None: not catch-up-able)."""
        self.expire(now)
        return self.positions.catch_up(since, latest, flt, scope, stories, self.broken.problems)

    def page(
        self,
        since: Any,
        latest: int,
        flt: Filter,
        scope: Scope,
        stories: Mapping[str, Json],
        *,
        now: float,
        limit: int = PAGE,
    ) -> Page | None:
        self.expire(now)
        return self.positions.page(
            since, latest, flt, scope, stories, self.broken.problems, limit=limit
        )
