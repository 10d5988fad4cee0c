"""Reading what a session's writer would put on the socket: the frames of
:meth:`Session.drain`, decoded back to JSON — the path production runs, nothing else."""

from __future__ import annotations

import json
from typing import Any

from storywatch.coalesce import Pending
from storywatch.session import Session


def decode_frame(frame: bytes) -> str:
    """The text of one unmasked WebSocket text frame (what a server writes)."""
    assert frame[0] == 0x81, "a final text frame"
    size = frame[1] & 0x7F
    start = 2
    if size == 126:
        size, start = int.from_bytes(frame[2:4], "big"), 4
    elif size == 127:
        size, start = int.from_bytes(frame[2:10], "big"), 10
    payload = frame[start:]
    assert len(payload) == size
    return payload.decode("utf-8")


def next_frame(session: Session, now: float) -> tuple[str | None, float, float]:
    """(frame text, 0, birth of a live event or 0) — or (None, seconds to wait, 0)."""
    out = session.drain(now, max_frames=1)
    if out.frames:
        return decode_frame(out.frames[0]), 0.0, out.born
    return None, out.wait, 0.0


def drain_all(
    session: Session, now: float = 0.0, limit: int | None = None
) -> tuple[list[dict[str, Any]], float]:
    """Every frame the writer would send, advancing the clock as the bucket asks."""
    out: list[dict[str, Any]] = []
    while limit is None or len(out) < limit:
        frame, wait, _born = next_frame(session, now)
        if frame is None:
            if wait <= 0:
                break
            now += max(wait, 1e-3)  # a tiny wait may not move a large float clock
            continue
        out.append(json.loads(frame))
    return out, now


def pending_stories(session: Session) -> int:
    """Stories with an event waiting in the outbox."""
    return len({item.story_id for item in session.outbox.values() if isinstance(item, Pending)})
