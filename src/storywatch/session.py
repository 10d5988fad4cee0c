"""One connection's state — pure: subscriptions, inbound limits, the outbox.

The server feeds a :class:`Session` the client's messages and the hub's events; the session
decides what to send, in which order, and when to coalesce. It never awaits: the server's
writer takes :meth:`Session.drain` (every frame the token bucket allows now, as WebSocket
frames); :meth:`Session.next_frame` is the same one frame at a time, as JSON text.
"""

from __future__ import annotations

import itertools
import json
import math
import posixpath
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from storywatch.coalesce import Pending, View, merge, transformed
from storywatch.config import Limits
from storywatch.events import Event, Json, text_frame
from storywatch.filters import Filter, FilterError, Scope
from storywatch.ratelimit import TokenBucket

SNAPSHOT_CHUNK: Final = 500
MAX_SUB_LENGTH: Final = 64
MAX_PUBLISH_ITEMS: Final = 1000
RATE_BATCH: Final = 20  # a rate-limited writer waits for this many tokens (100 ms at 200/s)

CLOSE_POLICY: Final = 1008


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is connected: the token's name, scopes and epics."""

    name: str
    scopes: frozenset[str]
    scope: Scope = field(default_factory=Scope)

    def can(self, scope: str) -> bool:
        # Scopes are independent: `admin` (the metrics) does not imply read or publish.
        return scope in self.scopes


class HubView(Protocol):
    """What a session reads from the hub when a client subscribes."""

    @property
    def epoch(self) -> str: ...

    @property
    def seq(self) -> int: ...

    def stories(self) -> Iterable[Json]: ...

    def replay(self, epoch: Any, since_seq: Any) -> list[Event] | None: ...


@dataclass(frozen=True, slots=True)
class PublishRequest:
    """A validated ``publish`` message, for the server to run against the index."""

    ref: Any
    items: list[Json]
    source: Json | None


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
        "_inbound",
        "_keys",
        "_mergeable",
        "_outbound",
        "_pending_events",
        "_principal",
        "_sub_start",
        "_urgent",
        "group",
        "id",
        "limits",
        "on_coalesced",
        "on_overflow",
        "outbox",
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
    ) -> None:
        self.id = session_id
        self._principal = principal
        self.limits = limits
        self.subs: dict[str, Filter] = {}
        # The fan-out group (read by the hub); None while nothing is subscribed.
        self.group: Group | None = None
        # Frames in send order: control frames (str) and events (Pending), unique keys.
        self.outbox: OrderedDict[int, str | Pending] = OrderedDict()
        # The newest pending entry of each story: the one a later event may merge into.
        self._mergeable: dict[str, int] = {}
        self._pending_events = 0
        self._sub_start: dict[str, int] = {}  # sub → the seq it started after
        self._urgent: list[str] = []  # a list, not a deque: ~700 bytes less per connection
        self._keys = itertools.count()
        self._inbound = TokenBucket(limits.inbound_per_s, limits.inbound_burst, now)
        # Rejected messages drain a slower second bucket: emptying it (rejections well above
        # the limit for ~10 s) is sustained abuse.
        self._abuse = TokenBucket(limits.inbound_per_s / 4, limits.inbound_burst, now)
        self._outbound = TokenBucket(limits.rate_per_s, limits.burst, now)
        self.wakeup: Callable[[], None] = nothing
        self.on_coalesced: Callable[[], None] = nothing
        self.on_overflow: Callable[[], None] = nothing
        self.stats = {"coalesced": 0, "overflows": 0}

    @property
    def principal(self) -> Principal:
        return self._principal

    @principal.setter
    def principal(self, principal: Principal) -> None:
        self._principal = principal  # a token reloaded with other epics: another view
        self._regroup()

    def _regroup(self) -> None:
        self.group = Group.of(self._principal.scope, self.subs) if self.subs else None

    # -- client → server ------------------------------------------------------------------

    def handle_message(
        self, message: str | bytes, now: float, hub: HubView
    ) -> Close | PublishRequest | None:
        """Handle one client frame; replies go to the outbox."""
        if not self._inbound.take(now):
            if not self._abuse.take(now):
                return Close(CLOSE_POLICY, "too many messages")
            self.send_error("rate_limited", "too many messages; slow down")
            return None
        if isinstance(message, bytes):
            self.send_error("bad_request", "binary frames are not accepted; send JSON text")
            return None
        try:
            msg = json.loads(message, parse_constant=_no_constant, parse_float=_finite_float)
        except (ValueError, RecursionError):
            self.send_error("bad_request", "message is not valid JSON")
            return None
        if not isinstance(msg, dict):
            self.send_error("bad_request", "message must be a JSON object")
            return None
        kind = msg.get("type")
        ref = msg.get("sub", msg.get("ref"))
        ref = ref if isinstance(ref, str | int) and not isinstance(ref, bool) else None
        if not isinstance(kind, str):
            self.send_error("bad_request", "message needs a string `type`", ref)
            return None
        if kind == "subscribe":
            self._subscribe(msg, hub)
        elif kind == "unsubscribe":
            self._unsubscribe(msg)
        elif kind == "ping":
            nonce = msg.get("nonce")
            problem = _json_value_problem(nonce)
            if problem:
                self.send_error("bad_request", f"`nonce`: {problem}", ref)
            else:
                self.send_control({"type": "pong", "nonce": nonce})
        elif kind == "publish":
            return self._publish(msg)
        else:
            self.send_error("unknown_type", f"unknown message type {kind[:64]!r}", ref)
        return None

    def _subscribe(self, msg: Json, hub: HubView) -> None:
        sub = msg.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > MAX_SUB_LENGTH or not _utf8(sub):
            self.send_error("bad_request", "subscribe needs `sub`: a string of 1-64 chars")
            return
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
        try:
            flt = Filter.parse(msg.get("filter"))
        except FilterError as exc:
            self.send_error("invalid_filter", str(exc), sub)
            return
        since = msg.get("since")
        snapshot = msg.get("snapshot", False)
        if since is not None and (
            not isinstance(since, dict) or "epoch" not in since or "seq" not in since
        ):
            self.send_error("bad_request", '`since` must be {"epoch": …, "seq": …}', sub)
            return
        if not isinstance(snapshot, bool):
            self.send_error("bad_request", "`snapshot` must be true or false", sub)
            return

        replayed: list[Event] | None = None
        if since is not None and not snapshot:
            replayed = hub.replay(since.get("epoch"), since.get("seq"))
        if since is not None and snapshot:
            # A snapshot replaces replay; recovered still tells whether it was possible.
            recovered: bool | None = hub.replay(since.get("epoch"), since.get("seq")) is not None
        else:
            recovered = None if since is None else replayed is not None
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
            }
        )
        if snapshot:
            self._send_snapshot(sub, flt, hub)
        for view in matching:
            if sub not in self.subs:  # an overflow ended the subscription mid-replay
                break
            self.enqueue(Pending.of(view, (sub,), True))

    def _replay_view(
        self, event: Event, flt: Filter, others: Sequence[tuple[int, Filter]]
    ) -> View | None:
        """The event as this token sees it, if the new subscription should get it again."""
        view = transformed(event, self.principal.scope)
        if view is None or not flt.matches(view.type, view.before, view.after):
            return None
        # Not resent: what another subscription, live at the time, already delivered.
        for start, other in others:
            if event.seq > start and other.matches(view.type, view.before, view.after):
                return None
        return view

    def _send_snapshot(self, sub: str, flt: Filter, hub: HubView) -> None:
        scope = self.principal.scope
        stories = [s for s in hub.stories() if scope.sees(s) and flt.matches_story(s)]
        chunks = [stories[i : i + SNAPSHOT_CHUNK] for i in range(0, len(stories), SNAPSHOT_CHUNK)]
        chunks = chunks or [[]]
        # Pending events from before the snapshot must not merge with later ones: the
        # snapshot showed their result, so the way from there has to be told in full.
        self._mergeable.clear()
        for n, chunk in enumerate(chunks):
            self.send_control(
                {
                    "type": "snapshot",
                    "sub": sub,
                    "epoch": hub.epoch,
                    "seq": hub.seq,
                    "stories": chunk,
                    "done": n == len(chunks) - 1,
                }
            )

    def _unsubscribe(self, msg: Json) -> None:
        sub = msg.get("sub")
        if not isinstance(sub, str):
            self.send_error("bad_request", "unsubscribe needs `sub`")
            return
        if self.subs.pop(sub, None) is None:
            self.send_error("unknown_sub", f"no subscription {sub[:64]!r}", sub)
            return
        self._sub_start.pop(sub, None)
        self._regroup()
        self.send_control({"type": "unsubscribed", "sub": sub})

    def _publish(self, msg: Json) -> PublishRequest | None:
        ref = msg.get("ref")
        problem = _json_value_problem(ref)
        if problem:
            self.send_error("bad_request", f"`ref`: {problem}")
            return None
        if not self.principal.can("publish"):
            self.send_error("forbidden", "this token cannot publish (no publish scope)", ref)
            return None
        items = msg.get("items")
        if not isinstance(items, list) or len(items) > MAX_PUBLISH_ITEMS:
            self.send_error(
                "bad_request", f"`items` must be a list of at most {MAX_PUBLISH_ITEMS}", ref
            )
            return None
        for n, item in enumerate(items):
            problem = _publish_item_problem(item)
            if problem:
                self.send_error("bad_request", f"items[{n}]: {problem}", ref)
                return None
        source = msg.get("source")
        if source is not None and not isinstance(source, dict):
            self.send_error("bad_request", "`source` must be an object", ref)
            return None
        return PublishRequest(ref=ref, items=items, source=source)

    # -- server → client ------------------------------------------------------------------

    def send_control(self, message: Json) -> None:
        # ASCII escapes: a client's odd string (a lone surrogate) echoed back stays sendable.
        self.send_raw(json.dumps(message, separators=(",", ":")))

    def send_raw(self, frame: str, *, urgent: bool = False) -> None:
        """A frame encoded once for many sessions. ``urgent`` frames (heartbeats) go out
        before anything pending: they carry no order, and must not wait behind a backlog."""
        if urgent:
            self._urgent.append(frame)
        else:
            self.outbox[next(self._keys)] = frame
        self.wakeup()

    def has_frames(self) -> bool:
        return bool(self._urgent or self.outbox)

    @property
    def pending_stories(self) -> int:
        """Stories with an event waiting to be sent."""
        return len(self._mergeable)

    def send_error(self, code: str, message: str, ref: Any = None) -> None:
        self.send_control({"type": "error", "code": code, "message": message, "ref": ref})

    def offer(
        self,
        event: Event,
        matches: Callable[[Filter, Event], bool] | None = None,
        now: float | None = None,
    ) -> None:
        """A live event: enqueue it if any subscription wants it."""
        if self.subs:
            entry = self.live_entry(event, matches)
            if entry is not None:
                self.enqueue(entry, now)

    def live_entry(
        self, event: Event, matches: Callable[[Filter, Event], bool] | None = None
    ) -> Pending | None:
        """The outbox entry a live event makes here, or None: the same for every session
        of this one's :attr:`group`, which may all hold the same (never mutated) entry."""
        view = transformed(event, self.principal.scope)
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
        story_id = pending.story_id
        if pending.type == "story.invalid":
            # Sent as is, and it seals what is pending for the story: the client applies
            # the state it carries, so earlier changes must not be merged past it.
            self._mergeable.pop(story_id, None)
            self._push(pending)
            return
        earlier_key = self._mergeable.get(story_id)
        earlier = self.outbox.get(earlier_key) if earlier_key is not None else None
        if isinstance(earlier, Pending) and earlier_key is not None and earlier.seq > pending.seq:
            # A replayed event older than a pending live one of the same story: both go out
            # as one entry in seq order, so the client never ends on the older state.
            merged = merge(pending, earlier)
            del self.outbox[earlier_key]
            self._pending_events -= 1
            if merged is None:
                del self._mergeable[story_id]
                return
            self._mergeable[story_id] = self._push(merged)
            return
        # Coalesce only beyond the budget: while the bucket covers everything pending,
        # every event is sent as it is.
        if isinstance(earlier, Pending) and earlier_key is not None and self._over_budget(now):
            del self.outbox[earlier_key]
            self._pending_events -= 1
            self.stats["coalesced"] += 1
            self.on_coalesced()
            merged = merge(earlier, pending)
            if merged is None:  # created then deleted: nothing to tell
                del self._mergeable[story_id]
                return
            pending = merged
        self._mergeable[story_id] = self._push(pending)
        if len(self._mergeable) > self.limits.max_pending:
            self._overflow(pending)

    def _push(self, pending: Pending) -> int:
        key = next(self._keys)
        self.outbox[key] = pending
        self._pending_events += 1
        self.wakeup()
        return key

    def _over_budget(self, now: float | None) -> bool:
        return self._outbound.available(now) < self._pending_events + 1

    def _overflow(self, latest: Pending) -> None:
        """Too far behind: drop what is pending and ask the client to resync."""
        self.stats["overflows"] += 1
        self.on_overflow()
        self.outbox = OrderedDict(
            (k, v) for k, v in self.outbox.items() if not isinstance(v, Pending)
        )
        self._mergeable.clear()
        self._pending_events = 0
        epoch, seq = str(latest.data.get("epoch", "")), latest.seq
        for sub in list(self.subs):
            self.send_control(
                {"type": "resync", "sub": sub, "reason": "overflow", "epoch": epoch, "seq": seq}
            )
        self.subs.clear()
        self._sub_start.clear()
        self._regroup()

    def resync(self, reason: str, epoch: str, seq: int, *, keep_subs: bool) -> None:
        for sub in list(self.subs):
            self.send_control(
                {"type": "resync", "sub": sub, "reason": reason, "epoch": epoch, "seq": seq}
            )
        if not keep_subs:
            self.subs.clear()
            self._sub_start.clear()
            self._regroup()

    def drain(self, now: float, max_frames: int = 256) -> Drained:
        """Up to ``max_frames`` frames that may be written now, as complete WebSocket
        text frames."""
        out = Drained()
        frames = out.frames
        if self._urgent:
            frames.extend(text_frame(frame.encode()) for frame in self._urgent)
            self._urgent.clear()
        outbox = self.outbox
        tokens = self._outbound.available(now)  # counted here, taken once at the end
        sent = 0
        while outbox and len(frames) < max_frames:
            key = next(iter(outbox))
            item = outbox[key]
            if isinstance(item, str):
                del outbox[key]
                frames.append(text_frame(item.encode()))
                continue
            if sent + 1 > tokens:
                # Wake up for a handful of tokens at once, not for every single one.
                batch = min(self._pending_events, RATE_BATCH)
                out.wait = self._outbound.wait_time(now, sent + batch)
                break
            sent += 1
            self._sent(key, item)
            frames.append(item.frame_bytes())
            if item.live:
                out.delivered += 1
                out.born = out.born or item.event.born  # type: ignore[union-attr]
        if sent:
            self._outbound.take(now, sent)
        return out

    def _sent(self, key: int, item: Pending) -> None:
        del self.outbox[key]
        self._pending_events -= 1
        if self._mergeable.get(item.story_id) == key:
            del self._mergeable[item.story_id]

    def next_frame(self, now: float) -> tuple[str | None, float, float]:
        """(frame, 0, born) to write next — ``born`` is the live event's creation time, else
        0 — or (None, seconds to wait, 0) when rate-limited or idle."""
        if self._urgent:
            return self._urgent.pop(0), 0.0, 0.0
        if not self.outbox:
            return None, 0.0, 0.0
        key, item = next(iter(self.outbox.items()))
        if isinstance(item, str):
            del self.outbox[key]
            return item, 0.0, 0.0
        if not self._outbound.take(now):
            return None, self._outbound.wait_time(now), 0.0
        self._sent(key, item)
        born = item.event.born if item.event is not None and not item.replay else 0.0
        return item.frame(), 0.0, born


def nothing() -> None:
    """The callback a session starts with (and gets back when its writer goes)."""


def _publish_item_problem(item: Any) -> str | None:
    if not isinstance(item, dict):
        return "must be an object"
    op = item.get("op")
    if op == "upsert":
        story = item.get("story")
        if not isinstance(story, dict):
            return "upsert needs a `story` object"
        story_id = story.get("id")
        if isinstance(story_id, bool) or not isinstance(story_id, str | int) or story_id == "":
            return "story needs an `id` (string or number)"
        if "path" in story and not _clean_relative_path(story["path"]):
            return "story `path` must be a relative POSIX path inside the repo"
        if "path" not in story and not _clean_relative_path(str(story_id)):
            return "story needs a `path` (its id cannot be used as one)"
        problem = _json_value_problem(story)
        return f"story {problem}" if problem else None
    if op == "delete":
        story_id = item.get("id")
        if isinstance(story_id, bool) or not isinstance(story_id, str | int):
            return "delete needs an `id`"
        return None
    return "`op` must be upsert or delete"


def _clean_relative_path(path: Any) -> bool:
    """A path that cannot point outside the repo: relative, normalized, no ``..``."""
    if not isinstance(path, str) or not path or len(path) > 1024:
        return False
    if path.startswith("/") or "\\" in path or "\x00" in path or path == ".":
        return False
    return posixpath.normpath(path) == path and ".." not in path.split("/")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _json_value_problem(value: Any, max_depth: int = 64, max_nodes: int = 100_000) -> str | None:
    """Why a client's value could not be stored and sent back as it is, if it could not."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    nodes = 0
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if depth > max_depth or nodes > max_nodes:
            return "nested too deeply or too large"
        if isinstance(item, str):
            if not _utf8(item):
                return "holds a string that is not valid Unicode"
        elif isinstance(item, dict):
            for key, child in item.items():
                if not _utf8(key):
                    return "holds a key that is not valid Unicode"
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return None
