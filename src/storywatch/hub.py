"""The hub: current state, the replay window and fan-out to sessions — pure.

The hub is a follower of the event log (the app wires :meth:`Hub.publish` to
``EventLog.follow``). Every event passes here once, in seq order: it updates the stories
used for snapshots,
enters the replay buffer and is offered to every session. Sessions with the same scope and
subscriptions form a group that shares one outbox entry per event, and matching is cached
per distinct filter, so a thousand clients with the same filter cost one match.

It also keeps what catch-ups read (SPEC §9, :class:`~storywatch.catchup.CatchupState`):
every event updates the per-story positions in the same synchronous step as the stories,
so a catch-up computed between two batches describes exactly the hub's seq, and every live
event after it reaches the session behind the catch-up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from storywatch.catchup import Catchup, CatchupState, Page
from storywatch.coalesce import Pending
from storywatch.events import Event, Json
from storywatch.filters import Filter, Scope
from storywatch.replay import ReplayBuffer
from storywatch.session import Group, Session, nothing


class Hub:
    def __init__(
        self,
        buffer: ReplayBuffer,
        stories: dict[str, Json] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.buffer = buffer
        self.clock = clock  # the one clock of the read side: sessions, token buckets, GC pacing
        self._stories: dict[str, Json] = stories or {}
        self.sessions: set[Session] = set()
        self.listeners: list[Callable[[list[Event]], None]] = []
        self.counts: dict[str, int] = {}
        self.last_publish = clock()  # on ``clock``; the GC pacer waits for quiet moments
        # -- catch-up (SPEC §9): positions, broken files, the horizon; tombstones expire by
        # ``wall`` (Unix time). ``on_catchup``: a catch-up was asked for (the app then drops
        # expired tombstones from the log too).
        self.catchup = CatchupState()
        self.wall = wall
        self.on_catchup: Callable[[], None] = nothing

    @property
    def epoch(self) -> str:
        return self.buffer.epoch

    @property
    def seq(self) -> int:
        return self.buffer.seq

    def stories(self) -> Iterable[Json]:
        return self._stories.values()

    def story(self, story_id: str) -> Json | None:
        return self._stories.get(story_id)

    def __len__(self) -> int:
        return len(self._stories)

    def replay(self, epoch: Any, since_seq: Any) -> list[Event] | None:
        return self.buffer.after(epoch, since_seq)

    def catchable(self, epoch: Any, since_seq: Any) -> bool:
        """A catch-up request (SPEC §9) for a cursor behind the replay buffer: whether it
        can be caught up (this epoch, at or after the horizon, not newer than the latest
        seq), once the tombstones due by now are dropped — here, and by the app in the log
        (:attr:`on_catchup`)."""
        if epoch != self.epoch:
            return False
        self.catchup.expire(self.wall())
        self.on_catchup()
        return self.catchup.positions.catchable(since_seq, self.seq)

    def catch_up(self, since_seq: int, flt: Filter, scope: Scope) -> Catchup | None:
        """The state of :attr:`seq` for a client at ``since_seq`` (None: it cannot be caught
        up). Ask :meth:`catchable` first."""
        return self.catchup.catch_up(
            since_seq, self.seq, flt, scope, self._stories, now=self.wall()
        )

    def page(self, epoch: Any, since_seq: Any, flt: Filter, scope: Scope) -> Page | None:
        """One ``GET /api/events`` answer of a catch-up (None: it cannot be caught up)."""
        if not self.catchable(epoch, since_seq):
            return None
        return self.catchup.page(since_seq, self.seq, flt, scope, self._stories, now=self.wall())

    def publish(self, events: list[Event]) -> None:
        now = self.last_publish = self.clock()
        for event in events:
            self._apply(event)
            self.buffer.add(event)
            cache: dict[Filter, bool] = {}

            def matches(flt: Filter, ev: Event, cache: dict[Filter, bool] = cache) -> bool:
                hit = cache.get(flt)
                if hit is None:
                    hit = cache[flt] = flt.matches(ev.type, ev.before(), ev.after())
                return hit

            # One outbox entry per group of sessions with the same scope and subscriptions.
            entries: dict[Group, Pending | None] = {}
            for session in self.sessions:
                group = session.group
                if group is None:
                    continue
                try:
                    entry = entries[group]
                except KeyError:
                    entry = entries[group] = session.live_entry(event, matches)
                if entry is not None:
                    session.enqueue(entry, now)
        for listener in self.listeners:
            listener(events)
        # With the stories, in this same synchronous step: no session asks for a catch-up
        # in between (last, so that nothing here can hold up the delivery of the events).
        self.catchup.apply(events)

    def load(
        self,
        epoch: str,
        seq: int,
        recent: list[Event],
        stories: dict[str, Json],
        catchup: CatchupState | None = None,
    ) -> None:
        """The state the log had when it opened (before any session exists), with the
        catch-up state of that same seq."""
        self.buffer.reset(epoch, seq)
        for event in recent:
            self.buffer.add(event)
        self.buffer.seq = seq
        self._stories = stories
        if catchup is not None:
            self.catchup = catchup

    def replace_stories(self, stories: dict[str, Json]) -> None:
        """The state after a silent initial scan (a fresh log has nothing to tell)."""
        self._stories = stories

    def reset(
        self,
        epoch: str,
        seq: int,
        stories: dict[str, Json],
        recent: list[Event] | None = None,
        catchup: CatchupState | None = None,
    ) -> None:
        """History was lost (e.g. Redis restarted empty): start over and tell everyone."""
        self.load(epoch, seq, recent or [], stories, catchup or CatchupState())
        for session in self.sessions:
            session.resync("epoch_changed", epoch, seq, keep_subs=True)

    def _apply(self, event: Event) -> None:
        kind = event.type
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if kind == "story.deleted":
            self._stories.pop(event.story_id, None)
        elif kind != "story.invalid":
            self._stories[event.story_id] = event.story
