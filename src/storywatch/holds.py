"""The watcher's two holds — pure: what an editor's save looks like half way through.

- A story file that disappears is *held* for ``grace`` seconds: if its id comes back at any
  path meanwhile, the change is a move or an update, never a delete plus a create.
- A story file that turns empty or unparsable is *rechecked*: read again once ``grace`` has
  passed, before ``story.invalid`` is reported (truncate-then-write saves).

Time is passed in; the watcher owns the clock, the timer and the files.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from storywatch.events import Json
from storywatch.story import ParseError, ParseResult, Story

Results = dict[str, ParseResult | None]


@dataclass
class Held:
    story_id: str
    deadline: float
    source: Json  # the batch the change was seen in: the event keeps it when emitted later
    commits: Mapping[str, Json] = field(default_factory=dict)  # SPEC §11, of its batch


class Holds:
    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.held: dict[str, Held] = {}  # vanished story files, by path
        self.recheck: dict[str, Held] = {}  # broken story files to read again, by path

    def sort(
        self,
        results: Results,
        source: Json,
        now: float,
        owns: Callable[[str], str | None],
        is_broken: Callable[[str], bool],
        commits: Mapping[str, Json] | None = None,
    ) -> Results:
        """Fresh parse results of a batch → what to apply now; the rest is held (with the
        batch's ``source`` and ``commits``, which the events keep when emitted later)."""
        commits = commits or {}
        results = dict(results)
        returning = {r.id for r in results.values() if isinstance(r, Story)}
        for rel in results:  # fresh content replaces anything held for the same path
            self.held.pop(rel, None)
            self.recheck.pop(rel, None)
        for rel, held in list(self.held.items()):
            if held.story_id in returning:  # came back elsewhere: a move, now
                results[rel] = None
                del self.held[rel]
        if self.grace_s <= 0:
            return results
        for rel, result in list(results.items()):
            story_id = owns(rel)
            if story_id is None:
                continue
            if result is None and story_id not in returning:
                self.held[rel] = Held(story_id, now + self.grace_s, source, commits)
                del results[rel]
            elif isinstance(result, ParseError) and not is_broken(rel):
                self.recheck[rel] = Held(story_id, now + self.grace_s, source, commits)
                del results[rel]
        return results

    def held_from(self, source: Json) -> int:
        """How many held paths were seen in the batch of ``source`` (they count in its
        size: they are emitted later with it)."""
        return sum(1 for h in (*self.held.values(), *self.recheck.values()) if h.source is source)

    def next_deadline(self) -> float | None:
        deadlines = [h.deadline for h in (*self.held.values(), *self.recheck.values())]
        return min(deadlines) if deadlines else None

    def due(self, now: float) -> list[tuple[Json, list[str], Mapping[str, Json]]]:
        """The paths whose hold is over, grouped by the batch they were seen in (each
        event keeps its batch's source and commits), to be read again and applied."""
        by_source: dict[int, tuple[Json, list[str], Mapping[str, Json]]] = {}
        for table in (self.held, self.recheck):
            for rel, held in list(table.items()):
                if held.deadline <= now + 0.001:
                    del table[rel]
                    entry: tuple[Json, list[str], Mapping[str, Json]] = (
                        held.source,
                        [],
                        held.commits,
                    )
                    by_source.setdefault(id(held.source), entry)[1].append(rel)
        return [(source, sorted(rels), commits) for source, rels, commits in by_source.values()]
