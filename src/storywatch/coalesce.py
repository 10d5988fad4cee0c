"""What one connection is sent of an event — pure: scope views and coalescing.

An epic-scoped token sees a story leave its epics as ``story.deleted`` (``reason:
out_of_scope``, old state only) and enter them as ``story.created`` (``reason: in_scope``).
When a connection is over its outbound budget, pending events of one story merge into one
(latest state wins, ``coalesced: N``, ``changes`` from the first old to the last new value).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from storywatch import sse
from storywatch.changes import change_type, field_changes
from storywatch.events import Event, Json, text_frame
from storywatch.filters import Scope

ENTRY_OVERHEAD = 64  # `subs`, `replay`, the frame header: a rough, fixed allowance


@dataclass(frozen=True, slots=True)
class View:
    """An event as one token may see it."""

    event: Event
    type: str
    before: Json | None
    after: Json | None
    data: Json | None = None  # replacement wire form when the scope rewrote the event


def transformed(event: Event, scope: Scope) -> View | None:
    """The event as seen through ``scope``; None when the token may not see it at all."""
    if scope.epics is None:
        # Not memoized on the event: a view refers to its event, and an event holding its
        # view would be a reference cycle, freed only by a full garbage collection.
        return View(event, event.type, event.before(), event.after())
    before, after = event.before(), event.after()
    sees_before, sees_after = scope.sees(before), scope.sees(after)
    if event.type == "story.invalid" or event.type == "story.created":
        return View(event, event.type, before, after) if sees_after else None
    if event.type == "story.deleted":
        return View(event, event.type, before, after) if sees_before else None
    if sees_before and sees_after:
        return View(event, event.type, before, after)
    if sees_before and before is not None:
        data = _rewrite(event.data, "story.deleted", before, field_changes(before, {}))
        data["reason"] = "out_of_scope"
        return View(event, "story.deleted", before, None, data)
    if sees_after and after is not None:
        data = _rewrite(event.data, "story.created", after, field_changes({}, after))
        data["reason"] = "in_scope"
        return View(event, "story.created", None, after, data)
    return None


def _rewrite(original: Json, kind: str, story: Json, changes: Json) -> Json:
    return {
        "type": kind,
        "seq": original["seq"],
        "epoch": original["epoch"],
        "time": original["time"],
        "story_id": original["story_id"],
        "path": story.get("path", original["path"]),
        "story": story,
        "changes": changes,
        "body_changed": False,
        "source": original.get("source"),
    }


@dataclass(slots=True)
class Pending:
    """An event waiting in a connection's outbox."""

    event: Event | None  # the shared event when this entry is not rewritten
    data: Json
    subs: tuple[str, ...]
    replay: bool
    before: Json | None  # the story before the first event merged into this entry
    count: int = 1
    # The finished frame, once built: a live entry is shared by every session of a group.
    built: bytes | None = field(default=None, repr=False, compare=False)
    sse_built: bytes | None = field(default=None, repr=False, compare=False)  # SPEC §12
    # Read from ``data`` once, not by every session that queues or sends the entry.
    seq: int = field(init=False, repr=False, compare=False)
    type: str = field(init=False, repr=False, compare=False)
    story_id: str = field(init=False, repr=False, compare=False)
    live: bool = field(init=False, repr=False, compare=False)  # counts as a delivery
    # About the bytes it takes in an outbox (the connection's byte budget counts it).
    size: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        data = self.data
        self.seq = int(data["seq"])
        self.type = str(data["type"])
        self.story_id = str(data["story_id"])
        self.live = self.event is not None and not self.replay
        if self.event is not None:
            self.size = len(self.event.encoded()) + ENTRY_OVERHEAD
        else:  # a rewritten or merged entry: its own encoding
            self.size = len(json.dumps(data, ensure_ascii=False)) + ENTRY_OVERHEAD

    @classmethod
    def of(cls, item: Event | View, subs: tuple[str, ...], replay: bool) -> Pending:
        if isinstance(item, Event):
            return cls(item, item.data, subs, replay, item.before())
        if item.data is None:
            return cls(item.event, item.event.data, subs, replay, item.before)
        return cls(None, item.data, subs, replay, item.before)

    def frame_bytes(self) -> bytes:
        """The complete WebSocket frame (shared by every connection for a plain event)."""
        if self.built is None:
            if self.event is not None:
                self.built = self.event.frame_bytes(self.subs, replay=self.replay)
            else:
                self.built = text_frame(self.frame().encode())
        return self.built

    def sse_bytes(self) -> bytes:
        """The entry as one Server-Sent Events message (SPEC §12): ``id: <epoch>:<seq>``,
        ``event: <type>``, the event JSON without ``subs`` (a stream has one, unnamed
        subscription); built once for every stream of a group."""
        if self.sse_built is None:
            if self.event is not None and not self.replay:
                text = self.event.encoded()
            else:
                out = dict(self.data)
                if self.replay:
                    out["replay"] = True
                text = json.dumps(out, ensure_ascii=False, separators=(",", ":"))
            event_id = sse.event_id(str(self.data["epoch"]), self.seq)
            self.sse_built = sse.message(self.type, text, id=event_id)
        return self.sse_built

    def frame(self) -> str:
        if self.event is not None:
            return self.event.frame(self.subs, replay=self.replay)
        out = dict(self.data)
        out["subs"] = list(self.subs)
        if self.replay:
            out["replay"] = True
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def merge(first: Pending, second: Pending) -> Pending | None:
    """One pending event for both, or None when they cancel out."""
    subs = tuple(dict.fromkeys(first.subs + second.subs))
    count = first.count + second.count
    before = first.before
    last = second.data
    if second.type == "story.deleted":
        if before is None:
            return None  # created, then deleted
        data = _rewrite(last, "story.deleted", last["story"], field_changes(last["story"], {}))
    elif before is None:
        after = last["story"]
        data = _rewrite(last, "story.created", after, field_changes({}, after))
    else:
        after = last["story"]
        changes = field_changes(before, after)
        body_changed = bool(first.data.get("body_changed")) or bool(last.get("body_changed"))
        moved = before.get("path") != after.get("path")
        kind = change_type(changes, moved=moved, body_changed=body_changed)
        if kind is None:
            return None  # back where it started
        data = _rewrite(last, kind, after, changes)
        data["body_changed"] = body_changed
        if kind == "story.transitioned":
            data["from"] = changes["status"]["old"]
            data["to"] = changes["status"]["new"]
        if moved:
            data["old_path"] = before.get("path")
    for reason_source in (last, first.data):
        if reason_source.get("type") == data["type"] and "reason" in reason_source:
            data["reason"] = reason_source["reason"]
            break
    data["coalesced"] = count
    return Pending(None, data, subs, first.replay and second.replay, before, count)
