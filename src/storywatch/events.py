"""Events: drafts from the diff, numbered events from the log, encoded once for the wire.

A :class:`Draft` is what the diff decided; the event log turns it into an :class:`Event`
by giving it ``seq``, ``epoch``, ``time`` and ``source``. An event is encoded to JSON once;
per-connection fields (``subs``, ``replay``) are spliced onto that encoding, so fan-out never
re-serializes a story.
"""

from __future__ import annotations

import datetime as dt
import json
import time as _time
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from storywatch.story import ParseError

EventType = Literal[
    "story.created",
    "story.deleted",
    "story.transitioned",
    "story.moved",
    "story.updated",
    "story.invalid",
]
EVENT_TYPES: Final[tuple[str, ...]] = (
    "story.created",
    "story.deleted",
    "story.transitioned",
    "story.moved",
    "story.updated",
    "story.invalid",
)

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Draft:
    """One change to one story, before it is numbered."""

    type: EventType
    story_id: str
    path: str
    story: Json  # the new state; the last known state on delete and invalid
    changes: dict[str, dict[str, Any]]
    body_changed: bool = False
    old_path: str | None = None
    error: ParseError | None = None
    # SPEC §11: the commit that made the file what it is; merged into the event's source.
    commit: Json | None = None

    def to_json(self) -> Json:
        out: Json = {
            "type": self.type,
            "story_id": self.story_id,
            "path": self.path,
            "story": self.story,
            "changes": self.changes,
        }
        if self.type == "story.transitioned":
            status = self.changes["status"]
            out["from"] = status["old"]
            out["to"] = status["new"]
        if self.old_path is not None:
            out["old_path"] = self.old_path
        if self.error is not None:
            out["error"] = self.error.as_json()
        else:
            out["body_changed"] = self.body_changed
        return out


@dataclass(frozen=True, slots=True)
class Event:
    """A numbered event as stored in the log and sent on the wire (minus ``subs``)."""

    seq: int
    epoch: str
    data: Json  # the full wire form, without per-connection fields
    # Wall-clock creation time in this process, for the latency metric; 0 when loaded.
    born: float = field(default=0.0, compare=False)
    _encoded: list[str] = field(default_factory=list, repr=False, compare=False)
    _frames: dict[tuple[tuple[str, ...], bool], str] = field(
        default_factory=dict, repr=False, compare=False
    )
    _frame_bytes: dict[tuple[tuple[str, ...], bool], bytes] = field(
        default_factory=dict, repr=False, compare=False
    )
    _before: list[Json | None] = field(default_factory=list, repr=False, compare=False)

    @property
    def type(self) -> str:
        return str(self.data["type"])

    @property
    def story_id(self) -> str:
        return str(self.data["story_id"])

    @property
    def story(self) -> Json:
        story: Json = self.data["story"]
        return story

    def encoded(self) -> str:
        """The event as compact JSON (UTF-8 text, not ASCII-escaped), computed once."""
        if not self._encoded:
            self._encoded.append(json.dumps(self.data, ensure_ascii=False, separators=(",", ":")))
        return self._encoded[0]

    def frame(self, subs: tuple[str, ...] = (), *, replay: bool = False) -> str:
        """The wire frame for one connection; identical frames are built once."""
        key = (subs, replay)
        frame = self._frames.get(key)
        if frame is None:
            if len(self._frames) > 64:  # many distinct sub names: don't grow without bound
                self._frames.clear()
            tail = ',"subs":' + json.dumps(list(subs), ensure_ascii=False, separators=(",", ":"))
            if replay:
                tail += ',"replay":true'
            # Spliced onto the shared encoding: its closing brace moves after the tail.
            frame = self._frames[key] = self.encoded()[:-1] + tail + "}"
        return frame

    def frame_bytes(self, subs: tuple[str, ...] = (), *, replay: bool = False) -> bytes:
        """:meth:`frame` as a complete WebSocket text frame (RFC 6455, unmasked, as a
        server sends it), built once for every connection that gets it."""
        key = (subs, replay)
        data = self._frame_bytes.get(key)
        if data is None:
            if len(self._frame_bytes) > 64:
                self._frame_bytes.clear()
            data = self._frame_bytes[key] = text_frame(self.frame(subs, replay=replay).encode())
        return data

    def before(self) -> Json | None:
        """The story's state before this event (None before a create), computed once."""
        if not self._before:
            self._before.append(old_state(self.data))
        return self._before[0]

    def after(self) -> Json | None:
        """The story's state after this event (None once deleted)."""
        return None if self.type == "story.deleted" else self.story


def number(draft: Draft, seq: int, epoch: str, time: str, source: Json) -> Event:
    data = draft.to_json()
    data = {"type": data.pop("type"), "seq": seq, "epoch": epoch, "time": time, **data}
    data["source"] = with_commit(source, draft.commit)
    return Event(seq=seq, epoch=epoch, data=data, born=_time.time())


def with_commit(source: Json, commit: Json | None) -> Json:
    """A copy of the batch's ``source`` with ``git.commit`` set (itself when no commit)."""
    if commit is None:
        return source
    git = source.get("git")
    return {**source, "git": {**(git if isinstance(git, dict) else {}), "commit": commit}}


def old_state(data: Json) -> Json | None:
    """Undo ``changes`` on ``story`` to get the previous state (None before a create)."""
    kind = data["type"]
    if kind == "story.created":
        return None
    if kind in ("story.deleted", "story.invalid"):
        return dict(data["story"])
    before = dict(data["story"])
    for key, change in data.get("changes", {}).items():
        if change["old"] is None:
            before.pop(key, None)
        else:
            before[key] = change["old"]
    if "old_path" in data:
        before["path"] = data["old_path"]
    return before


def text_frame(payload: bytes) -> bytes:
    """One unfragmented, unmasked WebSocket text frame (RFC 6455 §5.2): what a server
    without extensions writes for a text message."""
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 65536:
        header = bytes((0x81, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + size.to_bytes(8, "big")
    return header + payload


def utc_now_iso(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
