"""The session's catch-up (SPEC §9) and SSE stream (SPEC §12) paths — pure, no sockets.

A real :class:`Hub` plays the server. The property at the end is the seam proof: a client
that comes back with any ``since`` (replay, catch-up, or refused and then a snapshot),
while events keep coming before it reads anything, ends holding exactly what a session
that never left holds — over WebSocket frames and over SSE messages alike, for random
histories (through the real index), filters and token scopes.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from storywatch import sse
from storywatch.catchup import DAY_S, CatchupState
from storywatch.events import Json
from storywatch.filters import Filter, Scope
from storywatch.hub import Hub
from storywatch.replay import ReplayBuffer
from storywatch.session import Chunked, Session
from storywatch.values import Principal
from tests.frames import decode_frame
from tests.test_catchup import T0, Repo, filters, history, op, run_step, scopes
from tests.test_session import (
    EPOCH,
    INTEGRATION,
    READER,
    Stream,
    frames,
    make_hub,
    make_limits,
    make_session,
    send,
    subscribe,
)
from tests.test_sse import parse_stream


def long_history(size: int = 5, stories: int = 10) -> tuple[Stream, Hub]:
    """``stories`` stories created, then each edited: far more events than the buffer."""
    stream = Stream()
    hub = make_hub(stream, size=size)
    epics = ["integration", "ui"]
    hub.publish([stream.put(f"S{n}", status="draft", epic=epics[n % 2]) for n in range(stories)])
    hub.publish([stream.put(f"S{n}", status="done") for n in range(stories)])
    return stream, hub


def since(seq: int, epoch: str = EPOCH) -> dict[str, Any]:
    return {"epoch": epoch, "seq": seq}


# -- WebSocket: subscribed, catchup chunks, then live ---------------------------------------


def test_since_behind_the_buffer_gets_subscribed_compacted_then_the_catch_up() -> None:
    _, hub = long_history()
    session = make_session()
    subscribed, catchup = subscribe(session, hub, "s1", {"statuses": ["done"]}, since=since(3))
    assert subscribed == {
        "type": "subscribed",
        "sub": "s1",
        "filter": {"statuses": ["done"]},
        "epoch": EPOCH,
        "seq": 20,
        "recovered": True,
        "replayed": 0,
        "compacted": True,
    }
    assert {k: catchup[k] for k in ("type", "sub", "epoch", "seq", "since", "done")} == {
        "type": "catchup",
        "sub": "s1",
        "epoch": EPOCH,
        "seq": 20,
        "since": 3,
        "done": True,
    }
    assert [s["id"] for s in catchup["stories"]] == [f"S{n}" for n in range(10)]
    assert (catchup["removed"], catchup["invalid"]) == ([], [])


def test_events_published_while_the_catch_up_is_pending_follow_it_once_in_order() -> None:
    stream, hub = long_history()
    session = make_session()
    hub.sessions.add(session)
    send(session, hub, {"type": "subscribe", "sub": "s1", "since": since(3)})
    # Nothing read yet: the catch-up (as of seq 20) waits in the outbox while events come.
    hub.publish([stream.put("S1", status="review"), stream.delete("S2")])
    hub.publish([stream.put("NEW", status="draft")])
    messages = frames(session)
    assert [m["type"] for m in messages] == [
        "subscribed",
        "catchup",
        "story.transitioned",
        "story.deleted",
        "story.created",
    ]
    catchup = messages[1]
    assert catchup["seq"] == 20
    assert [m["seq"] for m in messages[2:]] == [21, 22, 23]  # > the catch-up's seq, no gap
    s1 = next(s for s in catchup["stories"] if s["id"] == "S1")
    assert s1["status"] == "done"  # the state of seq 20: the change comes as an event


def test_a_catch_up_goes_out_in_chunks_of_500_encoded_as_the_socket_takes_them() -> None:
    stream = Stream()
    hub = make_hub(stream, size=5)
    hub.publish([stream.put(f"S{n:04}", n=1) for n in range(1203)])
    session = make_session()
    send(session, hub, {"type": "subscribe", "sub": "s1", "since": since(0)})
    (item,) = [i for i in session.outbox.values() if isinstance(i, Chunked)]
    assert item.count == 3 and item.sent == 0
    queued = session.queued_bytes
    assert queued < 1000  # `subscribed` only: the catch-up is not encoded yet
    first = session.drain(1e6, max_frames=2).frames  # `subscribed` and one chunk
    assert item.sent == 1 and session.queued_bytes < queued
    chunks = [json.loads(decode_frame(first[1])), *frames(session)]
    assert [len(c["stories"]) + len(c["removed"]) for c in chunks] == [500, 500, 203]
    assert [c["done"] for c in chunks] == [False, False, True]
    assert {c["seq"] for c in chunks} == {1203} and {c["since"] for c in chunks} == {0}
    ids = [s["id"] for c in chunks for s in c["stories"]]
    assert ids == [f"S{n:04}" for n in range(1203)]  # ordered by last seq, each once


def test_one_snapshot_or_catch_up_in_flight_per_connection() -> None:
    _, hub = long_history()
    session = make_session()
    subscribe(session, hub, "a", snapshot=True)  # drained: nothing in flight any more
    send(session, hub, {"type": "subscribe", "sub": "b", "since": since(3)})
    send(session, hub, {"type": "subscribe", "sub": "c", "since": since(4)})
    send(session, hub, {"type": "subscribe", "sub": "d", "snapshot": True})
    send(session, hub, {"type": "subscribe", "sub": "e", "since": since(19)})  # replay: fine
    messages = frames(session)
    assert [(m["type"], m.get("sub") or m.get("ref")) for m in messages] == [
        ("subscribed", "b"),
        ("catchup", "b"),
        ("error", "c"),
        ("error", "d"),
        ("subscribed", "e"),
        ("story.transitioned", None),
    ]
    assert {messages[2]["code"], messages[3]["code"]} == {"rate_limited"}
    assert set(session.subs) == {"a", "b", "e"}
    (subscribed, catchup) = subscribe(session, hub, "c", since=since(4))  # sent: allowed again
    assert subscribed["compacted"] is True and catchup["done"] is True


def test_cursors_that_cannot_be_caught_up_are_not_recovered() -> None:
    _, hub = long_history()
    for cursor in (since(3, "other"), since(21), since(-1)):
        session = make_session()
        (subscribed,) = subscribe(session, hub, since=cursor)
        assert (subscribed["recovered"], subscribed["compacted"]) == (False, False), cursor


def test_a_cursor_older_than_the_horizon_is_not_recovered_and_expiry_is_on_request() -> None:
    stream = Stream()
    now = [T0]
    hub = Hub(ReplayBuffer(3, EPOCH, 0), clock=lambda: 0.0, wall=lambda: now[0])
    hub.catchup = CatchupState(keep_days=1.0)
    requests: list[int] = []
    hub.on_catchup = lambda: requests.append(hub.seq)
    hub.publish([stream.put("A", n=1), stream.put("B", n=1)])
    hub.publish([stream.delete("A")])  # seq 3: a tombstone, with the time of its event
    hub.publish([stream.put("B", n=n) for n in range(2, 6)])
    now[0] = 1e12  # long after: A's tombstone is due, not yet dropped
    assert hub.catchup.horizon == 0
    (subscribed,) = subscribe(make_session(), hub, since=since(1))
    assert subscribed["recovered"] is False
    assert hub.catchup.horizon == 3 and len(hub.catchup.positions) == 1
    subscribed, catchup = subscribe(make_session(), hub, since=since(3))
    assert subscribed["compacted"] is True and catchup["removed"] == []
    assert requests == [7, 7]  # the app drops expired tombstones from the log on each


def test_with_a_snapshot_since_is_ignored_and_recovered_tells_whether_it_could_be() -> None:
    _, hub = long_history()
    session = make_session()
    subscribed, snapshot = subscribe(session, hub, since=since(3), snapshot=True)
    assert (subscribed["recovered"], subscribed["compacted"], subscribed["replayed"]) == (
        True,
        False,
        0,
    )
    assert snapshot["type"] == "snapshot" and len(snapshot["stories"]) == 10


def test_a_scoped_token_gets_removals_only_of_stories_it_could_see() -> None:
    stream, hub = long_history()
    hub.publish([stream.put("S0", epic="api")])  # S0 leaves `integration`
    hub.publish([stream.put("S1", title="x")])  # `ui`: never visible to the token
    subscribed, catchup = subscribe(make_session(INTEGRATION), hub, since=since(3))
    assert subscribed["compacted"] is True
    assert catchup["removed"] == ["S0"]
    assert [s["id"] for s in catchup["stories"]] == ["S2", "S4", "S6", "S8"]


def test_an_overflow_drops_a_pending_catch_up_with_its_subscription() -> None:
    stream, hub = long_history(stories=10)
    session = make_session(max_pending=2)
    hub.sessions.add(session)
    send(session, hub, {"type": "subscribe", "sub": "s1", "since": since(3)})
    hub.publish([stream.put(f"S{n}", status="x") for n in range(3)])  # 3 pending: overflow
    messages = frames(session)
    assert [(m["type"], m.get("reason")) for m in messages] == [
        ("subscribed", None),
        ("resync", "overflow"),
    ]
    subscribe(session, hub, "s2", snapshot=True)  # nothing in flight any more


# -- SSE: a stream session ------------------------------------------------------------------


def stream_session(principal: Principal = READER, **limits: Any) -> Session:
    return Session("c1", principal, make_limits(**limits), 0.0, sse=True)


def sse_bytes(session: Session, now: float = 1e6) -> bytes:
    out = b""
    while True:
        drained = session.drain(now)
        if not drained.frames:
            if drained.wait <= 0:
                return out
            now += max(drained.wait, 1e-3)
            continue
        out += b"".join(drained.frames)


def dispatched(session: Session) -> list[tuple[str, Any, str]]:
    """(event type, data, id) as an EventSource dispatches them ('' id: none yet)."""
    events, _ = parse_stream(sse_bytes(session))
    return [(e.type, json.loads(e.data), e.last_event_id) for e in events]


def test_a_stream_without_a_last_event_id_starts_with_one_snapshot_then_live() -> None:
    stream, hub = long_history(stories=1203)
    session = stream_session()
    hub.sessions.add(session)
    session.open_stream(Filter(statuses=frozenset({"done"})), None, hub)
    hub.publish([stream.put("S1", status="review")])
    (snapshot, event) = dispatched(session)
    assert snapshot[0] == "snapshot" and snapshot[2] == f"{EPOCH}:2406"
    assert set(snapshot[1]) == {"epoch", "seq", "stories"} and len(snapshot[1]["stories"]) == 1203
    assert event[0] == "story.transitioned" and event[2] == f"{EPOCH}:2407"
    assert "subs" not in event[1] and "replay" not in event[1]


def test_a_stream_resumes_by_replay_catch_up_or_resync_and_snapshot() -> None:
    _, hub = long_history()
    replay = stream_session()
    replay.open_stream(Filter(), (EPOCH, 18), hub)
    assert [(t, d["seq"], d["replay"], i) for t, d, i in dispatched(replay)] == [
        ("story.transitioned", 19, True, f"{EPOCH}:19"),
        ("story.transitioned", 20, True, f"{EPOCH}:20"),
    ]
    caught_up = stream_session()
    caught_up.open_stream(Filter(), (EPOCH, 3), hub)
    ((kind, data, event_id),) = dispatched(caught_up)
    assert (kind, event_id, data["since"], data["done"]) == ("catchup", f"{EPOCH}:20", 3, True)
    assert "sub" not in data
    for resume, reason in (("other", 3), "epoch_changed"), ((EPOCH, 99), "lost"):
        lost = stream_session()
        lost.open_stream(Filter(), resume, hub)
        (resync, snapshot) = dispatched(lost)
        assert resync == ("resync", {"reason": reason, "epoch": EPOCH, "seq": 20}, "")
        assert snapshot[0] == "snapshot" and snapshot[2] == f"{EPOCH}:20"


def test_a_long_catch_up_on_a_stream_has_an_id_only_on_its_last_chunk() -> None:
    stream = Stream()
    hub = make_hub(stream, size=5)
    hub.publish([stream.put(f"S{n}", n=1) for n in range(1001)])
    session = stream_session()
    session.open_stream(Filter(), (EPOCH, 0), hub)
    events, _ = parse_stream(sse_bytes(session))
    assert [(e.type, e.last_event_id) for e in events] == [
        ("catchup", ""),
        ("catchup", ""),
        ("catchup", f"{EPOCH}:1001"),
    ]


def test_a_stream_that_overflows_gets_resync_and_a_snapshot_and_goes_on() -> None:
    stream, hub = long_history()
    session = stream_session(max_pending=2)
    hub.sessions.add(session)
    session.open_stream(Filter(), (EPOCH, 20), hub)
    hub.publish([stream.put(f"S{n}", status="x") for n in range(2)])  # 2 pending stories
    hub.publish([stream.put("S9", status="y")])  # the 3rd: overflow
    hub.publish([stream.put("S8", status="z")])  # after the snapshot: sent as an event
    kinds = [(t, d.get("reason"), d.get("seq")) for t, d, _ in dispatched(session)]
    assert kinds == [
        ("resync", "overflow", 23),
        ("snapshot", None, 23),
        ("story.transitioned", None, 24),
    ]
    assert session.subs  # the stream keeps its subscription


def test_a_stream_told_of_a_new_epoch_gets_resync_and_the_new_state() -> None:
    _stream, hub = long_history()
    session = stream_session()
    hub.sessions.add(session)
    session.open_stream(Filter(), (EPOCH, 20), hub)
    hub.reset("e2", 0, {"X": {"id": "X", "path": "x.md"}})
    ((_, resync, _), (_, snapshot, snapshot_id)) = dispatched(session)
    assert resync == {"reason": "epoch_changed", "epoch": "e2", "seq": 0}
    assert snapshot["stories"] == [{"id": "X", "path": "x.md"}] and snapshot_id == "e2:0"


def test_a_stream_coalesces_like_a_websocket_and_heartbeats_are_comments() -> None:
    stream, hub = long_history()
    session = stream_session(rate_per_s=1, burst=1)
    hub.sessions.add(session)
    session.open_stream(Filter(), (EPOCH, 20), hub)
    hub.publish([stream.put("S1", title="a")])
    session.drain(0.0)  # spends the budget
    hub.publish([stream.put("S1", title="b"), stream.put("S1", title="c")])
    session.send_raw(sse.HEARTBEAT.decode(), urgent=True)
    raw = sse_bytes(session)
    assert raw.startswith(sse.HEARTBEAT)  # urgent: before anything pending
    (event,), comments = parse_stream(raw)
    data = json.loads(event.data)
    assert (event.type, data["coalesced"], event.last_event_id) == (
        "story.updated",
        2,
        f"{EPOCH}:23",
    )
    assert data["changes"] == {"title": {"old": "a", "new": "c"}}
    assert comments == 1


# -- the seam, as a property ---------------------------------------------------------------


class Client:
    """What a client holds, from the messages it is sent (WebSocket JSON or SSE data)."""

    def __init__(self, held: dict[str, Json] | None = None) -> None:
        self.held: dict[str, Json] = dict(held or {})
        self.recovered: bool | None = None
        self.last_seq = 0
        self.kinds: set[str] = set()

    def take(self, kind: str, data: Json) -> None:
        self.kinds.add(kind)
        if kind == "subscribed":
            self.recovered = data["recovered"]
        elif kind == "snapshot":  # the whole of it (WebSocket chunks put together)
            self.held = {s["id"]: s for s in data["stories"]}
        elif kind == "catchup":
            for story in data["stories"]:
                self.held[story["id"]] = story
            for story_id in data["removed"]:
                self.held.pop(story_id, None)
        elif kind.startswith("story."):
            assert data["seq"] > self.last_seq, "in seq order, once"
            self.last_seq = data["seq"]
            if kind == "story.deleted":
                self.held.pop(data["story_id"], None)
            elif kind != "story.invalid":
                self.held[data["story_id"]] = data["story"]
        if kind in ("snapshot", "catchup") and data.get("done", True):
            self.last_seq = data["seq"]

    def state(self, flt: Filter) -> dict[str, Json]:
        return {k: v for k, v in self.held.items() if flt.matches_story(v)}


def read_ws(session: Session, client: Client) -> None:
    snapshot: list[Json] = []
    for message in frames(session):
        if message["type"] == "snapshot":  # chunks: the state is the whole of them
            snapshot.extend(message["stories"])
            if message["done"]:
                client.take("snapshot", {**message, "stories": snapshot})
                snapshot = []
            continue
        client.take(message["type"], message)


def read_sse(session: Session, client: Client) -> None:
    for kind, data, _ in dispatched(session):
        client.take(kind, data)


def connect(session: Session, hub: Hub, flt: Filter, cursor: int | None) -> None:
    if session.sse:
        session.open_stream(flt, None if cursor is None else (EPOCH, cursor), hub)
        return
    message: dict[str, Any] = {"type": "subscribe", "sub": "s", "filter": flt.to_json()}
    message |= {"since": since(cursor)} if cursor is not None else {"snapshot": True}
    send(session, hub, message)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history,
    st.lists(st.lists(op, min_size=1, max_size=3), max_size=4),
    filters,
    scopes,
    st.integers(1, 3),
    st.sampled_from((0.5, 1000.0)),
    st.booleans(),
    st.data(),
)
def test_a_client_that_comes_back_holds_what_a_client_that_never_left_holds(
    steps: list[tuple[list[tuple[Any, ...]], float, bool]],
    meanwhile: list[list[tuple[Any, ...]]],
    flt: Filter,
    scope: Scope,
    buffer_size: int,
    keep_days: float,
    over_sse: bool,
    data: st.DataObject,
) -> None:
    repo = Repo()
    hub = Hub(ReplayBuffer(buffer_size, EPOCH, 0), clock=lambda: 0.0, wall=lambda: repo.now)
    hub.catchup = CatchupState(keep_days=keep_days)
    principal = Principal("p", frozenset({"read"}), scope)
    flt = dataclasses.replace(flt, events=None)  # a state is about stories (SPEC §9)

    def session() -> Session:
        made = Session("c", principal, make_limits(), 0.0, sse=over_sse)
        hub.sessions.add(made)
        return made

    always, always_holds = session(), Client()
    connect(always, hub, flt, None)
    reader = read_sse if over_sse else read_ws
    at: dict[int, dict[str, Json]] = {0: {}}  # what the always-connected client held, by seq
    for ops, advance_s, request in steps:
        hub.publish(run_step(repo, ops, advance_s))
        reader(always, always_holds)
        at[repo.seq] = dict(always_holds.held)
        if request:
            hub.catchable(EPOCH, 0)  # any catch-up request expires tombstones
    cursor = data.draw(st.sampled_from(sorted(at)), label="since")

    back = session()
    back_holds = Client(at[cursor])
    connect(back, hub, flt, cursor)
    for ops in meanwhile:  # before the client reads a thing
        hub.publish(run_step(repo, ops, DAY_S / 4))
    reader(back, back_holds)
    path = "catch-up" if "catchup" in back_holds.kinds else "replay"
    if back_holds.recovered is False or "resync" in back_holds.kinds:
        path = "refused"
    event(f"{'sse' if over_sse else 'ws'}: {path}")
    if back_holds.recovered is False:  # refused: the client asks for a snapshot (WebSocket)
        send(back, hub, {"type": "unsubscribe", "sub": "s"})
        connect(back, hub, flt, None)
        reader(back, back_holds)
    reader(always, always_holds)
    assert back_holds.state(flt) == always_holds.state(flt)
    assert {k: v for k, v in back_holds.held.items() if scope.sees(v)} == back_holds.held
