"""One connection's state — pure: subscriptions, inbound limits, the outbox.

The server feeds a :class:`Session` the client's messages and the hub's events; the session
decides what to send, in which order, and when to coalesce. It never awaits: the server's
writer takes :meth:`Session.drain` — every frame the token bucket allows now, as WebSocket
frames.

Everything queued for the connection is counted in bytes (``limits.max_queued_bytes``):
events past it end in a ``resync`` ``overflow`` (the pending events are dropped, as when
too many stories are pending); control frames past it (pongs, errors — what a client that
sends but never reads piles up) mark the session :attr:`overloaded`, and the writer closes
it with 1013. A snapshot or a catch-up (SPEC §9) is not encoded when asked for: the outbox
holds the stories as of that seq and encodes one chunk at a time as the socket takes them,
so one of any size costs the connection one chunk of buffer; one is in flight at a time.

A session speaks WebSocket frames, or — made with ``sse=True`` for ``GET /api/stream``
(SPEC §12) — Server-Sent Events: the same subscriptions, limits, coalescing and byte
budget, one subscription opened by :meth:`Session.open_stream`, and a per-session framing
choice in :meth:`Session.drain`.
"""

from __future__ import annotations

import itertools
import json
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from storywatch import sse
from storywatch.catchup import Catchup
from storywatch.coalesce import Pending, View, merge, transformed
from storywatch.events import Event, Json, text_frame
from storywatch.filters import Filter, Scope
from storywatch.inbound import (
    Ping,
    Publish,
    RequestError,
    Subscribe,
    Unsubscribe,
    decode,
    parse_request,
    safe_ref,
)
from storywatch.paths import PathRules
from storywatch.ratelimit import TokenBucket
from storywatch.values import Limits, Principal

SNAPSHOT_CHUNK: Final = 500
RATE_BATCH: Final = 20  # a rate-limited writer waits for this many tokens (100 ms at 200/s)
# One pass writes at most this much to a socket (at least one frame): a burst of big
# snapshot chunks must not land in the transport's buffer all at once.
PASS_BYTES: Final = 64 * 1024

CLOSE_POLICY: Final = 1008
STREAM: Final = "stream"  # the one subscription of an SSE stream (never on the wire)
_DEFAULT_RULES: Final = PathRules()


class HubView(Protocol):
    """What a session reads from the hub when a client subscribes."""

    @property
    def epoch(self) -> str: ...

    @property
    def seq(self) -> int: ...

    def stories(self) -> Iterable[Json]: ...

    def replay(self, epoch: Any, since_seq: Any) -> list[Event] | None: ...

    def catchable(self, epoch: Any, since_seq: Any) -> bool:
        """Whether a cursor behind the replay buffer can be caught up (SPEC §9)."""
        ...

    def catch_up(self, since_seq: int, flt: Filter, scope: Scope) -> Catchup | None: ...


@dataclass(slots=True)
class Drained:
    """What a writer may send now: frames, and for the metrics the live events among them
    and the creation time of the first; ``wait`` > 0 when the rate limit holds the rest."""

    frames: list[bytes] = field(default_factory=list)
    wait: float = 0.0
    delivered: int = 0
    born: float = 0.0


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


class Chunked:
    """A snapshot or a catch-up waiting in the outbox: ``count`` frames, encoded one at a
    time as the socket takes them. The story dicts it refers to are never mutated (an event
    replaces a story's dict), so holding references keeps exactly the state of its seq."""

    __slots__ = ("count", "done", "frames", "sent")

    def __init__(self, frames: Iterator[bytes], count: int) -> None:
        self.frames = frames
        self.count = count
        self.sent = 0
        self.done = False

    def next_frame(self) -> bytes:
        frame = next(self.frames)
        self.sent += 1
        self.done = self.sent >= self.count
        return frame


def _dumps(message: Json) -> bytes:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()


def _snapshot_frames(sub: str, epoch: str, seq: int, stories: list[Json]) -> Iterator[bytes]:
    """``snapshot`` messages of ≤ SNAPSHOT_CHUNK stories (one, empty, for no stories)."""
    count = sse.pieces(len(stories), SNAPSHOT_CHUNK)
    for n in range(count):
        chunk = stories[n * SNAPSHOT_CHUNK : (n + 1) * SNAPSHOT_CHUNK]
        message = {"type": "snapshot", "sub": sub, "epoch": epoch, "seq": seq}
        message.update({"stories": chunk, "done": n == count - 1})
        yield text_frame(_dumps(message))


def _same(data: bytes) -> bytes:
    return data


class Group:
    """Sessions with the same scope and the same subscriptions: a live event means the same
    outbox entry for all of them, so the hub works it out once per group.

    Interned (one object per distinct key while a session holds it), so the hub's per-event
    look-up hashes an identity, not a tuple of filters."""

    __slots__ = ("__weakref__", "key")

    def __init__(self, key: tuple[Any, ...]) -> None:
        self.key = key

    @classmethod
    def of(cls, scope: Scope, subs: dict[str, Filter]) -> Group:
        key = (scope, tuple(subs.items()))
        group = _GROUPS.get(key)
        if group is None:
            group = _GROUPS[key] = cls(key)
        return group


_GROUPS: weakref.WeakValueDictionary[tuple[Any, ...], Group] = weakref.WeakValueDictionary()


class Session:
    __slots__ = (
        "_abuse",
        "_frame_event",
        "_frame_text",
        "_hub",
        "_inbound",
        "_keys",
        "_max_pending",
        "_max_queued",
        "_mergeable",
        "_outbound",
        "_pending_events",
        "_principal",
        "_rules",
        "_snapshots",
        "_sub_start",
        "_urgent",
        "group",
        "id",
        "limits",
        "on_coalesced",
        "on_overflow",
        "outbox",
        "overloaded",
        "queued_bytes",
        "sse",
        "stats",
        "subs",
        "wakeup",
    )

    def __init__(
        self,
        session_id: str,
        principal: Principal,
        limits: Limits,
        now: float,
        rules: PathRules = _DEFAULT_RULES,
        *,
        sse: bool = False,
    ) -> None:
        self.id = session_id
        self._principal = principal
        self.limits = limits
        self._rules = rules  # where published stories may land
        self.subs: dict[str, Filter] = {}
        # The fan-out group (read by the hub); None while nothing is subscribed.
        self.group: Group | None = None
        # Frames in send order: control frames (str), snapshots and events, unique keys.
        self.outbox: OrderedDict[int, str | Pending | Chunked] = OrderedDict()
        # The newest pending entry of each story: the one a later event may merge into.
        self._mergeable: dict[str, int] = {}
        self._pending_events = 0
        self._snapshots = 0  # snapshots and catch-ups in the outbox, not yet fully sent
        self._sub_start: dict[str, int] = {}  # sub → the seq it started after
        self._urgent: list[str] = []  # a list, not a deque: ~700 bytes less per connection
        self._keys = itertools.count()
        self.queued_bytes = 0  # everything in the outbox and the urgent list
        self._max_pending = limits.max_pending
        self._max_queued = limits.max_queued_bytes
        self.overloaded = False  # over its byte budget with control frames: close (1013)
        self._inbound = TokenBucket(limits.inbound_per_s, limits.inbound_burst, now)
        # Rejected messages drain a slower second bucket: emptying it (rejections well above
        # the limit for ~10 s) is sustained abuse.
        self._abuse = TokenBucket(limits.inbound_per_s / 4, limits.inbound_burst, now)
        self._outbound = TokenBucket(limits.rate_per_s, limits.burst, now)
        self.wakeup: Callable[[], None] = nothing
        self.on_coalesced: Callable[[], None] = nothing
        self.on_overflow: Callable[[], None] = nothing
        self.stats = {"coalesced": 0, "overflows": 0}
        # The framing, chosen once: WebSocket frames, or Server-Sent Events (SPEC §12),
        # whose control messages are queued already framed.
        self.sse = sse
        self._frame_text: Callable[[bytes], bytes] = _same if sse else text_frame
        self._frame_event: Callable[[Pending], bytes] = (
            Pending.sse_bytes if sse else Pending.frame_bytes
        )
        self._hub: HubView | None = None  # a stream's, for the snapshot after a resync

    @property
    def principal(self) -> Principal:
        return self._principal

    @principal.setter
    def principal(self, principal: Principal) -> None:
        self._principal = principal  # a token reloaded with other epics: another view
        self._regroup()

    def _regroup(self) -> None:
        self.group = Group.of(self._principal.epics, self.subs) if self.subs else None

    # -- client → server ------------------------------------------------------------------

    def handle_message(
        self, message: str | bytes, now: float, hub: HubView
    ) -> Close | Publish | None:
        """Handle one client frame; replies go to the outbox. A ``publish`` is returned
        for the server to hand to the write side."""
        if not self._inbound.take(now):
            if not self._abuse.take(now):
                return Close(CLOSE_POLICY, "too many messages")
            self.send_error("rate_limited", "too many messages; slow down")
            return None
        if isinstance(message, bytes):
            self.send_error("bad_request", "binary frames are not accepted; send JSON text")
            return None
        try:
            msg = decode(message)
            request = parse_request(msg, self._rules)
        except RequestError as exc:
            self.send_error(exc.code, exc.message, exc.ref)
            return None
        if isinstance(request, Subscribe):
            self._subscribe(request, hub)
        elif isinstance(request, Unsubscribe):
            self._unsubscribe(request.sub)
        elif isinstance(request, Ping):
            self.send_control({"type": "pong", "nonce": request.nonce})
        elif not self.principal.can("publish"):
            self.send_error(
                "forbidden", "this token cannot publish (no publish scope)", safe_ref(request.ref)
            )
        else:
            return request
        return None

    def _subscribe(self, request: Subscribe, hub: HubView) -> None:
        sub, flt, since = request.sub, request.filter, request.since
        if not self.principal.can("read"):
            self.send_error("forbidden", "this token cannot subscribe (no read scope)", sub)
            return
        if sub in self.subs:
            self.send_error("duplicate_sub", f"subscription {sub!r} already exists", sub)
            return
        if len(self.subs) >= self.limits.max_subscriptions:
            limit = self.limits.max_subscriptions
            self.send_error("too_many_subscriptions", f"at most {limit} subscriptions", sub)
            return
        replayed: list[Event] | None = None
        recovered: bool | None = None
        catchup: Catchup | None = None
        if since is not None:
            replayed = hub.replay(since.epoch, since.seq)
            recovered = replayed is not None
            if request.snapshot:
                replayed = None  # a snapshot replaces replay or catch-up; recovered tells
                recovered = recovered or hub.catchable(since.epoch, since.seq)
            elif (
                replayed is None and since.seq is not None and hub.catchable(since.epoch, since.seq)
            ):
                if self._snapshots:
                    self._busy(sub)
                    return
                catchup = hub.catch_up(since.seq, flt, self.principal.epics)
                recovered = catchup is not None
        if request.snapshot and self._snapshots:
            self._busy(sub)
            return
        others = [(self._sub_start.get(name, 0), f) for name, f in self.subs.items()]
        self.subs[sub] = flt
        self._sub_start[sub] = hub.seq
        self._regroup()
        matching = [v for e in replayed or () if (v := self._replay_view(e, flt, others))]
        self.send_control(
            {
                "type": "subscribed",
                "sub": sub,
                "filter": flt.to_json(),
                "epoch": hub.epoch,
                "seq": hub.seq,
                "recovered": recovered,
                "replayed": len(matching),
                "compacted": catchup is not None,
            }
        )
        if request.snapshot:
            self._send_snapshot(sub, flt, hub)
        elif catchup is not None:
            self._send_catchup(sub, catchup, hub.epoch)
        for view in matching:
            if sub not in self.subs:  # an overflow ended the subscription mid-replay
                break
            self.enqueue(Pending.of(view, (sub,), True))

    def _busy(self, sub: str) -> None:
        message = "an earlier snapshot or catch-up is still being sent; retry after it"
        self.send_error("rate_limited", message, sub)

    def open_stream(self, flt: Filter, resume: tuple[str, int] | None, hub: HubView) -> None:
        """An SSE stream (SPEC §12): its one subscription, and what comes first — the events
        after ``resume`` (``Last-Event-ID``: replay, or a catch-up behind the buffer), or a
        snapshot (preceded by ``resync`` when ``resume`` cannot be honoured)."""
        self._hub = hub
        self.subs[STREAM] = flt
        self._sub_start[STREAM] = hub.seq
        self._regroup()
        if resume is not None:
            epoch, seq = resume
            replayed = hub.replay(epoch, seq)
            if replayed is not None:
                overflows = self.stats["overflows"]
                for event in replayed:
                    view = self._replay_view(event, flt, ())
                    if view is not None:
                        self.enqueue(Pending.of(view, (STREAM,), True))
                    if self.stats["overflows"] != overflows:
                        break  # the snapshot that follows the resync covers the rest
                return
            if hub.catchable(epoch, seq):
                catchup = hub.catch_up(seq, flt, self.principal.epics)
                if catchup is not None:
                    self._send_catchup(None, catchup, hub.epoch)
                    return
            reason = "epoch_changed" if epoch != hub.epoch else "lost"
            self.send_raw(sse.resync(reason, hub.epoch, hub.seq).decode())
        self._send_snapshot(STREAM, flt, hub)

    def _replay_view(
        self, event: Event, flt: Filter, others: Sequence[tuple[int, Filter]]
    ) -> View | None:
        """The event as this token sees it, if the new subscription should get it again."""
        view = transformed(event, self.principal.epics)
        if view is None or not flt.matches(view.type, view.before, view.after):
            return None
        # Not resent: what another subscription, live at the time, already delivered.
        for start, other in others:
            if event.seq > start and other.matches(view.type, view.before, view.after):
                return None
        return view

    def _send_snapshot(self, sub: str, flt: Filter, hub: HubView) -> None:
        scope = self.principal.epics
        stories = [s for s in hub.stories() if scope.sees(s) and flt.matches_story(s)]
        if self.sse:
            frames = sse.snapshot(hub.epoch, hub.seq, stories, SNAPSHOT_CHUNK)
        else:
            frames = _snapshot_frames(sub, hub.epoch, hub.seq, stories)
        self._queue_chunked(Chunked(frames, sse.pieces(len(stories), SNAPSHOT_CHUNK)))

    def _send_catchup(self, sub: str | None, catchup: Catchup, epoch: str) -> None:
        """A catch-up (SPEC §9) after ``subscribed``, before any live event of a later seq:
        its chunks go out as the socket takes them, like a snapshot's."""
        if self.sse:
            frames = sse.catchup(catchup.messages(epoch))
        else:
            frames = (text_frame(_dumps(m)) for m in catchup.messages(epoch, sub=sub))
        self._queue_chunked(Chunked(frames, catchup.count()))

    def _queue_chunked(self, item: Chunked) -> None:
        # Pending events from before it must not merge with later ones: it showed their
        # result, so the way from there has to be told in full.
        self._mergeable.clear()
        self._snapshots += 1
        self.outbox[next(self._keys)] = item
        self.wakeup()

    def _unsubscribe(self, sub: str) -> None:
        if self.subs.pop(sub, None) is None:
            self.send_error("unknown_sub", f"no subscription {sub[:64]!r}", safe_ref(sub))
            return
        self._sub_start.pop(sub, None)
        self._regroup()
        self.send_control({"type": "unsubscribed", "sub": sub})

    # -- server → client ------------------------------------------------------------------

    def send_control(self, message: Json) -> None:
        # ASCII escapes: what a client sent and is echoed (a nonce) is counted exactly.
        self.send_raw(json.dumps(message, separators=(",", ":")))

    def send_raw(self, frame: str, *, urgent: bool = False) -> None:
        """A frame encoded once for many sessions. ``urgent`` frames (heartbeats) go out
        before anything pending: they carry no order, and must not wait behind a backlog."""
        if self.overloaded:
            return  # about to be closed: nothing more piles up
        if urgent:
            self._urgent.append(frame)
        else:
            self.outbox[next(self._keys)] = frame
        self.queued_bytes += len(frame)
        if self.queued_bytes > self.limits.max_queued_bytes:
            self.overloaded = True
        self.wakeup()

    def has_frames(self) -> bool:
        return bool(self._urgent or self.outbox)

    def send_error(self, code: str, message: str, ref: Any = None) -> None:
        self.send_control({"type": "error", "code": code, "message": message, "ref": ref})

    def live_entry(
        self, event: Event, matches: Callable[[Filter, Event], bool] | None = None
    ) -> Pending | None:
        """The outbox entry a live event makes here, or None: the same for every session
        of this one's :attr:`group`, which may all hold the same (never mutated) entry."""
        view = transformed(event, self.principal.epics)
        if view is None:
            return None
        # The hub's cached match is only valid for the event as is; a view the scope
        # rewrote is matched on what this token may see, nothing else.
        shared = matches is not None and view.data is None
        subs = tuple(
            sub
            for sub, flt in self.subs.items()
            if (
                matches(flt, event)  # type: ignore[misc]
                if shared
                else flt.matches(view.type, view.before, view.after)
            )
        )
        return Pending.of(view, subs, False) if subs else None

    def enqueue(self, pending: Pending, now: float | None = None) -> None:
        """Queue an entry: a live one from :meth:`live_entry` of this session's group, or a
        replayed one."""
        if self.overloaded:
            return
        story_id = pending.story_id
        if pending.type == "story.invalid":
            # Sent as is, and it seals what is pending for the story: the client applies
            # the state it carries, so earlier changes must not be merged past it.
            self._mergeable.pop(story_id, None)
            self._push(pending)
            self._check_budget(pending)
            return
        mergeable = self._mergeable
        earlier_key = mergeable.get(story_id)
        if earlier_key is not None:
            earlier = self.outbox.get(earlier_key)
            if isinstance(earlier, Pending):
                merged = self._merge_pending(earlier_key, earlier, pending, now)
                if merged is None:
                    return
                pending = merged
        # The common case, inline: it runs once per event per connection.
        key = next(self._keys)
        self.outbox[key] = pending
        self._pending_events += 1
        self.queued_bytes += pending.size
        mergeable[story_id] = key
        self.wakeup()
        if len(mergeable) > self._max_pending or self.queued_bytes > self._max_queued:
            self._overflow(pending)

    def _merge_pending(
        self, earlier_key: int, earlier: Pending, pending: Pending, now: float | None
    ) -> Pending | None:
        """A story with an event already pending: what to queue now (the same entry, or one
        merged with the earlier, which leaves the outbox), or None (nothing to queue)."""
        story_id = pending.story_id
        if earlier.seq > pending.seq:
            # A replayed event older than a pending live one of the same story: both go out
            # as one entry in seq order, so the client never ends on the older state.
            merged = merge(pending, earlier)
            self._unqueue(earlier_key, earlier)
            if merged is None:
                del self._mergeable[story_id]
            return merged
        # Coalesce only beyond the budget: while the bucket covers everything pending,
        # every event is sent as it is.
        if not self._over_budget(now):
            return pending
        self._unqueue(earlier_key, earlier)
        self.stats["coalesced"] += 1
        self.on_coalesced()
        merged = merge(earlier, pending)
        if merged is None:  # created then deleted: nothing to tell
            del self._mergeable[story_id]
        return merged

    def _check_budget(self, latest: Pending) -> None:
        if len(self._mergeable) > self._max_pending or self.queued_bytes > self._max_queued:
            self._overflow(latest)

    def _push(self, pending: Pending) -> int:
        key = next(self._keys)
        self.outbox[key] = pending
        self._pending_events += 1
        self.queued_bytes += pending.size
        self.wakeup()
        return key

    def _unqueue(self, key: int, pending: Pending) -> None:
        del self.outbox[key]
        self._pending_events -= 1
        self.queued_bytes -= pending.size

    def _over_budget(self, now: float | None) -> bool:
        return self._outbound.available(now) < self._pending_events + 1

    def _overflow(self, latest: Pending) -> None:
        """Too far behind: drop what is pending and ask the client to resync."""
        self.stats["overflows"] += 1
        self.on_overflow()
        kept: OrderedDict[int, str | Pending | Chunked] = OrderedDict()
        for key, item in self.outbox.items():
            if isinstance(item, Pending):
                self.queued_bytes -= item.size
            elif isinstance(item, Chunked):
                self._snapshots -= 1  # the subscription it belongs to ends here
            else:
                kept[key] = item
        self.outbox = kept
        self._mergeable.clear()
        self._pending_events = 0
        if self._restart_stream("overflow"):
            return
        epoch, seq = str(latest.data.get("epoch", "")), latest.seq
        for sub in list(self.subs):
            self.send_control(
                {"type": "resync", "sub": sub, "reason": "overflow", "epoch": epoch, "seq": seq}
            )
        self.subs.clear()
        self._sub_start.clear()
        self._regroup()

    def resync(self, reason: str, epoch: str, seq: int, *, keep_subs: bool) -> None:
        if self._restart_stream(reason):
            return
        for sub in list(self.subs):
            self.send_control(
                {"type": "resync", "sub": sub, "reason": reason, "epoch": epoch, "seq": seq}
            )
        if not keep_subs:
            self.subs.clear()
            self._sub_start.clear()
            self._regroup()

    def _restart_stream(self, reason: str) -> bool:
        """An SSE stream cannot re-subscribe by itself: its ``resync`` is followed at once
        by a snapshot, and the stream goes on (SPEC §12). False for a WebSocket session."""
        hub = self._hub
        if hub is None or STREAM not in self.subs:
            return False
        self.send_raw(sse.resync(reason, hub.epoch, hub.seq).decode())
        self._send_snapshot(STREAM, self.subs[STREAM], hub)
        return True

    def drain(self, now: float, max_frames: int = 256, max_bytes: int = PASS_BYTES) -> Drained:
        """Up to ``max_frames`` frames (and about ``max_bytes``) that may be written now,
        as complete WebSocket text frames (or SSE messages, for a stream)."""
        out = Drained()
        frames = out.frames
        size = 0
        frame_text, frame_event = self._frame_text, self._frame_event
        if self._urgent:
            for frame in self._urgent:
                data = frame.encode()
                self.queued_bytes -= len(frame)
                size += len(data)
                frames.append(frame_text(data))
            self._urgent.clear()
        outbox = self.outbox
        mergeable = self._mergeable
        tokens = self._outbound.available(now)  # counted here, taken once at the end
        sent = freed = 0
        while outbox and len(frames) < max_frames and size < max_bytes:
            key, item = next(iter(outbox.items()))
            if isinstance(item, Pending):  # the common case, inline
                if sent + 1 > tokens:
                    # Wake up for a handful of tokens at once, not for every single one.
                    batch = min(self._pending_events - sent, RATE_BATCH)
                    out.wait = self._outbound.wait_time(now, sent + batch)
                    break
                sent += 1
                del outbox[key]
                freed += item.size
                if mergeable.get(item.story_id) == key:
                    del mergeable[item.story_id]
                frames.append(frame_event(item))
                size += item.size
                if item.live:
                    out.delivered += 1
                    out.born = out.born or item.event.born  # type: ignore[union-attr]
                continue
            if isinstance(item, str):
                del outbox[key]
                self.queued_bytes -= len(item)
                data = item.encode()
                size += len(data)
                frames.append(frame_text(data))
            else:  # a snapshot or a catch-up: its next frame, framed as the session speaks
                data = item.next_frame()
                if item.done:
                    del outbox[key]
                    self._snapshots -= 1
                size += len(data)
                frames.append(data)
        if sent:
            self._outbound.take(now, sent)
            self._pending_events -= sent
            self.queued_bytes -= freed
        return out


def nothing() -> None:
    """The callback a session starts with (and gets back when its writer goes)."""
