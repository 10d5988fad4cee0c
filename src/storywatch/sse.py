"""Server-Sent Events framing (SPEC §12) — pure: messages out, ``Last-Event-ID`` in.

One message is a block of ``field: value`` lines ended by a blank line (the WHATWG HTML
"event stream" format). A stream event carries ``id: <epoch>:<seq>`` so a browser's
``EventSource`` resumes by itself with that value in ``Last-Event-ID``; ``event:`` names the
type (a client listens with ``addEventListener(type, …)``); ``data:`` is the JSON. A comment
line (``: heartbeat``) keeps proxies from closing an idle stream and is never dispatched.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final

CONTENT_TYPE: Final = "text/event-stream; charset=utf-8"
HEARTBEAT: Final = b": heartbeat\n\n"

# <epoch>:<non-negative integer>; an epoch never contains ":" (nor line breaks or NUL,
# which the event-stream format could not carry in an id).
_LAST_EVENT_ID: Final = re.compile(r"([^:\r\n\x00]+):([0-9]+)")
_MAX_SEQ_DIGITS: Final = 20  # beyond any seq a stream will reach (2**63 has 19 digits)
# The event-stream format's line ends (not str.splitlines', which also splits at U+2028 …).
_LINE_BREAK: Final = re.compile(r"\r\n|\r|\n")
BEYOND: Final = 10**_MAX_SEQ_DIGITS  # what a longer number reads as: newer than the latest


def http_head(server: str) -> bytes:
    """The HTTP head of a stream: no length — the body ends when the connection does."""
    headers = {
        "Content-Type": CONTENT_TYPE,
        "Cache-Control": "no-store",
        "Connection": "close",
        "X-Content-Type-Options": "nosniff",
        "X-Accel-Buffering": "no",  # proxies (nginx): pass each message on at once
        "Referrer-Policy": "no-referrer",
        "Server": server,
    }
    lines = ["HTTP/1.1 200 OK", *(f"{name}: {value}" for name, value in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def event_id(epoch: str, seq: int) -> str:
    return f"{epoch}:{seq}"


def message(event: str, data: Any, *, id: str | None = None) -> bytes:
    """One SSE message. ``data`` is a JSON value, or a ``str`` already encoded as JSON."""
    text = data if isinstance(data, str) else _dumps(data)
    lines = []
    if id is not None:
        _check_field("id", id)
        lines.append(f"id: {id}")
    _check_field("event", event)
    lines.append(f"event: {event}")
    # JSON has no raw line breaks outside strings, and escapes them inside; a caller's
    # pre-encoded text with a line break still arrives whole, as several data lines.
    lines.extend(f"data: {line}" for line in _LINE_BREAK.split(text))
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def snapshot(epoch: str, seq: int, stories: Sequence[Any], size: int = 500) -> Iterator[bytes]:
    """The first message of a stream without a usable ``Last-Event-ID``: ONE message
    ``{"epoch", "seq", "stories"}``, written in pieces of ``size`` stories, so a snapshot of
    any size is encoded as the socket takes it (the pieces concatenate to one message:
    compact JSON has no raw line break). :func:`pieces` tells how many there are."""
    head = f"id: {event_id(epoch, seq)}\nevent: snapshot\ndata: "
    head += _dumps({"epoch": epoch, "seq": seq})[:-1] + ',"stories":['
    count = pieces(len(stories), size)
    for n in range(count):
        chunk = ",".join(_dumps(story) for story in stories[n * size : (n + 1) * size])
        text = (head if n == 0 else ",") + chunk
        if n == count - 1:
            text += "]}\n\n"
        yield text.encode("utf-8")


def pieces(total: int, size: int) -> int:
    """How many pieces :func:`snapshot` writes for ``total`` stories."""
    return max(1, -(-total // size))


def catchup(messages: Iterable[dict[str, Any]]) -> Iterator[bytes]:
    """The section-9 ``catchup`` objects (without ``sub``) as SSE messages, lazily: only the
    last carries an ``id``, so a stream dropped mid-way resumes from the start of the
    catch-up."""
    for item in messages:
        last = bool(item.get("done"))
        yield message("catchup", item, id=event_id(item["epoch"], item["seq"]) if last else None)


def resync(reason: str, epoch: str, seq: int) -> bytes:
    """``Last-Event-ID`` could not be honoured (``epoch_changed`` or ``lost``), or the
    stream fell too far behind (``overflow``); no ``id``: a snapshot follows at once."""
    return message("resync", {"reason": reason, "epoch": epoch, "seq": seq})


def parse_last_event_id(value: str | None) -> tuple[str, int] | None:
    """``(epoch, seq)`` from a ``Last-Event-ID`` (or ``?last_event_id=``); None for
    anything that is not ``<epoch>:<non-negative integer>`` (the stream then starts with a
    snapshot)."""
    if value is None:
        return None
    match = _LAST_EVENT_ID.fullmatch(value)
    if match is None:
        return None
    digits = match.group(2).lstrip("0") or "0"
    # Well-formed but huge: newer than the latest (resync), without parsing a huge int.
    seq = BEYOND if len(digits) > _MAX_SEQ_DIGITS else int(digits)
    return match.group(1), seq


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _check_field(name: str, value: str) -> None:
    if "\n" in value or "\r" in value or (name == "id" and "\x00" in value):
        raise ValueError(f"an SSE {name} cannot hold a line break")
