"""storywatch.catchup: positions, tombstones, the horizon and catch-up answers (SPEC §9).

The property at the end is the exactness proof: random histories run through the real index
(creates, edits, status changes, moves between epics, renames, deletes, re-creates, broken
files, duplicates), random filters and token scopes, a random cursor, tombstones expiring on
the way: applying the catch-up to the state an observer held at the cursor gives exactly
the state of an observer that never left.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storywatch.catchup import (
    DAY_S,
    Broken,
    Catchup,
    CatchupState,
    Entry,
    Position,
    Positions,
    advance,
    event_epics,
    event_time,
)
from storywatch.coalesce import transformed
from storywatch.events import EVENT_TYPES, Event, Json, number
from storywatch.filters import Filter, Scope
from storywatch.index import Index
from storywatch.story import ParseError, ParseResult, Story

EPOCH = "e1"
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp()
ALL = Scope()


def iso(seconds: float) -> str:
    moment = dt.datetime.fromtimestamp(seconds, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# -- a tiny repo: files in, events out, through the real index -----------------------------


@dataclass
class Repo:
    """Files (path → parse result) diffed by the real :class:`Index` into numbered events."""

    index: Index = field(default_factory=Index)
    files: dict[str, ParseResult] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    now: float = T0

    @property
    def seq(self) -> int:
        return len(self.events)

    def change(self, changes: dict[str, ParseResult | None], advance_s: float = 1.0) -> list[Event]:
        self.now += advance_s
        for path, result in changes.items():
            if result is None:
                self.files.pop(path, None)
            else:
                self.files[path] = result
        out = []
        for draft in self.index.apply(changes):
            out.append(number(draft, self.seq + 1, EPOCH, iso(self.now), {"kind": "fs"}))
            self.events.append(out[-1])
        return out

    def write(self, path: str, story_id: str, advance_s: float = 1.0, **fields: Any) -> list[Event]:
        body = str(fields.pop("body", ""))
        data = {"id": story_id, "path": path, **{k: v for k, v in fields.items() if v is not None}}
        return self.change({path: Story(story_id, path, data, body)}, advance_s)

    def stories(self) -> dict[str, Json]:
        return {story_id: story.fields for story_id, story in self.index.stories.items()}

    def invalid(self) -> dict[str, Json]:
        """The truth: stories whose owning file is broken now (duplicates are not)."""
        return {
            self.index.claims[path]: {
                "story_id": self.index.claims[path],
                "path": path,
                "error": error.as_json(),
            }
            for path, error in self.index.broken.items()
        }


def positions_of(events: Iterable[Event]) -> Positions:
    positions = Positions()
    positions.apply(events)
    return positions


# -- positions ------------------------------------------------------------------------------


def test_a_position_holds_the_last_seq_and_every_epic_the_story_had() -> None:
    repo = Repo()
    repo.write("a.md", "A", epic="ui", status="todo")
    repo.write("b.md", "B", epic="api")
    repo.write("a.md", "A", epic="api", status="todo")
    repo.write("a.md", "A", epic="api", status="done")
    positions = positions_of(repo.events)
    assert positions.get("A") == Position(4, frozenset({"ui", "api"}))
    assert positions.get("B") == Position(2, frozenset({"api"}))
    assert [story_id for story_id, _ in positions.items()] == ["B", "A"]  # by last seq


def test_a_delete_leaves_a_tombstone_with_the_time_it_was_deleted() -> None:
    repo = Repo()
    repo.write("a.md", "A", epic="ui")
    (deleted,) = repo.change({"a.md": None}, advance_s=5)
    position = positions_of(repo.events).get("A")
    assert position is not None and position.deleted_at is not None
    assert position.seq == deleted.seq
    assert position.deleted_at == pytest.approx(repo.now, abs=0.001)
    assert position.epics == frozenset({"ui"})


def test_a_re_created_story_is_live_again_and_keeps_its_old_epics() -> None:
    repo = Repo()
    repo.write("a.md", "A", epic="ui")
    repo.change({"a.md": None})
    repo.write("a.md", "A", epic="api")
    positions = positions_of(repo.events)
    assert positions.get("A") == Position(3, frozenset({"ui", "api"}))
    assert positions.tombstones == 0


def test_event_epics_reads_before_and_after_and_compares_as_strings() -> None:
    moved = {"type": "story.updated", "story": {"epic": 7}, "changes": {"epic": {"old": "ui"}}}
    assert event_epics(moved) == ("7", "ui")
    assert event_epics({"type": "story.created", "story": {}, "changes": {}}) == ()
    dropped = {
        "type": "story.updated",
        "story": {},
        "changes": {"epic": {"old": "ui", "new": None}},
    }
    assert event_epics(dropped) == ("ui",)


def test_advance_is_pure_and_in_seq_order() -> None:
    repo = Repo()
    repo.write("a.md", "A", epic="ui")
    repo.write("b.md", "B")
    repo.write("a.md", "A", epic="ui", status="x")
    prior = {"A": Position(0, frozenset({"old"}))}
    out = advance(prior, (e.data for e in repo.events))
    assert list(out) == ["B", "A"]
    assert out["A"] == Position(3, frozenset({"old", "ui"}))
    assert prior == {"A": Position(0, frozenset({"old"}))}


def test_identical_epic_sets_are_one_object() -> None:
    repo = Repo()
    for n in range(5):
        repo.write(f"{n}.md", f"S{n}", epic="ui")
    positions = positions_of(repo.events)
    sets = {id(p.epics) for _, p in positions.items()}
    assert len(sets) == 1


def test_positions_loaded_out_of_order_are_sorted_by_seq() -> None:
    loaded = {
        "A": Position(9, frozenset()),
        "B": Position(2, frozenset()),
        "C": Position(5, frozenset()),
    }
    positions = Positions(loaded, horizon=1)
    assert [story_id for story_id, _ in positions.items()] == ["B", "C", "A"]
    assert [story_id for story_id, _ in positions.changed_after(4)] == ["C", "A"]
    assert positions.horizon == 1


def test_position_encoding_round_trips_and_accepts_lua_empty_tables() -> None:
    for position in (Position(3, frozenset({"ui", "a/b"})), Position(7, frozenset(), 1.5e9)):
        assert Position.decode(position.encode()) == position
    assert Position.decode('{"s":4,"e":{},"d":1767225600.123}') == Position(
        4, frozenset(), 1767225600.123
    )
    assert Position.decode('{"s":4.0,"e":["x"]}') == Position(4, frozenset({"x"}))
    for bad in ("[]", '{"s":-1,"e":[]}', '{"s":true,"e":[]}', '{"s":1,"e":[1]}', '{"s":1,"d":"x"}'):
        with pytest.raises(ValueError):
            Position.decode(bad)


def test_event_time_reads_the_wire_format() -> None:
    assert event_time(iso(T0 + 12.345)) == pytest.approx(T0 + 12.345)


# -- expiry and the horizon ----------------------------------------------------------------------


def test_tombstones_expire_after_keep_days_and_raise_the_horizon() -> None:
    repo = Repo()
    repo.write("a.md", "A")
    repo.write("b.md", "B")
    repo.write("c.md", "C")
    repo.change({"a.md": None}, advance_s=10)  # seq 4, at T0 + 13
    repo.change({"b.md": None}, advance_s=DAY_S)  # seq 5, a day later
    positions = positions_of(repo.events)
    deleted_a = T0 + 13
    assert positions.expire(deleted_a + 0.5 * DAY_S - 1, keep_days=0.5) == []
    dropped = positions.expire(deleted_a + 0.5 * DAY_S, keep_days=0.5)
    assert [story_id for story_id, _ in dropped] == ["A"]
    assert positions.horizon == 4 and "A" not in positions and "B" in positions
    assert positions.expire(repo.now + 10 * DAY_S, keep_days=0.5)[0][0] == "B"
    assert positions.horizon == 5
    assert positions.get("C") is not None  # a live story never expires
    assert positions.tombstones == 0


def test_a_re_created_story_does_not_expire_with_its_old_tombstone() -> None:
    repo = Repo()
    repo.write("a.md", "A")
    repo.change({"a.md": None})
    repo.write("a.md", "A")
    positions = positions_of(repo.events)
    assert positions.expire(repo.now + 100 * DAY_S, keep_days=1) == []
    assert positions.horizon == 0 and positions.get("A") == Position(3, frozenset())


def test_the_horizon_is_the_newest_dropped_even_when_clocks_went_backwards() -> None:
    repo = Repo()
    repo.write("a.md", "A")
    repo.write("b.md", "B")
    repo.change({"a.md": None}, advance_s=100)  # seq 3
    repo.change({"b.md": None}, advance_s=-50)  # seq 4, deleted "earlier"
    positions = positions_of(repo.events)
    assert [s for s, _ in positions.expire(repo.now + DAY_S + 50, keep_days=1)] == ["B", "A"]
    assert positions.horizon == 4


def test_delete_churn_does_not_grow_the_tombstone_heap_without_bound() -> None:
    repo = Repo()
    positions = Positions()
    for _ in range(500):
        positions.apply(repo.write("a.md", "A"))
        positions.apply(repo.change({"a.md": None}))
    assert len(positions._tombstones) <= 2 * positions.tombstones + 64


@pytest.mark.parametrize(
    ("since", "ok"),
    [
        (-1, False),
        (2, False),
        (3, True),
        (7, True),
        (8, False),
        (True, False),
        ("3", False),
        (None, False),
    ],
)
def test_catchable_cursors(since: Any, ok: bool) -> None:
    assert Positions(horizon=3).catchable(since, 7) is ok


# -- answers ----------------------------------------------------------------------------------


def story(story_id: str, **fields: Any) -> Json:
    return {"id": story_id, "path": f"{story_id}.md", **fields}


def test_catch_up_splits_stories_removed_and_invalid() -> None:
    repo = Repo()
    repo.write("a.md", "A", epic="ui", status="todo")
    repo.write("b.md", "B", epic="ui", status="todo")
    repo.write("c.md", "C", epic="api", status="todo")
    repo.write("d.md", "D", epic="ui", status="todo")
    since = repo.seq
    repo.write("a.md", "A", epic="ui", status="done")  # still matches
    repo.write("b.md", "B", epic="api", status="todo")  # left the scope
    repo.write("c.md", "C", epic="api", status="doing")  # never in the scope
    repo.change({"d.md": ParseError("yaml", "bad", 2)})  # broken now
    repo.write("a2.md", "A", epic="ui")  # a duplicate of a healthy story
    positions = positions_of(repo.events)
    result = positions.catch_up(
        since, repo.seq, Filter(), Scope(frozenset({"ui"})), repo.stories(), repo.invalid()
    )
    assert result is not None
    body = next(result.messages(EPOCH, sub="s1"))
    assert [s["id"] for s in body["stories"]] == ["D", "A"]
    assert body["removed"] == ["B"]
    assert body["invalid"] == [
        {"story_id": "D", "path": "d.md", "error": {"reason": "yaml", "message": "bad", "line": 2}}
    ]
    assert (body["type"], body["sub"], body["epoch"], body["seq"], body["since"], body["done"]) == (
        "catchup",
        "s1",
        EPOCH,
        repo.seq,
        since,
        True,
    )


def test_a_duplicate_id_problem_passed_in_is_not_reported() -> None:
    positions = Positions({"A": Position(2, frozenset())})
    problem = {"story_id": "A", "path": "x.md", "error": {"reason": "duplicate_id"}}
    result = positions.catch_up(0, 2, Filter(), ALL, {"A": story("A")}, {"A": problem})
    assert result is not None and result.entries == (Entry("A", 2, story("A"), None),)


def test_an_unscoped_token_gets_every_removal_and_the_events_key_is_ignored() -> None:
    positions = Positions({"A": Position(2, frozenset()), "B": Position(3, frozenset({"ui"}), T0)})
    flt = Filter(events=frozenset({"story.created"}), statuses=frozenset({"done"}))
    current = {"A": story("A", status="todo")}
    result = positions.catch_up(0, 3, flt, ALL, current, {})
    assert result is not None
    assert [(e.story_id, e.story) for e in result.entries] == [("A", None), ("B", None)]


def test_chunks_hold_at_most_size_entries_in_seq_order_and_done_on_the_last() -> None:
    entries = tuple(
        Entry(f"S{n}", n, story(f"S{n}") if n % 3 else None, None) for n in range(1, 1202)
    )
    messages = list(Catchup(since=0, seq=1201, entries=entries).messages(EPOCH))
    assert Catchup(since=0, seq=1201, entries=entries).count() == len(messages)
    assert [len(m["stories"]) + len(m["removed"]) for m in messages] == [500, 500, 201]
    assert [m["done"] for m in messages] == [False, False, True]
    assert all("sub" not in m and m["invalid"] == [] for m in messages)
    seen = [s["id"] for m in messages for s in m["stories"]]
    assert seen == [f"S{n}" for n in range(1, 1202) if n % 3]


def test_an_empty_catch_up_is_one_done_chunk() -> None:
    messages = list(Catchup(since=5, seq=5, entries=()).messages(EPOCH, sub="s"))
    assert messages == [
        {
            "type": "catchup",
            "sub": "s",
            "epoch": EPOCH,
            "seq": 5,
            "since": 5,
            "stories": [],
            "removed": [],
            "invalid": [],
            "done": True,
        }
    ]


def test_pages_cut_at_the_limit_and_point_at_the_last_entry() -> None:
    loaded = {f"S{n}": Position(n, frozenset({"ui"})) for n in range(1, 11)}
    current = {f"S{n}": story(f"S{n}", epic="ui") for n in range(1, 11) if n != 4}
    positions = Positions(loaded)
    page = positions.page(0, 12, Filter(), ALL, current, {}, limit=4)
    assert page is not None and page.more and page.seq == 4
    assert page.to_json(EPOCH) == {
        "epoch": EPOCH,
        "seq": 4,
        "recovered": True,
        "compacted": True,
        "events": [],
        "stories": [current["S1"], current["S2"], current["S3"]],
        "removed": ["S4"],
        "invalid": [],
        "more": True,
    }
    last = positions.page(8, 12, Filter(), ALL, current, {}, limit=2)
    assert last is not None and not last.more and last.seq == 12  # exactly the limit left
    assert positions.page(1, 12, Filter(), Scope(frozenset({"api"})), current, {}) is not None
    assert positions.page(13, 12, Filter(), ALL, current, {}) is None


def test_entries_invisible_to_the_scope_do_not_count_toward_a_page() -> None:
    loaded = {"A": Position(1, frozenset({"ui"})), "B": Position(2, frozenset({"api"}))}
    loaded["C"] = Position(3, frozenset({"ui"}))
    current = {"A": story("A", epic="ui"), "B": story("B", epic="api"), "C": story("C", epic="ui")}
    page = Positions(loaded).page(0, 3, Filter(), Scope(frozenset({"ui"})), current, {}, limit=1)
    assert page is not None and page.more and page.seq == 1
    final = Positions(loaded).page(1, 3, Filter(), Scope(frozenset({"ui"})), current, {}, limit=1)
    assert final is not None and not final.more and [e.story_id for e in final.entries] == ["C"]


def test_catchup_state_expires_on_request_and_tracks_broken_files() -> None:
    repo = Repo()
    repo.write("a.md", "A")
    repo.write("b.md", "B")
    repo.change({"b.md": ParseError("yaml", "bad", 1)})
    repo.change({"a.md": None})
    records = repo.index.records(repo.index.paths())
    state = CatchupState.load({}, 0, {p: r for p, r in records.items() if r}, keep_days=1)
    assert state.broken.problems == repo.invalid()
    state.apply(repo.events)
    assert state.catch_up(0, repo.seq, Filter(), ALL, repo.stories(), now=repo.now) is not None
    later = state.catch_up(0, repo.seq, Filter(), ALL, repo.stories(), now=repo.now + DAY_S)
    assert later is None and state.horizon == 4
    result = state.catch_up(4, repo.seq, Filter(), ALL, repo.stories(), now=repo.now + DAY_S)
    assert result is not None and result.entries == ()
    assert state.page(0, repo.seq, Filter(), ALL, repo.stories(), now=repo.now) is None


def test_broken_tracks_invalid_events_but_not_duplicates() -> None:
    repo = Repo()
    repo.write("a.md", "A", status="x")
    broken = Broken()
    broken.apply(repo.change({"a.md": ParseError("yaml", "bad", 3)}))
    assert broken.problems == repo.invalid()
    broken.apply(repo.write("b.md", "A"))  # a duplicate: the story is still broken, no change
    assert broken.problems == repo.invalid()
    broken.apply(repo.write("a.md", "A", status="y"))  # fixed
    assert broken.problems == {} == repo.invalid()


# -- the exactness property ---------------------------------------------------------------------

IDS = ("S0", "S1", "S2", "S3")
PATHS = ("p0.md", "p1.md", "p2.md", "p3.md", "p4.md")
EPICS = ("a", "b", "c")
STATUSES = ("todo", "doing", "done")
LABELS = ("x", "y")

write_op = st.tuples(
    st.just("write"),
    st.sampled_from(PATHS),
    st.sampled_from(IDS),
    st.sampled_from((*EPICS, None)),
    st.sampled_from(STATUSES),
    st.lists(st.sampled_from(LABELS), max_size=2, unique=True),
    st.integers(0, 1),
)
break_op = st.tuples(
    st.just("break"), st.sampled_from(PATHS), st.sampled_from(("yaml", "missing_id"))
)
remove_op = st.tuples(st.just("remove"), st.sampled_from(PATHS))
rename_op = st.tuples(st.just("rename"), st.sampled_from(PATHS), st.sampled_from(PATHS))
op = st.one_of(write_op, write_op, break_op, remove_op, rename_op)
# A step: one settled batch of file changes, the time it took, and whether a catch-up
# request (which expires tombstones) came in after it.
step = st.tuples(
    st.lists(op, min_size=1, max_size=3), st.sampled_from((60.0, 3600.0, DAY_S)), st.booleans()
)
history = st.lists(step, min_size=1, max_size=25)


def subset(values: tuple[str, ...]) -> st.SearchStrategy[frozenset[str] | None]:
    return st.none() | st.frozensets(st.sampled_from(values), min_size=1)


filters = st.builds(
    Filter,
    epics=subset(EPICS),
    stories=subset(IDS),
    events=subset(EVENT_TYPES),
    statuses=subset(STATUSES),
    labels=subset(LABELS),
)
scopes = st.builds(Scope, epics=st.none() | st.frozensets(st.sampled_from(EPICS)))


def run_step(repo: Repo, ops: list[tuple[Any, ...]], advance_s: float) -> list[Event]:
    changes: dict[str, ParseResult | None] = {}
    files = dict(repo.files)
    for item in ops:
        kind, path = item[0], item[1]
        if kind == "write":
            _, _, story_id, epic, status, labels, body = item
            data = {"id": story_id, "path": path, "status": status, "labels": labels}
            if epic is not None:
                data["epic"] = epic
            changes[path] = files[path] = Story(story_id, path, data, f"body {body}")
        elif kind == "break":
            changes[path] = files[path] = ParseError(item[2], "broken", 2)
        elif kind == "remove":
            changes[path] = None
            files.pop(path, None)
        else:
            target = item[2]
            moved = files.pop(path, None)
            if moved is None or target == path:
                continue
            if isinstance(moved, Story):
                moved = Story(moved.id, target, {**moved.fields, "path": target}, moved.body)
            changes[path] = None
            changes[target] = files[target] = moved
    return repo.change(changes, advance_s)


class Observer:
    """A client with one subscription that never disconnects: the real scope and filter
    rules (scope rewrite, before-or-after match) applied to every event."""

    def __init__(self, flt: Filter, scope: Scope) -> None:
        # The `events` key selects live events only; the state a client holds is about
        # stories, and catch-ups and snapshots ignore it.
        self.flt = dataclasses.replace(flt, events=None)
        self.scope = scope
        self.held: dict[str, Json] = {}

    def see(self, events: Iterable[Event]) -> Observer:
        for event in events:
            view = transformed(event, self.scope)
            if view is None or not self.flt.matches(view.type, view.before, view.after):
                continue
            if view.type == "story.deleted":
                self.held.pop(event.story_id, None)
            elif view.type != "story.invalid":
                assert view.after is not None
                self.held[event.story_id] = view.after
        return self

    def apply(self, entries: Iterable[Entry]) -> None:
        for entry in entries:
            if entry.story is None:
                self.held.pop(entry.story_id, None)
            else:
                self.held[entry.story_id] = entry.story

    def state(self) -> dict[str, Json]:
        """What the client shows: the stories it holds that match its filter now."""
        return {k: v for k, v in self.held.items() if self.flt.matches_story(v)}


def ever_visible(events: list[Event], story_id: str, scope: Scope) -> bool:
    return any(
        e.story_id == story_id and (scope.sees(e.before()) or scope.sees(e.after())) for e in events
    )


def build(
    steps: list[tuple[list[tuple[Any, ...]], float, bool]], keep_days: float
) -> tuple[Repo, Positions]:
    repo, positions = Repo(), Positions()
    for ops, advance_s, request in steps:
        positions.apply(run_step(repo, ops, advance_s))
        if request:
            horizon = positions.horizon
            positions.expire(repo.now, keep_days)
            assert positions.horizon >= horizon
    return repo, positions


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history, filters, scopes, st.sampled_from((0.5, 1.0, 2.0, 1000.0)), st.data())
def test_a_catch_up_is_exact(
    steps: list[tuple[list[tuple[Any, ...]], float, bool]],
    flt: Filter,
    scope: Scope,
    keep_days: float,
    data: st.DataObject,
) -> None:
    repo, positions = build(steps, keep_days)
    since = data.draw(st.integers(0, repo.seq), label="since")
    result = positions.catch_up(since, repo.seq, flt, scope, repo.stories(), repo.invalid())
    if since < positions.horizon:
        assert result is None  # beyond the horizon: the client must take a snapshot
        return
    assert result is not None and result.seq == repo.seq and result.since == since

    client = Observer(flt, scope).see(repo.events[:since])
    client.apply(result.entries)
    always = Observer(flt, scope).see(repo.events)
    assert client.state() == always.state()

    # Nothing the token may not see: stories in scope and filter, removals of stories that
    # were visible to it at some point, no story twice, in the order of their last seq.
    broken_now = repo.invalid()
    seqs = [entry.seq for entry in result.entries]
    assert seqs == sorted(seqs) and all(s > since for s in seqs)
    assert len({entry.story_id for entry in result.entries}) == len(result.entries)
    for entry in result.entries:
        assert entry.seq == max(e.seq for e in repo.events if e.story_id == entry.story_id)
        if entry.story is not None:
            assert scope.sees(entry.story) and flt.matches_story(entry.story)
            assert entry.problem == broken_now.get(entry.story_id)
        else:
            assert ever_visible(repo.events, entry.story_id, scope)
            assert entry.problem is None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history,
    filters,
    scopes,
    st.integers(1, 3),
    st.lists(st.lists(op, max_size=2), max_size=6),
    st.data(),
)
def test_paged_catch_up_is_exact_while_history_goes_on(
    steps: list[tuple[list[tuple[Any, ...]], float, bool]],
    flt: Filter,
    scope: Scope,
    limit: int,
    between: list[list[tuple[Any, ...]]],
    data: st.DataObject,
) -> None:
    """`GET /api/events` pages: each poll continues from the last page's `seq` (answered by
    another catch-up page), with new events between polls; exact once `more` is false."""
    repo, positions = build(steps, keep_days=1000.0)
    since = data.draw(st.integers(0, repo.seq), label="since")
    client = Observer(flt, scope).see(repo.events[:since])
    pending = list(between)
    for _ in range(100):
        page = positions.page(
            since, repo.seq, flt, scope, repo.stories(), repo.invalid(), limit=limit
        )
        assert page is not None
        assert len(page.entries) <= limit
        client.apply(page.entries)
        if not page.more:
            break
        assert page.seq == page.entries[-1].seq
        since = page.seq
        if pending:
            positions.apply(run_step(repo, pending.pop(), 60.0))
    else:
        pytest.fail("paging did not end")
    assert page.seq == repo.seq
    assert client.state() == Observer(flt, scope).see(repo.events).state()


@settings(max_examples=150, deadline=None)
@given(history)
def test_broken_follows_the_index_except_for_silent_fixes(
    steps: list[tuple[list[tuple[Any, ...]], float, bool]],
) -> None:
    repo, _ = build(steps, keep_days=1000.0)
    broken = Broken()
    broken.apply(repo.events)
    truth = repo.invalid()
    for story_id in set(truth) | set(broken.problems):
        if broken.problems.get(story_id) != truth.get(story_id):
            # A file fixed back to exactly its last good content emits nothing: only then
            # may the log's view lag behind, and the story's last event is its invalid one.
            last = [e for e in repo.events if e.story_id == story_id][-1]
            assert story_id not in truth and last.type == "story.invalid"
