"""One connection's state — pure: subscriptions, inbound limits, the outbox.

The server feeds a :class:`Session` the client's messages and the hub's events; the session
decides what to send, in which order, and when to coalesce. It never awaits: the server's
writer task drains :meth:`Session.next_frame` at the pace the token bucket allows.
"""

from __future__ import annotations

import itertools
import json
import posixpath
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from storywatch.coalesce import Pending, merge, transformed
from storywatch.config import Limits
from storywatch.events import Event, Json
from storywatch.filters import Filter, FilterError, Scope
from storywatch.ratelimit import TokenBucket

SNAPSHOT_CHUNK: Final = 500
MAX_SUB_LENGTH: Final = 64
MAX_PUBLISH_ITEMS: Final = 1000

CLOSE_POLICY: Final = 1008


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is connected: the token's name, scopes and epics."""

    name: str
    scopes: frozenset[str]
    scope: Scope = field(default_factory=Scope)

    def can(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


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


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


class Session:
    def __init__(
        self,
        session_id: str,
        principal: Principal,
        limits: Limits,
        now: float,
    ) -> None:
        self.id = session_id
        self.principal = principal
        self.limits = limits
        self.subs: dict[str, Filter] = {}
        self.outbox: OrderedDict[Any, str | Pending] = OrderedDict()
        self.pending_stories = 0
        self.sent_upto = 0  # highest event seq put in the outbox
        self._keys = itertools.count()
        self._inbound = TokenBucket(limits.inbound_per_s, limits.inbound_burst, now)
        # Rejected messages drain a second bucket; emptying it is "sustained abuse".
        self._abuse = TokenBucket(limits.inbound_per_s, limits.inbound_burst, now)
        self._outbound = TokenBucket(limits.rate_per_s, limits.burst, now)
        self.wakeup: Callable[[], None] = lambda: None
        self.stats = {"coalesced": 0, "overflows": 0}

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
            msg = json.loads(message)
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
            self.send_control({"type": "pong", "nonce": msg.get("nonce")})
        elif kind == "publish":
            return self._publish(msg)
        else:
            self.send_error("unknown_type", f"unknown message type {kind[:64]!r}", ref)
        return None

    def _subscribe(self, msg: Json, hub: HubView) -> None:
        sub = msg.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > MAX_SUB_LENGTH:
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
        others = list(self.subs.items())
        self.subs[sub] = flt
        matching = [e for e in replayed or () if self._replay_wanted(e, sub, flt, others)]
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
        for event in matching:
            self._enqueue(event, (sub,), replay=True)

    def _replay_wanted(
        self, event: Event, sub: str, flt: Filter, others: Sequence[tuple[str, Filter]]
    ) -> bool:
        view = transformed(event, self.principal.scope)
        if view is None or not flt.matches(view.type, view.before, view.after):
            return False
        # Events this connection already got through another subscription are not resent.
        if event.seq <= self.sent_upto:
            return not any(f.matches(view.type, view.before, view.after) for _, f in others)
        return True

    def _send_snapshot(self, sub: str, flt: Filter, hub: HubView) -> None:
        scope = self.principal.scope
        stories = [s for s in hub.stories() if scope.sees(s) and flt.matches_story(s)]
        chunks = [stories[i : i + SNAPSHOT_CHUNK] for i in range(0, len(stories), SNAPSHOT_CHUNK)]
        chunks = chunks or [[]]
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
        self.send_control({"type": "unsubscribed", "sub": sub})

    def _publish(self, msg: Json) -> PublishRequest | None:
        ref = msg.get("ref")
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
        self.outbox[("c", next(self._keys))] = json.dumps(
            message, ensure_ascii=False, separators=(",", ":")
        )
        self.wakeup()

    def send_raw(self, frame: str) -> None:
        """A frame encoded once for many sessions (heartbeats)."""
        self.outbox[("c", next(self._keys))] = frame
        self.wakeup()

    def send_error(self, code: str, message: str, ref: Any = None) -> None:
        self.send_control({"type": "error", "code": code, "message": message, "ref": ref})

    def offer(self, event: Event, matches: Callable[[Filter, Event], bool] | None = None) -> None:
        """A live event: enqueue it if any subscription wants it."""
        if not self.subs:
            return
        view = transformed(event, self.principal.scope)
        if view is None:
            return
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
        if subs:
            self._enqueue(view.event if view.data is None else view, subs, replay=False)

    def _enqueue(self, item: Event | Any, subs: tuple[str, ...], *, replay: bool) -> None:
        pending = Pending.of(item, subs, replay)
        self.sent_upto = max(self.sent_upto, pending.seq)
        if pending.type == "story.invalid":
            self.outbox[("i", next(self._keys))] = pending
        else:
            key = ("e", pending.story_id)
            earlier = self.outbox.pop(key, None)
            if isinstance(earlier, Pending):
                self.stats["coalesced"] += 1
                merged = merge(earlier, pending)
                if merged is None:  # created then deleted: nothing to tell
                    self.pending_stories -= 1
                    return
                pending = merged
            else:
                self.pending_stories += 1
            self.outbox[key] = pending
            if self.pending_stories > self.limits.max_pending:
                self._overflow()
                return
        self.wakeup()

    def _overflow(self) -> None:
        """Too far behind: drop what is pending and ask the client to resync."""
        self.stats["overflows"] += 1
        self.outbox = OrderedDict(
            (k, v) for k, v in self.outbox.items() if not isinstance(v, Pending)
        )
        self.pending_stories = 0
        for sub in list(self.subs):
            self.send_control(
                {"type": "resync", "sub": sub, "reason": "overflow", "epoch": "", "seq": 0}
            )
        self.subs.clear()

    def resync(self, reason: str, epoch: str, seq: int, *, keep_subs: bool) -> None:
        for sub in list(self.subs):
            self.send_control(
                {"type": "resync", "sub": sub, "reason": reason, "epoch": epoch, "seq": seq}
            )
        if not keep_subs:
            self.subs.clear()

    def next_frame(self, now: float) -> tuple[str | None, float, float]:
        """(frame, 0, born) to write next — ``born`` is the live event's creation time, else
        0 — or (None, seconds to wait, 0) when rate-limited or idle."""
        if not self.outbox:
            return None, 0.0, 0.0
        key, item = next(iter(self.outbox.items()))
        if isinstance(item, str):
            del self.outbox[key]
            return item, 0.0, 0.0
        if not self._outbound.take(now):
            return None, self._outbound.wait_time(now), 0.0
        del self.outbox[key]
        if key[0] == "e":
            self.pending_stories -= 1
        born = item.event.born if item.event is not None and not item.replay else 0.0
        return item.frame(), 0.0, born


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
        return None
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
    if path.startswith("/") or "\\" in path or "\x00" in path:
        return False
    return posixpath.normpath(path) == path and ".." not in path.split("/")
