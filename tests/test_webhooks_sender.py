"""storywatch.webhooks.sender and .service against real local receivers (no mocked transport).

The log side is the real hub on a replay buffer (the memory backend's log source); the
receivers are real HTTP servers on 127.0.0.1 (tests/receiver.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from storywatch.eventlog import LogState
from storywatch.events import Draft, Event, number, utc_now_iso
from storywatch.filters import Filter, Scope
from storywatch.hub import Hub
from storywatch.metrics import Metrics
from storywatch.replay import ReplayBuffer
from storywatch.webhooks import service
from storywatch.webhooks.config import HookConfig, decode_secret, origin_of
from storywatch.webhooks.sender import send_test
from storywatch.webhooks.service import Webhooks
from storywatch.webhooks.store import HookState, MemoryStore
from tests.conftest import scaled
from tests.receiver import SECRET_PATH, Answer, Received, Receiver, closed_port, verify
from tests.test_session import EPOCH, Stream

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
KEY = decode_secret(SECRET)
SLACK = 0.5  # seconds a wait may run over, on a busy machine (scaled)


class LiveStream(Stream):
    """Events stamped now (the fixtures' TIME is older than a day: past max_age_s)."""

    def _number(self, draft: Draft) -> Event:
        self.seq += 1
        return number(draft, self.seq, self.epoch, utc_now_iso(), {"kind": "fs"})


class BufferSource:
    """The log's stand-in for these tests: the hub's listeners are ``follow``, its
    replay buffer the backlog (the sender needs nothing else of a log)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def follow(self, after_seq: int, on_events: Any, on_reset: Any) -> None:
        self.hub.listeners.append(on_events)
        missed = self.hub.replay(self.hub.epoch, after_seq)
        if missed:
            on_events(missed)
        try:
            await asyncio.Event().wait()  # until cancelled
        finally:
            self.hub.listeners.remove(on_events)

    async def read_after(self, after_seq: int, limit: int) -> list[Event]:
        buffer = self.hub.buffer
        if after_seq >= buffer.seq:
            return []
        oldest = buffer.seq - len(buffer) + 1
        return (buffer.after(buffer.epoch, max(after_seq, oldest - 1)) or [])[:limit]

    async def latest_events_after(self, after_seq: int, limit: int) -> list[Event]:
        """A log that kept no story's last event (as one written before SPEC §10 did);
        tests/test_webhooks_compacted.py runs the real backends, which keep them."""
        return []


class OldStream(Stream):
    """Events stamped in 2000: older than any max_age_s here."""

    def _number(self, draft: Draft) -> Event:
        self.seq += 1
        return number(draft, self.seq, self.epoch, "2000-01-01T00:00:00.000Z", {"kind": "fs"})


def make_hook(url: str, name: str = "h", **kwargs: Any) -> HookConfig:
    return HookConfig(name=name, url=url, origin=origin_of(url), **kwargs)


class Rig:
    """A hub (the log's stand-in), a store, and the webhooks following it."""

    def __init__(self, hooks: list[HookConfig], *, buffer_size: int = 1000) -> None:
        self.hooks = hooks
        self.stream = LiveStream()
        self.hub = Hub(ReplayBuffer(buffer_size, EPOCH, 0))
        self.store = MemoryStore()
        self.metrics = Metrics()
        self.webhooks = self.new_webhooks()

    def new_webhooks(self) -> Webhooks:
        return Webhooks(self.hooks, self.store, self.metrics)

    async def start(self, webhooks: Webhooks | None = None) -> Webhooks:
        webhooks = webhooks or self.webhooks
        await webhooks.open()
        await webhooks.start(BufferSource(self.hub), epoch=self.hub.epoch, seq=self.hub.seq)
        return webhooks

    def put(self, story_id: str, **fields: Any) -> Event:
        event = self.stream.put(story_id, **fields)
        self.hub.publish([event])
        return event

    def burst(self, count: int, **fields: Any) -> list[Event]:
        return [self.put(f"S-{i}", title=f"story {i}", **fields) for i in range(count)]

    async def state(self, name: str = "h") -> HookState:
        return (await self.store.load([name]))[name]

    async def until(self, check: Callable[[HookState], bool], name: str = "h") -> HookState:
        """Wait (polling the store, which has no change event) until ``check`` holds."""
        async with asyncio.timeout(scaled(20)):
            while True:
                state = (await self.store.load([name])).get(name)
                if state is not None and check(state):
                    return state
                await asyncio.sleep(0.01)

    def metric(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[..., Any]]:
    started: list[Receiver] = []

    async def make(respond: Any = None) -> Receiver:
        receiver = await (Receiver(respond) if respond else Receiver()).start()
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        await receiver.close()


@pytest.fixture
async def rigs() -> AsyncIterator[list[Rig]]:
    made: list[Rig] = []
    yield made
    for rig in made:
        await rig.webhooks.close()


def scripted(*answers: Answer) -> Callable[[Received], Answer]:
    """Answer with ``answers`` in turn, then 200 for ever."""
    queue = list(answers)

    def respond(request: Received) -> Answer:
        return queue.pop(0) if queue else Answer(200)

    return respond


def seqs(requests: list[Received]) -> list[int | None]:
    return [r.seq for r in requests]


# -- delivery ---------------------------------------------------------------------------


async def test_events_are_posted_signed_in_order_one_at_a_time(receivers: Any, rigs: Any) -> None:
    receiver = await receivers()
    rig = Rig([make_hook(receiver.url(), secret=KEY)])
    rigs.append(rig)
    await rig.start()
    events = rig.burst(30)
    got = await receiver.wait_for(30)
    assert seqs(got) == [e.seq for e in events]
    assert receiver.max_in_flight == 1
    for request, event in zip(got, events, strict=True):
        assert request.method == "POST" and request.path == SECRET_PATH
        assert request.headers["content-type"] == "application/json"
        assert request.headers["webhook-id"] == f"{EPOCH}-{event.seq}"
        assert KEY is not None
        assert verify(
            KEY,
            request.headers["webhook-id"],
            request.headers["webhook-timestamp"],
            request.body,
            request.headers["webhook-signature"],
        )
        assert request.json() == event.data
    state = await rig.until(lambda s: s.cursor == 30)
    assert (state.delivered, state.failed, state.dead_letters) == (30, 0, 0)
    assert rig.metric("storywatch_webhook_deliveries_total", hook="h", outcome="delivered") == 30
    assert rig.metric("storywatch_webhook_lag", hook="h") == 0


async def test_without_a_secret_nothing_is_signed(receivers: Any, rigs: Any) -> None:
    receiver = await receivers()
    rig = Rig([make_hook(receiver.url())])
    rigs.append(rig)
    await rig.start()
    rig.put("A-1")
    (request,) = await receiver.wait_for(1)
    assert "webhook-signature" not in request.headers
    assert request.headers["webhook-id"] == f"{EPOCH}-1"


async def test_a_new_hook_starts_at_the_latest_seq(receivers: Any, rigs: Any) -> None:
    receiver = await receivers()
    rig = Rig([make_hook(receiver.url())])
    rigs.append(rig)
    rig.burst(5)
    await rig.start()
    assert (await rig.state()).cursor == 5
    rig.put("NEW")
    (request,) = await receiver.wait_for(1)
    assert request.seq == 6


async def test_filters_and_scopes(receivers: Any, rigs: Any) -> None:
    everything = await receivers()
    reviews = await receivers()
    scoped = await receivers()
    rig = Rig(
        [
            make_hook(everything.url(), name="all"),
            make_hook(
                reviews.url(),
                name="reviews",
                filter=Filter(
                    events=frozenset({"story.transitioned"}), statuses=frozenset({"review"})
                ),
            ),
            make_hook(scoped.url(), name="scoped", scope=Scope(frozenset({"integration"}))),
        ]
    )
    rigs.append(rig)
    await rig.start()
    rig.put("A", epic="integration", status="draft")  # 1
    rig.put("B", epic="ui", status="draft")  # 2
    rig.put("A", status="review")  # 3
    rig.put("B", status="review")  # 4
    rig.put("A", epic="ui")  # 5: leaves "scoped"'s epics
    rig.put("A", status="done")  # 6
    all_seqs = seqs(await everything.wait_for(6))
    assert all_seqs == [1, 2, 3, 4, 5, 6]
    # 6 moves A out of review: it matched before the change, so the column sees it leave.
    assert seqs(await reviews.wait_for(3)) == [3, 4, 6]
    got = await scoped.wait_for(3)
    assert seqs(got) == [1, 3, 5]
    left = got[2].json()
    assert (left["type"], left["reason"], left["story"]["epic"]) == (
        "story.deleted",
        "out_of_scope",
        "integration",
    )
    # Non-matching events advance the cursor too: nobody lags.
    for name in ("all", "reviews", "scoped"):
        state = await rig.until(lambda s: s.cursor == 6, name)
        assert state.dead_letters == 0
    assert len(reviews.requests) == 3 and len(scoped.requests) == 3


async def test_one_stuck_receiver_never_delays_another_hook(receivers: Any, rigs: Any) -> None:
    release = asyncio.Event()

    async def stuck(request: Received) -> Answer:
        await release.wait()
        return Answer(200)

    slow = await receivers(stuck)
    fast = await receivers()
    rig = Rig([make_hook(slow.url(), name="slow"), make_hook(fast.url(), name="fast")])
    rigs.append(rig)
    await rig.start()
    events = rig.burst(20)
    assert seqs(await fast.wait_for(20)) == [e.seq for e in events]
    assert seqs(slow.requests) == [1]  # still holding its first event
    assert (await rig.state("slow")).cursor == 0
    release.set()
    assert seqs(await slow.wait_for(20)) == [e.seq for e in events]


# -- retries ----------------------------------------------------------------------------


async def test_5xx_is_retried_with_backoff_and_the_same_id(receivers: Any, rigs: Any) -> None:
    receiver = await receivers(scripted(Answer(500), Answer(502)))
    rig = Rig([make_hook(receiver.url(), secret=KEY, max_attempts=5)])
    rigs.append(rig)
    await rig.start()
    rig.put("A-1")
    first, second, third = await receiver.wait_for(3)
    # The backoff counts from the end of the failed attempt: 1 s, then 2 s (+ ≤ 10 %).
    gap1 = second.arrived - first.answered
    gap2 = third.arrived - second.answered
    assert 1.0 - 0.02 <= gap1 <= 1.1 + scaled(SLACK)
    assert 2.0 - 0.02 <= gap2 <= 2.2 + scaled(SLACK)
    assert {r.headers["webhook-id"] for r in (first, second, third)} == {f"{EPOCH}-1"}
    stamps = [int(r.headers["webhook-timestamp"]) for r in (first, second, third)]
    assert stamps[0] < stamps[2]  # a fresh timestamp (and signature) per attempt
    assert KEY is not None
    for request in (first, second, third):
        assert verify(
            KEY,
            request.headers["webhook-id"],
            request.headers["webhook-timestamp"],
            request.body,
            request.headers["webhook-signature"],
        )
    state = await rig.until(lambda s: s.delivered == 1)
    assert (state.cursor, state.failed, state.dead_letters) == (1, 2, 0)
    assert state.last_error is None and state.next_attempt is None
    assert rig.metric("storywatch_webhook_deliveries_total", hook="h", outcome="failed") == 2


async def test_a_failure_is_reported_while_the_retry_waits(receivers: Any, rigs: Any) -> None:
    receiver = await receivers(scripted(Answer(503), Answer(503)))
    rig = Rig([make_hook(receiver.url(), max_attempts=5)])
    rigs.append(rig)
    await rig.start()
    rig.put("A-1")
    await receiver.wait_for(1)
    state = await rig.until(lambda s: s.failed == 1)
    assert state.last_error is not None and state.last_error["message"] == "HTTP 503"
    assert state.next_attempt is not None and state.next_attempt > state.last_error["time"]
    assert state.cursor == 0


async def test_retry_after_replaces_the_backoff(receivers: Any, rigs: Any) -> None:
    receiver = await receivers(scripted(Answer(429, {"Retry-After": "2"})))
    rig = Rig([make_hook(receiver.url())])
    rigs.append(rig)
    await rig.start()
    rig.put("A-1")
    first, second = await receiver.wait_for(2)
    gap = second.arrived - first.answered
    assert 2.0 - 0.02 <= gap <= 2.0 + scaled(SLACK)  # not 1 s, and no jitter


async def test_max_attempts_then_dead_letter_and_go_on(receivers: Any, rigs: Any) -> None:
    def respond(request: Received) -> Answer:
        return Answer(503) if request.seq == 1 else Answer(200)

    receiver = await receivers(respond)
    rig = Rig([make_hook(receiver.url(), max_attempts=2)])
    rigs.append(rig)
    await rig.start()
    rig.put("A-1")
    rig.put("B-1")
    got = await receiver.wait_for(3)
    assert seqs(got) == [1, 1, 2]
    state = await rig.until(lambda s: s.cursor == 2)
    assert (state.delivered, state.failed, state.dead_letters) == (1, 2, 1)
    (letter,) = await rig.store.dead_letters("h")
    assert letter["seq"] == 1 and letter["type"] == "story.created"
    assert letter["story_id"] == "A-1" and letter["attempts"] == 2
    assert letter["last_error"]["message"] == "HTTP 503 (gave up after 2 attempts)"
    assert rig.metric("storywatch_webhook_deliveries_total", hook="h", outcome="dead_lettered") == 1


@pytest.mark.parametrize("status", [400, 404, 410, 422])
async def test_other_4xx_dead_letter_at_once(receivers: Any, rigs: Any, status: int) -> None:
    receiver = await receivers(scripted(Answer(status)))
    rig = Rig([make_hook(receiver.url())])
    rigs.append(rig)
    await rig.start()
    rig.put("A-1")
    rig.put("B-1")
    assert seqs(await receiver.wait_for(2)) == [1, 2]
    state = await rig.until(lambda s: s.cursor == 2)
    assert (state.delivered, state.failed, state.dead_letters) == (1, 1, 1)
    assert state.last_error is None  # cleared by the next success
    (letter,) = await rig.store.dead_letters("h")
    assert letter["attempts"] == 1
    assert letter["last_error"]["message"] == f"HTTP {status}"


async def test_redirects_are_not_followed(receivers: Any, rigs: Any) -> None:
    receiver = await receivers(scripted(Answer(302, {"Location": "/elsewhere"})))
    rig = Rig([make_hook(receiver.url())])
    rigs.append(rig)
    await rig.start()
    rig.put("A-1")
    rig.put("B-1")
    got = await receiver.wait_for(2)
    assert [r.path for r in got] == [SECRET_PATH, SECRET_PATH]
    (letter,) = await rig.store.dead_letters("h")
    assert letter["last_error"]["message"] == "HTTP 302 (redirects are not followed)"


async def test_an_event_too_old_when_its_turn_comes_is_dead_with_no_attempt(
    receivers: Any, rigs: Any
) -> None:
    receiver = await receivers()
    rig = Rig([make_hook(receiver.url(), max_age_s=3600)])
    rigs.append(rig)
    await rig.start()
    old = OldStream()
    old.seq = rig.stream.seq
    event = old.put("OLD-1")
    rig.hub.publish([event])
    rig.stream.seq = old.seq
    rig.put("NEW-1")
    (request,) = await receiver.wait_for(1)
    assert request.seq == 2
    (letter,) = await rig.store.dead_letters("h")
    assert (letter["seq"], letter["attempts"]) == (1, 0)
    assert "max_age_s" in letter["last_error"]["message"]
    state = await rig.until(lambda s: s.cursor == 2)
    assert (state.failed, state.dead_letters) == (0, 1)


async def test_a_timeout_is_a_failed_attempt(receivers: Any, rigs: Any) -> None:
    release = asyncio.Event()

    async def hang(request: Received) -> Answer:
        await release.wait()
        return Answer(200)

    receiver = await receivers(hang)
    rig = Rig([make_hook(receiver.url(), timeout_s=0.3, max_attempts=1)])
    rigs.append(rig)
    await rig.start()
    rig.put("A-1")
    state = await rig.until(lambda s: s.dead_letters == 1)
    assert state.last_error is not None
    message = state.last_error["message"]
    assert message.startswith("no answer within 0.3 s")
    assert f"http://127.0.0.1:{receiver.port}" in message and SECRET_PATH not in message
    release.set()


async def test_a_receiver_that_is_down(rigs: Any) -> None:
    url = f"http://127.0.0.1:{closed_port()}{SECRET_PATH}"
    rig = Rig([make_hook(url, max_attempts=1)])
    rigs.append(rig)
    await rig.start()
    rig.put("A-1")
    state = await rig.until(lambda s: s.dead_letters == 1)
    assert state.last_error is not None
    message = state.last_error["message"]
    assert message.startswith("cannot connect") and origin_of(url) in message
    assert "s3cr3t" not in message


# -- durability and lifecycle -----------------------------------------------------------


async def test_a_restart_resumes_after_the_cursor(receivers: Any, rigs: Any) -> None:
    receiver = await receivers()
    rig = Rig([make_hook(receiver.url())])
    rigs.append(rig)
    await rig.start()
    rig.burst(3)
    await receiver.wait_for(3)
    await rig.until(lambda s: s.cursor == 3)
    await rig.webhooks.stop()
    for i in range(3):
        rig.put(f"LATER-{i}")
    rig.webhooks = await rig.start(rig.new_webhooks())
    assert seqs(await receiver.wait_for(6)) == [1, 2, 3, 4, 5, 6]


async def test_stop_abandons_an_attempt_in_flight_which_is_sent_again(
    receivers: Any, rigs: Any
) -> None:
    release = asyncio.Event()

    async def hang_first(request: Received) -> Answer:
        if len(receiver.requests) == 1:
            await release.wait()
        return Answer(200)

    receiver = await receivers(hang_first)
    rig = Rig([make_hook(receiver.url())])
    rigs.append(rig)
    await rig.start()
    rig.put("A-1")
    await receiver.wait_for(1)
    async with asyncio.timeout(scaled(5)):
        await rig.webhooks.stop()  # does not wait for the receiver
    assert (await rig.state()).cursor == 0
    rig.webhooks = await rig.start(rig.new_webhooks())
    assert seqs(await receiver.wait_for(2)) == [1, 1]
    release.set()


async def test_behind_a_log_that_kept_no_latest_events_delivery_goes_on_from_the_oldest(
    receivers: Any, rigs: Any, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = await receivers()
    rig = Rig([make_hook(receiver.url())], buffer_size=5)
    rigs.append(rig)
    await rig.store.save("h", HookState(epoch=EPOCH, cursor=0))
    rig.burst(10)
    await rig.start()
    assert seqs(await receiver.wait_for(5)) == [6, 7, 8, 9, 10]
    assert "kept no latest event of the stories changed between 1 and 5" in caplog.text


async def test_a_new_epoch_is_delivered_from_its_start(receivers: Any, rigs: Any) -> None:
    receiver = await receivers()
    rig = Rig([make_hook(receiver.url())])
    rigs.append(rig)
    await rig.start()
    rig.burst(2)
    await receiver.wait_for(2)
    # History was lost (e.g. Redis restarted empty): the log tells its followers.
    rig.hub.reset("ep-2", 0, {})
    rig.stream = LiveStream("ep-2")
    tail = rig.webhooks.tail
    assert tail is not None
    await tail.reset(LogState(epoch="ep-2", seq=0))
    rig.put("X-1")
    got = await receiver.wait_for(3)
    assert got[2].headers["webhook-id"] == "ep-2-1"
    state = await rig.until(lambda s: s.epoch == "ep-2" and s.cursor == 1)
    assert state.delivered == 3


# -- test deliveries --------------------------------------------------------------------


async def test_a_test_delivery_is_signed_and_counted_nowhere(receivers: Any, rigs: Any) -> None:
    receiver = await receivers(scripted(Answer(204), Answer(500)))
    hook = make_hook(receiver.url(), secret=KEY)
    rig = Rig([hook])
    rigs.append(rig)
    await rig.start()
    assert await send_test(hook) == (204, None)
    assert await send_test(hook) == (500, None)
    first = receiver.requests[0]
    body = first.json()
    assert body["type"] == "storywatch.test" and body["hook"] == "h" and body["time"]
    assert first.headers["webhook-id"].startswith("test-")
    assert KEY is not None
    assert verify(
        KEY,
        first.headers["webhook-id"],
        first.headers["webhook-timestamp"],
        first.body,
        first.headers["webhook-signature"],
    )
    state = await rig.state()
    assert (state.delivered, state.failed, state.cursor) == (0, 0, 0)


async def test_a_test_delivery_to_a_receiver_that_is_down() -> None:
    hook = make_hook(f"http://127.0.0.1:{closed_port()}{SECRET_PATH}")
    status, error = await send_test(hook)
    assert status is None and error is not None
    assert error.startswith("cannot connect") and "s3cr3t" not in error


async def test_an_unexpected_error_restarts_the_hook_and_loses_nothing(
    receivers: Any, rigs: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(service, "RESTART_AFTER_S", 0.01)

    class Flaky(BufferSource):
        failed = False

        async def read_after(self, after_seq: int, limit: int) -> list[Event]:
            if not Flaky.failed:
                Flaky.failed = True
                raise RuntimeError("a bug")
            return await super().read_after(after_seq, limit)

    receiver = await receivers()
    rig = Rig([make_hook(receiver.url())])
    rigs.append(rig)
    await rig.webhooks.open()
    await rig.webhooks.start(Flaky(rig.hub), epoch=EPOCH, seq=0)
    rig.burst(3)
    assert seqs(await receiver.wait_for(3)) == [1, 2, 3]
    assert "webhook h: delivery failed; restarting it" in caplog.text
