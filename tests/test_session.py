"""Unit tests for storywatch.session: one connection's pure state (SPEC §4, §6).

No sockets: a real :class:`Hub` on a :class:`ReplayBuffer` plays the server, and every
``now`` is a number the test chooses.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storywatch.changes import field_changes
from storywatch.config import DEFAULTS
from storywatch.events import Draft, Event, number
from storywatch.filters import Scope
from storywatch.hub import Hub
from storywatch.inbound import Delete, Publish, Upsert
from storywatch.index import diff_story
from storywatch.replay import ReplayBuffer
from storywatch.session import Close, Session
from storywatch.story import ParseError, Story
from storywatch.values import Limits, Principal
from tests.frames import decode_frame, next_frame, pending_stories
from tests.frames import drain_all as drain

EPOCH = "ep-1"
TIME = "2026-11-26T07:00:00.000Z"

READER = Principal("reader", frozenset({"read"}))
PUBLISHER = Principal("publisher", frozenset({"publish"}))
ADMIN = Principal("admin", frozenset({"read", "publish", "admin"}))
INTEGRATION = Principal("integration", frozenset({"read"}), Scope(frozenset({"integration"})))


def make_limits(**overrides: Any) -> Limits:
    return Limits(**{**DEFAULTS["limits"], **overrides})


class Stream:
    """Numbers events for a few stories the way the index and the log would."""

    def __init__(self, epoch: str = EPOCH) -> None:
        self.epoch = epoch
        self.seq = 0
        self.states: dict[str, Story] = {}

    def _number(self, draft: Draft) -> Event:
        self.seq += 1
        source = {"kind": "fs", "batch": f"b-{self.seq}", "batch_size": 1}
        return number(draft, self.seq, self.epoch, TIME, source)

    def put(
        self, story_id: str, *, path: str | None = None, body: str | None = None, **fields: Any
    ) -> Event:
        """Create or change a story; ``None`` removes a key. Asserts something changed."""
        event = self.try_put(story_id, path=path, body=body, **fields)
        assert event is not None, f"no change to {story_id}"
        return event

    def try_put(
        self, story_id: str, *, path: str | None = None, body: str | None = None, **fields: Any
    ) -> Event | None:
        old = self.states.get(story_id)
        state = dict(old.fields) if old else {"id": story_id}
        for key, value in fields.items():
            if value is None:
                state.pop(key, None)
            else:
                state[key] = value
        new_path = path or (old.path if old else f"stories/{story_id}.md")
        state["path"] = new_path
        new_body = body if body is not None else (old.body if old else "")
        new = Story(story_id, new_path, state, new_body)
        draft = diff_story(old, new)
        if draft is None:
            return None
        self.states[story_id] = new
        return self._number(draft)

    def delete(self, story_id: str) -> Event:
        old = self.states.pop(story_id)
        return self._number(
            Draft(
                type="story.deleted",
                story_id=story_id,
                path=old.path,
                story=old.fields,
                changes=field_changes(old.fields, {}),
            )
        )

    def invalid(self, story_id: str) -> Event:
        old = self.states[story_id]
        return self._number(
            Draft(
                type="story.invalid",
                story_id=story_id,
                path=old.path,
                story=old.fields,
                changes={},
                error=ParseError("yaml", "bad YAML", 3),
            )
        )


def make_hub(stream: Stream, size: int = 1000) -> Hub:
    """A hub on the tests' clock: time stands at 0 unless a test passes ``now``."""
    return Hub(ReplayBuffer(size, stream.epoch, stream.seq), clock=lambda: 0.0)


def make_session(principal: Principal = READER, now: float = 0.0, **limits: Any) -> Session:
    return Session("c1", principal, make_limits(**limits), now)


def send(session: Session, hub: Hub, message: Any, now: float = 0.0) -> Any:
    raw = message if isinstance(message, str | bytes) else json.dumps(message)
    return session.handle_message(raw, now, hub)


def frames(session: Session, now: float = 1e6) -> list[dict[str, Any]]:
    return drain(session, now)[0]


def only(session: Session) -> dict[str, Any]:
    (message,) = frames(session)
    return message


def subscribe(
    session: Session, hub: Hub, sub: str = "s1", flt: Any = None, **extra: Any
) -> list[dict[str, Any]]:
    send(session, hub, {"type": "subscribe", "sub": sub, "filter": flt or {}, **extra})
    return frames(session)


def story_events(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m["type"].startswith("story.")]


# -- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "ref"),
    [
        (b'{"type": "ping"}', None),
        ("not json", None),
        ("{", None),
        ("[1, 2]", None),
        ('"ping"', None),
        ("null", None),
        ('{"nonce": 1}', None),
        ('{"type": 7, "sub": "s9"}', "s9"),
        ('{"type": null}', None),
    ],
)
def test_bad_request(message: str | bytes, ref: Any) -> None:
    session, hub = make_session(), make_hub(Stream())
    assert session.handle_message(message, 0.0, hub) is None
    error = only(session)
    assert error["type"] == "error"
    assert error["code"] == "bad_request"
    assert error["ref"] == ref
    assert error["message"]


def test_deeply_nested_json_is_a_bad_request_not_a_crash() -> None:
    session, hub = make_session(), make_hub(Stream())
    assert send(session, hub, "[" * 100_000 + "]" * 100_000) is None
    assert only(session)["code"] == "bad_request"


def test_unknown_type_echoes_sub_or_ref() -> None:
    session, hub = make_session(), make_hub(Stream())
    send(session, hub, {"type": "subscribes", "sub": "s1"})
    send(session, hub, {"type": "hello", "ref": "r-2"})
    send(session, hub, {"type": "hello", "ref": {"not": "a ref"}})
    errors = frames(session)
    assert [(e["code"], e["ref"]) for e in errors] == [
        ("unknown_type", "s1"),
        ("unknown_type", "r-2"),
        ("unknown_type", None),
    ]


@pytest.mark.parametrize(
    "message",
    [
        {"type": "subscribe", "filter": {}},
        {"type": "subscribe", "sub": "", "filter": {}},
        {"type": "subscribe", "sub": 5, "filter": {}},
        {"type": "subscribe", "sub": "x" * 65, "filter": {}},
        {"type": "subscribe", "sub": "s1", "filter": {}, "since": 5},
        {"type": "subscribe", "sub": "s1", "filter": {}, "since": {"epoch": EPOCH}},
        {"type": "subscribe", "sub": "s1", "filter": {}, "snapshot": "yes"},
        {"type": "unsubscribe"},
        {"type": "unsubscribe", "sub": 3},
    ],
)
def test_malformed_subscribe_and_unsubscribe_are_bad_requests(message: dict[str, Any]) -> None:
    session, hub = make_session(), make_hub(Stream())
    send(session, hub, message)
    assert only(session)["code"] == "bad_request"
    assert session.subs == {}


def test_sub_of_64_chars_is_accepted() -> None:
    session, hub = make_session(), make_hub(Stream())
    (subscribed,) = subscribe(session, hub, "x" * 64)
    assert subscribed["type"] == "subscribed"


@pytest.mark.parametrize(
    "flt",
    [
        {"epic": ["ui"]},
        {"epics": "ui"},
        {"epics": [1]},
        {"statuses": [None]},
        {"events": ["story.exploded"]},
        ["epics"],
        "everything",
    ],
)
def test_invalid_filter_makes_no_subscription(flt: Any) -> None:
    session, hub = make_session(), make_hub(Stream())
    send(session, hub, {"type": "subscribe", "sub": "s1", "filter": flt})
    error = only(session)
    assert (error["code"], error["ref"]) == ("invalid_filter", "s1")
    assert session.subs == {}


def test_missing_filter_means_everything() -> None:
    session, hub = make_session(), make_hub(Stream())
    send(session, hub, {"type": "subscribe", "sub": "s1"})
    assert only(session)["filter"] == {}


def test_subscribe_with_a_publish_only_token_is_forbidden() -> None:
    session, hub = make_session(PUBLISHER), make_hub(Stream())
    (error,) = subscribe(session, hub)
    assert (error["type"], error["code"], error["ref"]) == ("error", "forbidden", "s1")
    assert session.subs == {}


def test_admin_implies_read() -> None:
    session, hub = make_session(ADMIN), make_hub(Stream())
    (subscribed,) = subscribe(session, hub)
    assert subscribed["type"] == "subscribed"


def test_duplicate_sub_then_reuse_after_unsubscribe() -> None:
    session, hub = make_session(), make_hub(Stream())
    subscribe(session, hub, "s1")
    (error,) = subscribe(session, hub, "s1", {"epics": ["ui"]})
    assert (error["code"], error["ref"]) == ("duplicate_sub", "s1")
    send(session, hub, {"type": "unsubscribe", "sub": "s1"})
    assert only(session) == {"type": "unsubscribed", "sub": "s1"}
    (subscribed,) = subscribe(session, hub, "s1", {"epics": ["ui"]})
    assert subscribed["filter"] == {"epics": ["ui"]}


def test_too_many_subscriptions() -> None:
    session, hub = make_session(max_subscriptions=2), make_hub(Stream())
    subscribe(session, hub, "a")
    subscribe(session, hub, "b")
    (error,) = subscribe(session, hub, "c")
    assert (error["code"], error["ref"]) == ("too_many_subscriptions", "c")
    assert set(session.subs) == {"a", "b"}


def test_unknown_sub() -> None:
    session, hub = make_session(), make_hub(Stream())
    send(session, hub, {"type": "unsubscribe", "sub": "nope"})
    error = only(session)
    assert (error["code"], error["ref"]) == ("unknown_sub", "nope")


def test_ping_pong_echoes_the_nonce() -> None:
    session, hub = make_session(), make_hub(Stream())
    send(session, hub, {"type": "ping", "nonce": "n-7"})
    send(session, hub, {"type": "ping", "nonce": {"any": ["json"]}})
    send(session, hub, {"type": "ping"})
    assert frames(session) == [
        {"type": "pong", "nonce": "n-7"},
        {"type": "pong", "nonce": {"any": ["json"]}},
        {"type": "pong", "nonce": None},
    ]


# -- publish --------------------------------------------------------------------------


def test_publish_returns_a_request() -> None:
    session, hub = make_session(PUBLISHER), make_hub(Stream())
    items: list[dict[str, Any]] = [
        {"op": "upsert", "story": {"id": 7, "title": "T"}},
        {"op": "delete", "id": "B"},
    ]
    outcome = send(
        session, hub, {"type": "publish", "ref": "ci-1", "items": items, "source": {"kind": "git"}}
    )
    assert outcome == Publish(
        ref="ci-1",
        items=(Upsert("7", {"id": "7", "title": "T"}, None, "7.md"), Delete("B")),
        source={"kind": "git"},
    )
    assert frames(session) == []


@pytest.mark.parametrize(
    "message",
    [
        {"type": "publish", "ref": "r", "items": "nope"},
        {"type": "publish", "ref": "r"},
        {"type": "publish", "ref": "r", "items": [{"op": "delete", "id": "A"}] * 1001},
        {"type": "publish", "ref": "r", "items": [{"op": "upsert"}]},
        {"type": "publish", "ref": "r", "items": [{"op": "upsert", "story": {"title": "x"}}]},
        {"type": "publish", "ref": "r", "items": [{"op": "upsert", "story": {"id": True}}]},
        {"type": "publish", "ref": "r", "items": [{"op": "upsert", "story": {"id": ""}}]},
        {
            "type": "publish",
            "ref": "r",
            "items": [{"op": "upsert", "story": {"id": "A", "path": 3}}],
        },
        {"type": "publish", "ref": "r", "items": [{"op": "delete"}]},
        {"type": "publish", "ref": "r", "items": [{"op": "merge", "id": "A"}]},
        {"type": "publish", "ref": "r", "items": [5]},
        {"type": "publish", "ref": "r", "items": [], "source": "git"},
    ],
)
def test_malformed_publish_is_a_bad_request(message: dict[str, Any]) -> None:
    session, hub = make_session(PUBLISHER), make_hub(Stream())
    assert send(session, hub, message) is None
    error = only(session)
    assert (error["code"], error["ref"]) == ("bad_request", "r")


def test_publish_of_1000_items_is_allowed() -> None:
    session, hub = make_session(PUBLISHER), make_hub(Stream())
    items = [{"op": "delete", "id": str(n)} for n in range(1000)]
    assert isinstance(send(session, hub, {"type": "publish", "ref": "r", "items": items}), Publish)


def test_publish_without_publish_scope_is_forbidden() -> None:
    session, hub = make_session(READER), make_hub(Stream())
    assert send(session, hub, {"type": "publish", "ref": "r", "items": []}) is None
    error = only(session)
    assert (error["code"], error["ref"]) == ("forbidden", "r")


# -- inbound rate limit ---------------------------------------------------------------


def test_inbound_burst_then_rate_limited_then_close_1008() -> None:
    session, hub = make_session(inbound_per_s=20, inbound_burst=50), make_hub(Stream())
    ping = {"type": "ping", "nonce": 1}
    for _ in range(50):
        assert send(session, hub, ping, now=10.0) is None
    assert [m["type"] for m in frames(session)] == ["pong"] * 50
    # Over budget: refused messages are answered with rate_limited, not processed…
    for _ in range(50):
        assert send(session, hub, ping, now=10.0) is None
    errors = frames(session)
    assert [(m["type"], m["code"]) for m in errors] == [("error", "rate_limited")] * 50
    # …and persisting past a second budget is abuse: close with 1008.
    outcome = send(session, hub, ping, now=10.0)
    assert isinstance(outcome, Close)
    assert outcome.code == 1008


def test_inbound_bucket_refills_with_time() -> None:
    session, hub = make_session(inbound_per_s=20, inbound_burst=50), make_hub(Stream())
    ping = {"type": "ping"}
    for _ in range(51):
        send(session, hub, ping, now=0.0)
    assert frames(session)[-1]["code"] == "rate_limited"
    send(session, hub, ping, now=0.05)  # one token back after 1/20 s
    assert only(session)["type"] == "pong"
    send(session, hub, ping, now=0.05)
    assert only(session)["code"] == "rate_limited"


def test_steady_rate_within_budget_is_never_limited() -> None:
    session, hub = make_session(inbound_per_s=20, inbound_burst=50), make_hub(Stream())
    for n in range(2000):  # 100 s at 19.9 messages/s
        assert send(session, hub, {"type": "ping"}, now=n / 19.9) is None
    assert {m["type"] for m in frames(session)} == {"pong"}


def test_flood_at_three_times_the_rate_is_closed() -> None:
    session, hub = make_session(inbound_per_s=20, inbound_burst=50), make_hub(Stream())
    outcome = None
    n = 0
    while outcome is None and n < 6000:
        outcome = send(session, hub, {"type": "ping"}, now=n / 60)
        n += 1
    assert isinstance(outcome, Close) and outcome.code == 1008
    assert n / 60 < 5  # closed within a few seconds of sustained abuse


def test_binary_and_garbage_frames_count_against_the_inbound_budget() -> None:
    session, hub = make_session(inbound_per_s=1, inbound_burst=2), make_hub(Stream())
    send(session, hub, b"\x00")
    send(session, hub, "garbage")
    send(session, hub, {"type": "ping"})
    assert [m["code"] for m in frames(session)] == ["bad_request", "bad_request", "rate_limited"]


# -- subscribe, snapshot, replay -----------------------------------------------------


def seeded(n: int = 3) -> tuple[Stream, Hub]:
    stream = Stream()
    hub = make_hub(stream)
    epics = ["integration", "ui", "api"]
    hub.publish([stream.put(f"S{i}", status="draft", epic=epics[i % 3]) for i in range(n)])
    return stream, hub


def test_subscribed_without_since() -> None:
    _, hub = seeded()
    session = make_session()
    (subscribed,) = subscribe(session, hub, "s1", {"statuses": ["review", "draft"]})
    assert subscribed == {
        "type": "subscribed",
        "sub": "s1",
        "filter": {"statuses": ["draft", "review"]},
        "epoch": EPOCH,
        "seq": 3,
        "recovered": None,
        "replayed": 0,
        "compacted": False,
    }


def test_snapshot_follows_subscribed_and_respects_filter_and_scope() -> None:
    _, hub = seeded(9)
    session = make_session(INTEGRATION)
    messages = subscribe(session, hub, "s1", {"statuses": ["draft"]}, snapshot=True)
    assert [m["type"] for m in messages] == ["subscribed", "snapshot"]
    snapshot = messages[1]
    assert snapshot["sub"] == "s1" and snapshot["done"] is True
    assert (snapshot["epoch"], snapshot["seq"]) == (EPOCH, 9)
    assert sorted(s["id"] for s in snapshot["stories"]) == ["S0", "S3", "S6"]
    assert all(s["epic"] == "integration" for s in snapshot["stories"])


def test_snapshot_chunks_of_500() -> None:
    _, hub = seeded(1201)
    session = make_session()
    messages = subscribe(session, hub, snapshot=True)
    chunks = messages[1:]
    assert [len(c["stories"]) for c in chunks] == [500, 500, 201]
    assert [c["done"] for c in chunks] == [False, False, True]
    assert len({s["id"] for c in chunks for s in c["stories"]}) == 1201


def test_empty_snapshot_is_one_done_chunk() -> None:
    _, hub = seeded(3)
    session = make_session()
    messages = subscribe(session, hub, flt={"epics": ["none"]}, snapshot=True)
    assert messages[1]["stories"] == [] and messages[1]["done"] is True


def test_since_replays_missed_matching_events() -> None:
    stream, hub = seeded(3)  # seq 1-3: creates
    hub.publish(
        [
            stream.put("S0", status="ready"),
            stream.put("S1", status="ready"),
            stream.put("S2", status="done"),
        ]
    )  # seq 4-6
    session = make_session()
    hub.sessions.add(session)
    messages = subscribe(
        session, hub, "s1", {"stories": ["S0", "S2"]}, since={"epoch": EPOCH, "seq": 3}
    )
    subscribed, *events = messages
    assert (subscribed["recovered"], subscribed["replayed"]) == (True, 2)
    assert [(e["seq"], e["replay"], e["subs"]) for e in events] == [
        (4, True, ["s1"]),
        (6, True, ["s1"]),
    ]
    # Then live events follow, not marked as replayed.
    hub.publish([stream.put("S0", status="review")])
    (live,) = frames(session)
    assert live["seq"] == 7 and "replay" not in live


def test_replay_under_budget_sends_every_event_of_a_story() -> None:
    stream, hub = seeded(3)
    hub.publish([stream.put("S0", status="ready"), stream.put("S0", status="done")])
    session = make_session()  # burst 1000: nothing here is over budget
    subscribed, *events = subscribe(session, hub, "s1", since={"epoch": EPOCH, "seq": 3})
    assert subscribed["replayed"] == 2
    assert [(e["seq"], e.get("from"), e.get("to")) for e in events] == [
        (4, "draft", "ready"),
        (5, "ready", "done"),
    ]


def test_live_events_under_budget_are_not_coalesced() -> None:
    stream, hub = seeded(1)
    session = make_session()
    hub.sessions.add(session)
    subscribe(session, hub)
    hub.publish([stream.put("S0", status="ready")])
    hub.publish([stream.put("S0", status="done")])
    events = frames(session)
    assert [e["seq"] for e in events] == [2, 3]
    assert all("coalesced" not in e for e in events)


def test_since_zero_replays_the_whole_buffer() -> None:
    _, hub = seeded(4)
    session = make_session()
    subscribed, *events = subscribe(session, hub, since={"epoch": EPOCH, "seq": 0})
    assert (subscribed["recovered"], subscribed["replayed"]) == (True, 4)
    assert [e["seq"] for e in events] == [1, 2, 3, 4]


def test_since_the_latest_seq_recovers_with_nothing_to_replay() -> None:
    _, hub = seeded(4)
    session = make_session()
    (subscribed,) = subscribe(session, hub, since={"epoch": EPOCH, "seq": 4})
    assert (subscribed["recovered"], subscribed["replayed"]) == (True, 0)


@pytest.mark.parametrize(
    "since",
    [
        {"epoch": "other", "seq": 1},
        {"epoch": EPOCH, "seq": 99},
        {"epoch": EPOCH, "seq": -1},
        {"epoch": EPOCH, "seq": "2"},
        {"epoch": EPOCH, "seq": True},
        {"epoch": None, "seq": 1},
    ],
)
def test_since_that_cannot_be_resumed_is_not_recovered(since: dict[str, Any]) -> None:
    _, hub = seeded(4)
    session = make_session()
    (subscribed,) = subscribe(session, hub, since=since)
    assert (subscribed["recovered"], subscribed["replayed"]) == (False, 0)
    assert "s1" in session.subs  # the subscription is made: live events follow


def test_since_older_than_the_buffer_is_caught_up_not_replayed() -> None:
    stream = Stream()
    hub = make_hub(stream, size=5)
    hub.publish([stream.put(f"S{n}", n=n) for n in range(10)])
    session = make_session()
    subscribed, catchup = subscribe(session, hub, since={"epoch": EPOCH, "seq": 3})
    assert (subscribed["recovered"], subscribed["compacted"], subscribed["replayed"]) == (
        True,
        True,
        0,
    )
    assert catchup["type"] == "catchup" and catchup["done"] is True  # SPEC §9
    assert [s["id"] for s in catchup["stories"]] == [f"S{n}" for n in range(3, 10)]
    subscribed, *events = subscribe(session, hub, "s2", since={"epoch": EPOCH, "seq": 5})
    assert subscribed["recovered"] is True
    assert [e["seq"] for e in events] == [6, 7, 8, 9, 10]


def test_since_with_snapshot_sends_the_snapshot_not_the_replay() -> None:
    _, hub = seeded(4)
    session = make_session()
    messages = subscribe(session, hub, since={"epoch": EPOCH, "seq": 1}, snapshot=True)
    assert [m["type"] for m in messages] == ["subscribed", "snapshot"]
    assert (messages[0]["recovered"], messages[0]["replayed"]) == (True, 0)
    messages = subscribe(session, hub, "s2", since={"epoch": "x", "seq": 1}, snapshot=True)
    assert messages[0]["recovered"] is False
    assert len(messages[1]["stories"]) == 4


def test_replay_does_not_resend_what_another_subscription_delivered() -> None:
    stream, hub = seeded(0)
    session = make_session()
    hub.sessions.add(session)
    subscribe(session, hub, "a", {"epics": ["ui"]})
    hub.publish([stream.put("U", epic="ui"), stream.put("I", epic="integration")])
    assert [e["story_id"] for e in frames(session)] == ["U"]
    subscribed, *events = subscribe(session, hub, "b", {}, since={"epoch": EPOCH, "seq": 0})
    # U was already sent (subs ["a"]); only I is new for this connection.
    assert subscribed["replayed"] == 1
    assert [(e["story_id"], e["subs"]) for e in events] == [("I", ["b"])]


def test_replay_sends_events_from_before_another_subscription_began() -> None:
    stream, hub = seeded(0)
    hub.publish([stream.put("A", status="draft")])  # seq 1
    hub.publish([stream.put("A", status="ready")])  # seq 2: the client never saw it
    session = make_session()
    hub.sessions.add(session)
    subscribe(session, hub, "a", {})  # live from seq 2
    hub.publish([stream.put("A", status="review")])  # seq 3, sent through "a"
    assert [e["seq"] for e in frames(session)] == [3]
    subscribed, *events = subscribe(session, hub, "b", {}, since={"epoch": EPOCH, "seq": 1})
    # SPEC §4: recovered true and *every* missed matching event; seq 2 was never sent here.
    assert subscribed["recovered"] is True
    assert [e["seq"] for e in events] == [2]


# -- live events, scope views ---------------------------------------------------------


def test_live_event_lists_every_matching_sub_once() -> None:
    stream, hub = seeded(0)
    session = make_session()
    hub.sessions.add(session)
    subscribe(session, hub, "all", {})
    subscribe(session, hub, "ui", {"epics": ["ui"]})
    subscribe(session, hub, "api", {"epics": ["api"]})
    hub.publish([stream.put("U", epic="ui")])
    (event,) = frames(session)
    assert event["subs"] == ["all", "ui"]


def test_filter_matches_before_or_after() -> None:
    stream, hub = seeded(0)
    hub.publish([stream.put("A", status="review")])
    session = make_session()
    hub.sessions.add(session)
    subscribe(session, hub, "col", {"statuses": ["review"]})
    hub.publish([stream.put("A", status="done")])  # leaves the column: still delivered
    hub.publish([stream.put("A", title="later")])  # no longer matches
    (event,) = frames(session)
    assert (event["type"], event["from"], event["to"]) == ("story.transitioned", "review", "done")


def test_no_subscription_no_events() -> None:
    stream, hub = seeded(0)
    session = make_session()
    hub.sessions.add(session)
    hub.publish([stream.put("A", status="draft")])
    assert frames(session) == []


def test_out_of_scope_and_in_scope_views() -> None:
    stream, hub = seeded(0)
    hub.publish([stream.put("A", epic="integration", status="draft", title="T")])
    session = make_session(INTEGRATION)
    hub.sessions.add(session)
    subscribe(session, hub, "s1", {})
    hub.publish([stream.put("A", epic="ui", status="ready")])  # leaves the token's epics
    (gone,) = frames(session)
    hub.publish([stream.put("A", status="done")])  # invisible
    hub.publish([stream.put("A", epic="integration", title="T2")])  # comes back
    hub.publish([stream.put("B", epic="ui")])  # never visible
    (back,) = frames(session)
    assert gone["type"] == "story.deleted" and gone["reason"] == "out_of_scope"
    assert gone["story"] == {
        "id": "A",
        "epic": "integration",
        "status": "draft",
        "title": "T",
        "path": "stories/A.md",
    }
    assert gone["changes"]["status"] == {"old": "draft", "new": None}
    assert all(c["new"] is None for c in gone["changes"].values())
    assert "ui" not in json.dumps(gone)  # the new state never reaches this token
    assert back["type"] == "story.created" and back["reason"] == "in_scope"
    assert back["story"]["status"] == "done" and back["story"]["title"] == "T2"
    assert all(c["old"] is None for c in back["changes"].values())
    assert (gone["seq"], back["seq"]) == (2, 4)


def scoped_history() -> Hub:
    stream, hub = seeded(0)
    hub.publish([stream.put("C", epic="integration"), stream.put("D", epic="ui")])
    hub.publish(
        [
            stream.put("A", epic="integration"),
            stream.put("C", epic="ui", status="x"),
            stream.put("D", epic="integration"),
            stream.put("E", epic="ui"),
        ]
    )
    return hub


def test_scoped_replay_hides_stories_the_token_never_sees() -> None:
    session = make_session(INTEGRATION)
    _, *events = subscribe(session, scoped_history(), since={"epoch": EPOCH, "seq": 2})
    assert "E" not in {e["story_id"] for e in events}


def test_scoped_replay_uses_the_same_views_as_live() -> None:
    session = make_session(INTEGRATION)
    subscribed, *events = subscribe(session, scoped_history(), since={"epoch": EPOCH, "seq": 2})
    assert [(e["story_id"], e["type"], e.get("reason")) for e in events] == [
        ("A", "story.created", None),
        ("C", "story.deleted", "out_of_scope"),
        ("D", "story.created", "in_scope"),
    ]
    assert subscribed["replayed"] == 3
    gone = events[1]
    assert gone["story"]["epic"] == "integration" and "status" not in gone["story"]
    assert '"ui"' not in json.dumps(gone) and '"x"' not in json.dumps(gone)


# -- outbox: order, coalescing, overflow ----------------------------------------------


def test_outbox_keeps_control_frames_and_events_in_order() -> None:
    stream, hub = seeded(0)
    session = make_session()
    hub.sessions.add(session)
    subscribe(session, hub, "s1")
    hub.publish([stream.put("A", n=1)])
    send(session, hub, {"type": "ping", "nonce": "p1"})
    hub.publish([stream.put("B", n=1), stream.put("C", n=1)])
    send(session, hub, {"type": "ping", "nonce": "p2"})
    order = [(m["type"], m.get("seq", m.get("nonce"))) for m in frames(session)]
    assert order == [
        ("story.created", 1),
        ("pong", "p1"),
        ("story.created", 2),
        ("story.created", 3),
        ("pong", "p2"),
    ]


def test_control_frames_wait_behind_rate_limited_events() -> None:
    stream, hub = seeded(0)
    session = make_session(rate_per_s=1, burst=1)
    hub.sessions.add(session)
    subscribe(session, hub, "s1")
    hub.publish([stream.put("A", n=1), stream.put("B", n=1)])
    send(session, hub, {"type": "ping", "nonce": "p"})
    t = 1e6  # the clock the subscribe helper drained at
    frame, wait, _ = next_frame(session, t)
    assert frame is not None and json.loads(frame)["seq"] == 1
    frame, wait, _ = next_frame(session, t)  # the pong waits behind event 2
    assert frame is None and wait == pytest.approx(1.0)
    frame, wait, _ = next_frame(session, t + 0.5)
    assert frame is None and wait == pytest.approx(0.5)
    rest, _ = drain(session, now=t + 1.0)
    assert [(m["type"], m.get("seq")) for m in rest] == [("story.created", 2), ("pong", None)]


def test_outbound_bucket_paces_events() -> None:
    stream, hub = seeded(0)
    session = make_session(rate_per_s=10, burst=3)
    hub.sessions.add(session)
    subscribe(session, hub)
    hub.publish([stream.put(f"S{i}", n=1) for i in range(6)])
    sent: list[tuple[float, int]] = []
    start = now = 1e6  # the clock the subscribe helper drained at
    while len(sent) < 6:
        frame, wait, born = next_frame(session, now)
        if frame is None:
            assert wait > 0
            now += wait
            continue
        sent.append((now, json.loads(frame)["seq"]))
        assert born > 0  # a live event carries its creation time for the latency metric
    assert [seq for _, seq in sent] == [1, 2, 3, 4, 5, 6]
    assert [t - start for t, _ in sent[:3]] == [0.0, 0.0, 0.0]
    # A rate-limited writer wakes up for a handful of tokens at once (RATE_BATCH), not
    # for every single one: the last three go out together once three tokens are there.
    assert [t - start for t, _ in sent[3:]] == pytest.approx([0.3, 0.3, 0.3], abs=1e-6)


def test_next_frame_when_idle() -> None:
    session = make_session()
    assert next_frame(session, 0.0) == (None, 0.0, 0.0)


def test_replayed_events_carry_no_birth_time() -> None:
    _, hub = seeded(2)
    session = make_session()
    send(session, hub, {"type": "subscribe", "sub": "s1", "since": {"epoch": EPOCH, "seq": 0}})
    borns = []
    while True:
        frame, _, born = next_frame(session, 0.0)
        if frame is None:
            break
        borns.append((json.loads(frame)["type"], born))
    assert borns == [("subscribed", 0.0), ("story.created", 0.0), ("story.created", 0.0)]


def blocked_session(stream: Stream, hub: Hub, **limits: Any) -> Session:
    """A subscribed session whose outbound budget is spent: events stay pending."""
    session = make_session(rate_per_s=1, burst=1, **limits)
    hub.sessions.add(session)
    subscribe(session, hub, "s1")
    hub.publish([stream.put("_spend", n=1)])
    spent, _ = drain(session, now=0.0)
    assert len(spent) == 1
    return session


def test_two_updates_coalesce_into_one() -> None:
    stream, hub = seeded(0)
    hub.publish([stream.put("A", title="one", owner="x", status="draft")])
    session = blocked_session(stream, hub)
    hub.publish([stream.put("A", title="two", owner="y")])
    hub.publish([stream.put("A", title="three", priority="high")])
    (event,) = frames(session)
    assert event["type"] == "story.updated"
    assert event["coalesced"] == 2
    assert event["seq"] == stream.seq
    assert event["changes"] == {
        "title": {"old": "one", "new": "three"},
        "owner": {"old": "x", "new": "y"},
        "priority": {"old": None, "new": "high"},
    }
    assert event["story"] == stream.states["A"].fields
    assert event["subs"] == ["s1"]


def test_status_a_b_c_coalesces_to_one_transition_from_a_to_c() -> None:
    stream, hub = seeded(0)
    hub.publish([stream.put("A", status="a")])
    session = blocked_session(stream, hub)
    hub.publish([stream.put("A", status="b")])
    hub.publish([stream.put("A", title="t")])
    hub.publish([stream.put("A", status="c")])
    (event,) = frames(session)
    assert event["type"] == "story.transitioned"
    assert (event["from"], event["to"], event["coalesced"]) == ("a", "c", 3)
    assert event["changes"]["status"] == {"old": "a", "new": "c"}
    assert event["changes"]["title"] == {"old": None, "new": "t"}


def test_status_there_and_back_with_another_change_is_an_update() -> None:
    stream, hub = seeded(0)
    hub.publish([stream.put("A", status="a")])
    session = blocked_session(stream, hub)
    hub.publish([stream.put("A", status="b", title="t")])
    hub.publish([stream.put("A", status="a")])
    (event,) = frames(session)
    assert event["type"] == "story.updated"
    assert "from" not in event and "to" not in event
    assert event["changes"] == {"title": {"old": None, "new": "t"}}


def test_moves_coalesce_with_the_first_old_path() -> None:
    stream, hub = seeded(0)
    hub.publish([stream.put("A", status="a", path="x/A.md")])
    session = blocked_session(stream, hub)
    hub.publish([stream.put("A", path="y/A.md")])
    hub.publish([stream.put("A", path="z/A.md", body="new body")])
    (event,) = frames(session)
    assert event["type"] == "story.moved"
    assert (event["old_path"], event["path"]) == ("x/A.md", "z/A.md")
    assert event["body_changed"] is True


def test_create_then_delete_cancels_out() -> None:
    stream, hub = seeded(0)
    session = blocked_session(stream, hub)
    hub.publish([stream.put("A", status="a")])
    hub.publish([stream.put("A", status="b")])
    hub.publish([stream.delete("A")])
    hub.publish([stream.put("B", status="a")])
    (event,) = frames(session)
    assert event["story_id"] == "B" and "coalesced" not in event
    assert pending_stories(session) == 0


def test_create_then_update_is_a_create_of_the_latest_state() -> None:
    stream, hub = seeded(0)
    session = blocked_session(stream, hub)
    hub.publish([stream.put("A", status="a")])
    hub.publish([stream.put("A", status="b", title="t")])
    (event,) = frames(session)
    assert event["type"] == "story.created"
    assert event["story"]["status"] == "b"
    assert event["changes"]["status"] == {"old": None, "new": "b"}
    assert "from" not in event


def test_update_then_delete_is_a_delete_of_the_last_state() -> None:
    stream, hub = seeded(0)
    hub.publish([stream.put("A", status="a")])
    session = blocked_session(stream, hub)
    hub.publish([stream.put("A", status="b")])
    hub.publish([stream.delete("A")])
    (event,) = frames(session)
    assert event["type"] == "story.deleted"
    assert event["story"]["status"] == "b"
    assert event["changes"]["status"] == {"old": "b", "new": None}
    assert event["coalesced"] == 2


def test_delete_then_recreate_differently_is_an_update() -> None:
    stream, hub = seeded(0)
    hub.publish([stream.put("A", status="a", title="t")])
    session = blocked_session(stream, hub)
    hub.publish([stream.delete("A")])
    hub.publish([stream.put("A", status="a", title="u")])
    (event,) = frames(session)
    assert event["type"] == "story.updated"
    assert event["changes"] == {"title": {"old": "t", "new": "u"}}


def test_a_merge_back_to_the_start_drops_the_entry() -> None:
    stream, hub = seeded(0)
    hub.publish([stream.put("A", status="a")])
    session = blocked_session(stream, hub)
    hub.publish([stream.put("A", status="b")])
    hub.publish([stream.put("A", status="a")])
    assert frames(session) == []
    assert pending_stories(session) == 0


def test_invalid_is_never_coalesced() -> None:
    stream, hub = seeded(0)
    hub.publish([stream.put("A", status="a")])
    session = blocked_session(stream, hub)
    hub.publish([stream.invalid("A")])
    hub.publish([stream.invalid("A")])
    hub.publish([stream.put("A", status="b")])
    hub.publish([stream.put("A", status="c")])
    events = frames(session)
    assert [(e["type"], e.get("coalesced")) for e in events] == [
        ("story.invalid", None),
        ("story.invalid", None),
        ("story.transitioned", 2),
    ]
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert events[0]["error"]["reason"] == "yaml"


def test_coalesced_events_stay_in_seq_order() -> None:
    stream, hub = seeded(0)
    session = blocked_session(stream, hub)
    hub.publish(
        [
            stream.put("A", n=1),
            stream.put("B", n=1),
            stream.put("A", n=2),
            stream.put("C", n=1),
            stream.put("B", n=2),
        ]
    )
    events = frames(session)
    assert [e["story_id"] for e in events] == ["A", "C", "B"]
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)


def test_coalescing_merges_subs_and_scope_reasons() -> None:
    stream, hub = seeded(0)
    hub.publish([stream.put("A", epic="integration", status="a")])
    session = make_session(INTEGRATION, rate_per_s=1, burst=1)
    hub.sessions.add(session)
    subscribe(session, hub, "all", {})
    subscribe(session, hub, "ready", {"statuses": ["ready"]})
    hub.publish([stream.put("_spend", epic="integration")])
    drain(session, now=0.0)
    hub.publish([stream.put("A", status="ready")])
    hub.publish([stream.put("A", epic="ui")])  # leaves the token's epics
    (event,) = frames(session)
    assert event["type"] == "story.deleted" and event["reason"] == "out_of_scope"
    assert event["story"]["status"] == "ready" and event["story"]["epic"] == "integration"
    assert event["subs"] == ["all", "ready"]
    assert event["coalesced"] == 2


def test_overflow_resyncs_and_ends_the_subscriptions() -> None:
    stream, hub = seeded(0)
    session = blocked_session(stream, hub, max_pending=3)
    subscribe(session, hub, "s2", {"epics": ["x"]})
    send(session, hub, {"type": "ping", "nonce": "kept"})
    hub.publish([stream.put(f"S{i}", epic="x") for i in range(3)])
    assert pending_stories(session) == 3
    hub.publish([stream.put("S3", epic="x")])  # the 4th pending story passes max_pending
    assert session.subs == {}
    assert pending_stories(session) == 0
    messages = frames(session)
    assert [(m["type"], m.get("sub"), m.get("reason")) for m in messages] == [
        ("pong", None, None),
        ("resync", "s1", "overflow"),
        ("resync", "s2", "overflow"),
    ]
    hub.publish([stream.put("S4", epic="x")])
    assert frames(session) == []  # nothing more until the client subscribes again
    messages = subscribe(session, hub, "s1", snapshot=True)
    assert [m["type"] for m in messages] == ["subscribed", "snapshot"]
    assert len(messages[1]["stories"]) == 6


def test_overflow_resync_names_the_current_epoch_and_seq() -> None:
    stream, hub = seeded(0)
    session = blocked_session(stream, hub, max_pending=1)
    hub.publish([stream.put("A", n=1), stream.put("B", n=1)])
    (resync,) = frames(session)
    assert resync["type"] == "resync"
    assert (resync["epoch"], resync["seq"]) == (EPOCH, stream.seq)


def test_no_events_for_a_subscription_after_its_overflow_resync() -> None:
    stream, hub = seeded(0)
    hub.publish([stream.put(f"S{i}", n=1) for i in range(10)])
    session = make_session(max_pending=3)
    messages = subscribe(session, hub, "s1", since={"epoch": EPOCH, "seq": 0})
    kinds = [m["type"] for m in messages]
    assert "resync" in kinds
    after = messages[kinds.index("resync") + 1 :]
    assert story_events(after) == []


def test_overflow_counts_stories_not_events() -> None:
    stream, hub = seeded(0)
    session = blocked_session(stream, hub, max_pending=2)
    hub.publish([stream.put("A", n=n) for n in range(50)])
    hub.publish([stream.put("B", n=n) for n in range(50)])
    assert session.subs  # 2 pending stories: not an overflow
    events = frames(session)
    assert [(e["story_id"], e["coalesced"]) for e in events] == [("A", 50), ("B", 50)]


def test_snapshot_taken_while_a_create_is_pending_still_gets_the_delete() -> None:
    stream, hub = seeded(0)
    session = blocked_session(stream, hub)
    hub.publish([stream.put("X", status="a")])  # pending for s1
    send(session, hub, {"type": "subscribe", "sub": "s3", "snapshot": True})
    hub.publish([stream.delete("X")])
    messages, _ = drain(session, now=1e6)
    state = apply_client({}, messages, "s3")
    assert state == {sid: s.fields for sid, s in stream.states.items()}


def test_snapshot_taken_while_a_change_is_pending_still_gets_the_way_back() -> None:
    stream, hub = seeded(0)
    hub.publish([stream.put("X", status="a")])
    session = blocked_session(stream, hub)
    hub.publish([stream.put("X", status="b")])  # pending for s1
    send(session, hub, {"type": "subscribe", "sub": "s3", "snapshot": True})  # shows b
    hub.publish([stream.put("X", status="a")])
    messages, _ = drain(session, now=1e6)
    state = apply_client({}, messages, "s3")
    assert state["X"]["status"] == "a"


# -- the property: nothing about a story's final state is lost -------------------------


def apply_client(state: dict[str, Any], messages: list[dict[str, Any]], sub: str) -> dict[str, Any]:
    """What a client following ``sub`` believes after these messages."""
    loading: dict[str, Any] = {}
    for m in messages:
        if m["type"] == "snapshot" and m["sub"] == sub:
            loading.update((s["id"], s) for s in m["stories"])
            if m["done"]:
                state = dict(loading)
                loading = {}
        elif m["type"].startswith("story.") and sub in m["subs"]:
            if m["type"] == "story.deleted":
                state.pop(m["story_id"], None)
            else:  # invalid carries the last good state
                state[m["story_id"]] = m["story"]
    return state


IDS = ("A", "B", "C")
CHANGE_OPS = [
    st.tuples(st.just("status"), st.sampled_from(IDS), st.sampled_from(["a", "b", "c"])),
    st.tuples(st.just("title"), st.sampled_from(IDS), st.sampled_from(["x", "y"])),
    st.tuples(st.just("move"), st.sampled_from(IDS), st.sampled_from(["p", "q"])),
    st.tuples(st.just("body"), st.sampled_from(IDS), st.sampled_from(["one", "two"])),
    st.tuples(st.just("read"), st.integers(0, 3), st.floats(0, 2)),
]
# A story ("U") that an epic-scoped token never sees changes alongside the others.
HIDDEN_OPS = [
    st.tuples(st.just("status"), st.just("U"), st.sampled_from(["a", "b", "c"])),
    st.tuples(st.just("title"), st.just("U"), st.sampled_from(["x", "y"])),
]
# What the known bugs below trip over: merges across a delete or an invalid event.
OTHER_OPS = [
    st.tuples(st.just("delete"), st.sampled_from(IDS), st.none()),
    st.tuples(st.just("epic"), st.sampled_from(IDS), st.sampled_from(["integration", "ui"])),
    st.tuples(st.just("invalid"), st.sampled_from(IDS), st.none()),
]


def run_ops(
    principal: Principal, ops: list[tuple[str, Any, Any]], batch: int
) -> tuple[Stream, list[dict[str, Any]]]:
    """Offer the events of ``ops`` to a session with a 1 event/s budget; read as told,
    then drain everything."""
    stream = Stream()
    hub = make_hub(stream)
    hub.publish([stream.put(i, status="a", epic="integration") for i in IDS[:2]])
    hub.publish([stream.put("U", status="a", epic="ui")])
    session = Session("c1", principal, make_limits(rate_per_s=1, burst=1), 0.0)
    hub.sessions.add(session)
    send(session, hub, {"type": "subscribe", "sub": "s1", "filter": {}, "snapshot": True})
    received: list[dict[str, Any]] = []
    now = 0.0
    pending: list[Event] = []
    for kind, story_id, arg in ops:
        if kind == "read":
            now += arg
            got, now = drain(session, now, limit=story_id)
            received += got
            continue
        exists = story_id in stream.states
        event: Event | None
        if kind == "delete":
            event = stream.delete(story_id) if exists else None
        elif kind == "invalid":
            event = stream.invalid(story_id) if exists else None
        elif kind == "move":
            event = stream.try_put(story_id, path=f"{arg}/{story_id}.md")
        elif kind == "body":
            event = stream.try_put(story_id, body=arg)
        else:
            event = stream.try_put(story_id, **{kind: arg})
        if event is not None:
            pending.append(event)
        if len(pending) >= batch:  # several events per settled batch, like the watcher
            hub.publish(pending)
            pending = []
    if pending:
        hub.publish(pending)
    got, _ = drain(session, now + 1e6)
    received += got
    assert hub.story("A") == (stream.states["A"].fields if "A" in stream.states else None)
    return stream, received


def assert_final_state(
    principal: Principal, stream: Stream, received: list[dict[str, Any]]
) -> None:
    seqs = [m["seq"] for m in received if m["type"].startswith("story.")]
    assert seqs == sorted(set(seqs)), "events out of seq order or duplicated"
    scope = principal.epics
    expected = {sid: s.fields for sid, s in stream.states.items() if scope.sees(s.fields)}
    assert apply_client({}, received, "s1") == expected


@pytest.mark.parametrize("principal", [READER, INTEGRATION], ids=["all", "epic-scoped"])
@settings(max_examples=300, deadline=None)
@given(ops=st.lists(st.one_of(*CHANGE_OPS, *HIDDEN_OPS), max_size=60), batch=st.integers(1, 4))
def test_draining_yields_the_final_state_of_every_story(
    principal: Principal, ops: list[tuple[str, Any, Any]], batch: int
) -> None:
    """SPEC §6: over budget, nothing about a story's final state is lost (creates, updates,
    transitions, moves, body edits; see the xfail variant below for deletes and invalid)."""
    stream, received = run_ops(principal, ops, batch)
    assert_final_state(principal, stream, received)


@settings(max_examples=500, deadline=None, derandomize=True)
@given(ops=st.lists(st.one_of(*CHANGE_OPS, *OTHER_OPS), max_size=60), batch=st.integers(1, 4))
def test_draining_with_deletes_and_invalid_yields_the_final_state_of_every_story(
    ops: list[tuple[str, Any, Any]], batch: int
) -> None:
    stream, received = run_ops(READER, ops, batch)
    assert_final_state(READER, stream, received)


@pytest.mark.parametrize("principal", [READER, INTEGRATION], ids=["delete", "out-of-scope"])
def test_change_delete_recreate_while_pending_reaches_the_client(principal: Principal) -> None:
    stream = Stream()
    hub = make_hub(stream)
    hub.publish([stream.put("A", epic="integration", title="x")])
    session = make_session(principal, rate_per_s=1, burst=1)
    hub.sessions.add(session)
    send(session, hub, {"type": "subscribe", "sub": "s1", "filter": {}, "snapshot": True})
    received, _ = drain(session, 0.0)
    hub.publish([stream.put("_spend", epic="integration")])
    received += drain(session, 0.0)[0]
    hub.publish([stream.put("A", title="y")])  # pending
    if principal.epics.epics is None:
        hub.publish([stream.delete("A")])
        hub.publish([stream.put("A", epic="integration", title="y")])
    else:
        hub.publish([stream.put("A", epic="ui")])  # leaves the token's epics
        hub.publish([stream.put("A", epic="integration")])  # back, as it was when it left
    received += drain(session, 1e6)[0]
    assert apply_client({}, received, "s1")["A"]["title"] == "y"


def test_frames_are_compact_json() -> None:
    stream, hub = seeded(0)
    session = make_session()
    hub.sessions.add(session)
    subscribe(session, hub)
    hub.publish([stream.put("A", title="ünïcode")])
    frame, _, _ = next_frame(session, 0.0)
    assert frame is not None and "ünïcode" in frame and ", " not in frame


def test_limits_helper_uses_spec_defaults() -> None:
    limits = make_limits()
    assert (limits.rate_per_s, limits.burst, limits.max_pending) == (200, 1000, 10_000)
    assert (limits.inbound_per_s, limits.inbound_burst, limits.max_subscriptions) == (20, 50, 64)
    assert replace(limits, burst=5).burst == 5


def test_invalid_between_a_change_and_its_undo_does_not_strand_the_client() -> None:
    stream = Stream()
    hub = make_hub(stream)
    hub.publish([stream.put("A", status="a")])
    session = blocked_session(stream, hub)
    hub.publish([stream.put("A", status="b")])  # pending
    hub.publish([stream.invalid("A")])  # sent on its own, carrying status b
    hub.publish([stream.put("A", status="a")])  # merges with the pending change: dropped
    received = frames(session)
    state = apply_client({"A": {"id": "A", "status": "a", "path": "stories/A.md"}}, received, "s1")
    assert state["A"]["status"] == "a"


# -- one byte budget per connection (SPEC §13) ------------------------------------------


def test_a_second_snapshot_while_one_is_unsent_is_rate_limited() -> None:
    _, hub = seeded(3)
    session = make_session()
    send(session, hub, {"type": "subscribe", "sub": "s1", "snapshot": True})
    send(session, hub, {"type": "unsubscribe", "sub": "s1"})
    send(session, hub, {"type": "subscribe", "sub": "s2", "snapshot": True})
    messages = frames(session)
    assert [(m["type"], m.get("code")) for m in messages] == [
        ("subscribed", None),
        ("snapshot", None),
        ("unsubscribed", None),
        ("error", "rate_limited"),
    ]
    send(session, hub, {"type": "subscribe", "sub": "s2", "snapshot": True})  # sent: allowed
    assert [m["type"] for m in frames(session)] == ["subscribed", "snapshot"]


def test_a_snapshot_is_encoded_a_chunk_at_a_time_as_it_is_written() -> None:
    _, hub = seeded(1200)
    session = make_session()
    send(session, hub, {"type": "subscribe", "sub": "s1", "snapshot": True})
    assert session.queued_bytes < 1000  # the stories are referenced, not encoded
    out = session.drain(0.0, max_frames=256, max_bytes=1)
    assert len(out.frames) == 1  # `subscribed`, then the byte cap of the pass
    passes = []
    while session.has_frames():
        passes.append([json.loads(decode_frame(f)) for f in session.drain(0.0).frames])
    assert len(passes) > 1  # about 64 KiB a pass, not the whole snapshot at once
    chunks = [chunk for frames_of_pass in passes for chunk in frames_of_pass]
    assert [len(c["stories"]) for c in chunks] == [500, 500, 200]
    assert [c["done"] for c in chunks] == [False, False, True]


def test_control_frames_past_the_budget_mark_the_session_overloaded() -> None:
    _, hub = seeded(0)
    session = make_session(max_queued_bytes=10_000, inbound_burst=1000, inbound_per_s=1000)
    nonce = "n" * 1000
    for _ in range(9):
        send(session, hub, {"type": "ping", "nonce": nonce})
    assert not session.overloaded
    send(session, hub, {"type": "ping", "nonce": nonce})
    assert session.overloaded
    before = session.queued_bytes
    send(session, hub, {"type": "ping", "nonce": nonce})
    assert session.queued_bytes == before  # nothing more piles up for a closing session


def test_events_past_the_budget_end_in_an_overflow_resync() -> None:
    stream, hub = seeded(0)
    session = blocked_session(stream, hub, max_queued_bytes=4_000)
    hub.publish([stream.put(f"S{i}", text="x" * 300) for i in range(20)])
    assert session.subs == {}
    messages = frames(session)
    assert [(m["type"], m.get("reason")) for m in messages] == [("resync", "overflow")]
    assert session.queued_bytes == 0


def test_queued_bytes_go_back_to_zero_once_everything_is_written() -> None:
    stream, hub = seeded(5)
    session = make_session()
    hub.sessions.add(session)
    send(session, hub, {"type": "subscribe", "sub": "s1", "snapshot": True})
    send(session, hub, {"type": "ping", "nonce": "p"})
    hub.publish([stream.put("S1", status="x"), stream.put("S9", status="y")])
    assert session.queued_bytes > 0
    frames(session)
    assert session.queued_bytes == 0
