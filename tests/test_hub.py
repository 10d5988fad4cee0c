"""Unit tests for storywatch.hub: current state, replay window and fan-out (SPEC §4, §6)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from storywatch.events import Event
from storywatch.hub import Hub
from storywatch.replay import ReplayBuffer
from storywatch.session import Session
from tests.test_session import (
    EPOCH,
    INTEGRATION,
    READER,
    Stream,
    drain,
    frames,
    make_hub,
    make_session,
    send,
)


def test_publish_keeps_the_current_state_of_every_story() -> None:
    stream = Stream()
    hub = make_hub(stream)
    hub.publish([stream.put("A", status="a"), stream.put("B", status="a")])
    hub.publish([stream.put("A", status="b")])
    assert hub.story("A") == stream.states["A"].fields
    hub.publish([stream.invalid("A")])  # the last good state stays
    assert hub.story("A") == stream.states["A"].fields
    hub.publish([stream.delete("B")])
    assert hub.story("B") is None
    assert len(hub) == 1
    assert list(hub.stories()) == [stream.states["A"].fields]
    assert hub.counts == {
        "story.created": 2,
        "story.transitioned": 1,
        "story.invalid": 1,
        "story.deleted": 1,
    }


def test_publish_fills_the_replay_buffer() -> None:
    stream = Stream()
    hub = make_hub(stream, size=3)
    assert (hub.epoch, hub.seq) == (EPOCH, 0)
    hub.publish([stream.put(f"S{i}", n=1) for i in range(5)])
    assert hub.seq == 5
    replay = hub.replay(EPOCH, 2)
    assert replay is not None and [e.seq for e in replay] == [3, 4, 5]
    assert hub.replay(EPOCH, 1) is None  # older than the buffer
    assert hub.replay("other", 4) is None
    assert hub.replay(EPOCH, 5) == []


def test_listeners_get_each_batch_once_after_the_sessions() -> None:
    stream = Stream()
    hub = make_hub(stream)
    session = make_session()
    hub.sessions.add(session)
    send(session, hub, {"type": "subscribe", "sub": "s1"})
    frames(session)
    calls: list[tuple[list[int], int]] = []
    hub.listeners.append(
        lambda events: calls.append(([e.seq for e in events], len(session.outbox)))
    )
    hub.publish([stream.put("A", n=1), stream.put("B", n=1)])
    hub.publish([stream.put("C", n=1)])
    assert calls == [([1, 2], 2), ([3], 3)]


def test_every_session_gets_what_its_filters_match() -> None:
    stream = Stream()
    hub = make_hub(stream)
    sessions = [make_session() for _ in range(3)]
    filters: list[dict[str, Any]] = [{"epics": ["ui"]}, {"epics": ["api"]}, {}]
    for session, flt in zip(sessions, filters, strict=True):
        hub.sessions.add(session)
        send(session, hub, {"type": "subscribe", "sub": "s", "filter": flt})
        frames(session)
    idle = make_session()  # connected, never subscribed
    hub.sessions.add(idle)
    hub.publish([stream.put("U", epic="ui"), stream.put("P", epic="api")])
    got = [[m["story_id"] for m in frames(s)] for s in sessions]
    assert got == [["U"], ["P"], ["U", "P"]]
    assert frames(idle) == []


def test_sessions_with_the_same_filter_share_one_encoded_frame() -> None:
    stream = Stream()
    hub = make_hub(stream)
    sessions = [make_session() for _ in range(50)]
    for session in sessions:
        hub.sessions.add(session)
        send(session, hub, {"type": "subscribe", "sub": "s1"})
        frames(session)
    hub.publish([stream.put("A", title="t" * 1000)])
    sent = [session.drain(0.0).frames[0] for session in sessions]
    assert len({id(frame) for frame in sent}) == 1


def test_reset_resyncs_every_live_subscription_and_keeps_it() -> None:
    stream = Stream()
    hub = make_hub(stream)
    hub.publish([stream.put("A", n=1)])
    session = make_session()
    hub.sessions.add(session)
    send(session, hub, {"type": "subscribe", "sub": "s1"})
    send(session, hub, {"type": "subscribe", "sub": "s2", "filter": {"epics": ["x"]}})
    frames(session)
    hub.reset("ep-2", 7, {"B": {"id": "B", "path": "B.md"}})
    assert [(m["type"], m["sub"], m["reason"], m["epoch"], m["seq"]) for m in frames(session)] == [
        ("resync", "s1", "epoch_changed", "ep-2", 7),
        ("resync", "s2", "epoch_changed", "ep-2", 7),
    ]
    assert set(session.subs) == {"s1", "s2"}
    assert (hub.epoch, hub.seq) == ("ep-2", 7)
    assert [s["id"] for s in hub.stories()] == ["B"]
    assert hub.replay(EPOCH, 1) is None
    assert hub.replay("ep-2", 7) == []
    new_stream = Stream("ep-2")
    new_stream.seq = 7
    hub.publish([new_stream.put("C", n=1)])
    (event,) = frames(session)
    assert (event["epoch"], event["seq"], event["subs"]) == ("ep-2", 8, ["s1"])


def test_replace_stories_sets_the_snapshot_state() -> None:
    hub = Hub(ReplayBuffer(10, EPOCH, 0))
    hub.replace_stories({"A": {"id": "A", "path": "A.md"}})
    session = make_session()
    send(session, hub, {"type": "subscribe", "sub": "s1", "snapshot": True})
    _, snapshot = frames(session)
    assert snapshot["stories"] == [{"id": "A", "path": "A.md"}]


def test_unscoped_and_scoped_sessions_on_one_hub() -> None:
    stream = Stream()
    hub = make_hub(stream)
    hub.publish([stream.put("A", epic="integration", status="a")])
    reader, scoped = make_session(READER), make_session(INTEGRATION)
    for session in (reader, scoped):
        hub.sessions.add(session)
        send(session, hub, {"type": "subscribe", "sub": "s1", "filter": {}})
        frames(session)
    hub.publish([stream.put("A", epic="ui", status="b")])
    (seen,) = frames(reader)
    (gone,) = frames(scoped)
    assert seen["type"] == "story.transitioned"
    assert (gone["type"], gone["reason"]) == ("story.deleted", "out_of_scope")
    assert gone["story"]["status"] == "a"


def scoped_session_with(flt: dict[str, Any]) -> tuple[Stream, Hub, Any]:
    stream = Stream()
    hub = make_hub(stream)
    hub.publish(
        [
            stream.put("IN", epic="integration", status="review"),
            stream.put("OUT", epic="ui", status="review"),
        ]
    )
    session = make_session(INTEGRATION)
    hub.sessions.add(session)
    send(session, hub, {"type": "subscribe", "sub": "s1", "filter": flt})
    frames(session)
    return stream, hub, session


def test_events_filter_sees_the_in_scope_create() -> None:
    """The hub's per-filter match cache must not be used for views the scope rewrote."""
    stream, hub, session = scoped_session_with({"events": ["story.created"]})
    hub.publish([stream.put("OUT", epic="integration")])
    (event,) = frames(session)
    assert (event["type"], event["reason"]) == ("story.created", "in_scope")


def test_events_filter_sees_the_out_of_scope_delete() -> None:
    stream, hub, session = scoped_session_with({"events": ["story.deleted"]})
    hub.publish([stream.put("IN", epic="ui")])
    (event,) = frames(session)
    assert (event["type"], event["reason"]) == ("story.deleted", "out_of_scope")


def test_events_filter_does_not_get_a_rewritten_type_it_excluded() -> None:
    stream, hub, session = scoped_session_with({"events": ["story.updated"]})
    hub.publish([stream.put("IN", epic="ui")])
    assert frames(session) == []


def test_the_session_alone_applies_filters_to_the_view() -> None:
    """The same cases through live_entry + enqueue without the hub's cache are right."""
    stream, hub, session = scoped_session_with({"events": ["story.created"]})
    event = stream.put("OUT", epic="integration")
    hub.buffer.add(event)
    offer(session, event)
    (message,) = frames(session)
    assert (message["type"], message["reason"]) == ("story.created", "in_scope")


def test_cached_matching_gives_the_same_answer_as_direct_matching() -> None:
    stream = Stream()
    hub = make_hub(stream)
    filters: list[dict[str, Any]] = [
        {},
        {"statuses": ["a"]},
        {"statuses": ["b"]},
        {"events": ["story.transitioned"]},
        {"epics": ["ui"], "statuses": ["b"]},
        {"stories": ["A"]},
        {"labels": ["l"]},
    ]
    hub.publish([stream.put("A", status="a", epic="ui", labels=["l"])])
    cached, direct = [], []
    for flt in filters:
        session = make_session()
        hub.sessions.add(session)
        send(session, hub, {"type": "subscribe", "sub": "s", "filter": flt})
        frames(session)
        cached.append(session)
        other = make_session()
        send(other, hub, {"type": "subscribe", "sub": "s", "filter": flt})
        frames(other)
        direct.append(other)
    events: list[Event] = [
        stream.put("A", status="b"),
        stream.put("A", labels=["m"]),
        stream.put("A", epic="api"),
        stream.delete("A"),
    ]
    for event in events:
        hub.publish([event])
        for session in direct:
            offer(session, event)
    for one, two in zip(cached, direct, strict=True):
        assert frames(one) == frames(two)


def offer(session: Session, event: Event, now: float | None = None) -> None:
    """A live event through the session alone, as the hub offers it without its cache."""
    entry = session.live_entry(event)
    if entry is not None:
        session.enqueue(entry, now)


FILTER_CHOICES: list[dict[str, Any]] = [
    {},
    {"statuses": ["a"]},
    {"events": ["story.transitioned", "story.deleted"]},
    {"epics": ["ui"]},
]


@settings(max_examples=60, deadline=None)
@given(
    plans=st.lists(
        st.tuples(
            st.booleans(),  # epic-scoped token
            st.lists(st.sampled_from(range(len(FILTER_CHOICES))), min_size=0, max_size=2),
            st.sampled_from([1000, 2]),  # outbound burst: 2 makes it coalesce
        ),
        min_size=1,
        max_size=6,
    ),
    changes=st.lists(
        st.tuples(
            st.sampled_from("AB"),
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from(["ui", "integration"]),
        ),
        min_size=1,
        max_size=12,
    ),
    regroup_at=st.integers(min_value=0, max_value=12),
)
def test_grouped_fan_out_sends_what_each_session_alone_would(
    plans: list[tuple[bool, list[int], int]],
    changes: list[tuple[str, str, str]],
    regroup_at: int,
) -> None:
    """Sessions of one group share an outbox entry per event; every session must still end
    up with exactly the frames it would get from offering it each event by itself, also
    after one of them changes its subscriptions half way."""
    stream = Stream()
    hub = make_hub(stream)
    grouped, alone = [], []
    for scoped, choices, burst in plans:
        principal = INTEGRATION if scoped else READER
        pair = make_session(principal, burst=burst), make_session(principal, burst=burst)
        for session in pair:
            for n, choice in enumerate(choices):
                send(
                    session,
                    hub,
                    {"type": "subscribe", "sub": f"s{n}", "filter": FILTER_CHOICES[choice]},
                )
        hub.sessions.add(pair[0])
        grouped.append(pair[0])
        alone.append(pair[1])
    for step, (story_id, status, epic) in enumerate(changes):
        if step == regroup_at:
            for session in (grouped[0], alone[0]):
                send(
                    session,
                    hub,
                    {"type": "subscribe", "sub": "late", "filter": {"statuses": ["b"]}},
                )
        event = stream.try_put(story_id, status=status, epic=epic)
        if event is None:
            continue
        hub.publish([event])
        for session in alone:
            offer(session, event, now=0.0)
    for one, two in zip(grouped, alone, strict=True):
        assert drain(one)[0] == drain(two)[0]


def test_events_leave_no_cyclic_garbage_behind() -> None:
    """The daemon runs full garbage collections rarely (storywatch.gcpace): an event that
    leaves the replay buffer, and everything the fan-out made of it, must be freed by
    reference counting alone, or memory grows with every event until the next one."""
    import gc

    stream = Stream()
    hub = Hub(ReplayBuffer(5, stream.epoch, stream.seq))
    sessions = [make_session(READER), make_session(INTEGRATION)]
    for session in sessions:
        hub.sessions.add(session)
        send(session, hub, {"type": "subscribe", "sub": "s1", "filter": {}})
    gc.collect()
    gc.disable()
    try:
        for n in range(50):
            epic = ("integration", "ui")[n % 2]
            hub.publish([stream.put(f"S{n % 7}", status=f"s{n}", epic=epic)])
            for session in sessions:
                drain(session, 1e6 + n)
        assert gc.collect() == 0
    finally:
        gc.enable()
