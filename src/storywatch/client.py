"""A small asyncio WebSocket client for ``tail`` and ``publish``.

The client side of SPEC §4: it normalises the URL, sends the token as a Bearer header,
and — for a follower — reconnects with exponential backoff plus jitter and resumes from the
last event it saw (``since``). A client away longer than the server's replay buffer gets a
*catch-up* instead (SPEC §9: the current state of every story that changed, and the ids
that went away), which a follower passes on as it is. When the server cannot resume at all
(``recovered: false``: the history is gone) it asks for a snapshot, which it does not pass
on: a follower only reports changes, and the snapshot only moves its cursor forward.

This is the only client-side importer of websockets (the server side is ``server.py``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.typing import Subprotocol

from storywatch.errors import StorywatchError
from storywatch.events import Json

DEFAULT_URL: Final = "ws://127.0.0.1:8765/ws"
SUBPROTOCOL: Final = Subprotocol("storywatch.v1")
# Snapshot chunks (500 stories) can be far larger than websockets' 1 MiB default.
MAX_INCOMING_BYTES: Final = 64 * 2**20
MAX_PUBLISH_ITEMS: Final = 1000  # SPEC §4: at most 1000 items per publish message
# Close codes after which reconnecting cannot help: the token was revoked or narrowed.
FATAL_CLOSE_CODES: Final = frozenset({1008})


class ClientError(StorywatchError):
    """The server could not be reached, or refused a request."""


class AuthError(ClientError):
    """The token was refused (HTTP 401/403, ``forbidden``, or revoked): retrying won't help."""


def ws_url(url: str) -> str:
    """``http(s)://host:port`` → ``ws(s)://host:port/ws``; a ``ws(s)://`` URL is kept."""
    parts = urlsplit(url.strip() if "://" in url else "ws://" + url.strip())
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss"):
        raise ClientError(f"not a WebSocket or HTTP URL: {url!r}")
    path = parts.path if parts.path not in ("", "/") else "/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


@dataclass
class Backoff:
    """Exponential backoff with jitter: the n-th delay is drawn from [d/2, d], where
    d = base·2ⁿ capped at ``cap``; the jitter keeps many clients from reconnecting at once
    when a server comes back."""

    base: float = 0.25
    cap: float = 10.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.base * 2.0**self.attempt)
        self.attempt += 1
        jitter: float = self.rng.uniform(0, delay / 2)
        return delay / 2 + jitter

    def reset(self) -> None:
        self.attempt = 0


async def open_connection(url: str, token: str, *, timeout: float = 10) -> ClientConnection:
    """Connect and authenticate; :class:`AuthError` on 401/403, :class:`ClientError` else."""
    try:
        return await connect(
            url,
            additional_headers={"Authorization": f"Bearer {token}"},
            subprotocols=[SUBPROTOCOL],
            open_timeout=timeout,
            max_size=MAX_INCOMING_BYTES,
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        reason = _error_message(exc.response.body)
        if status in (401, 403):
            raise AuthError(
                f"authentication failed at {url}: HTTP {status}: {reason or 'token refused'}"
            ) from exc
        raise ClientError(f"{url}: HTTP {status}: {reason or 'upgrade refused'}") from exc
    except InvalidURI as exc:
        raise ClientError(f"invalid URL {url!r}: {exc}") from exc
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise ClientError(f"cannot connect to {url}: {_describe(exc)}") from exc


def _error_message(body: bytes | bytearray | None) -> str:
    """The ``message`` of the server's JSON error body, if it sent one."""
    try:
        data = json.loads(body or b"")
    except ValueError:
        return ""
    if not isinstance(data, dict):
        return ""
    error = data.get("error", data)  # {"error": {"code", "message"}}
    return str(error.get("message", "")) if isinstance(error, dict) else ""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError) or (
        isinstance(exc, OSError) and "connect call failed" in str(exc).lower()
    ):
        return "connection refused"  # asyncio words it "Connect call failed (host, port)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


# -- following a stream (tail) ---------------------------------------------------------


@dataclass
class Cursor:
    """The last point of the stream this client has seen: where ``since`` resumes."""

    epoch: str | None = None
    seq: int | None = None

    def since(self) -> Json | None:
        if self.epoch is None or self.seq is None:
            return None
        return {"epoch": self.epoch, "seq": self.seq}

    def seen(self, epoch: str, seq: int) -> bool:
        return epoch == self.epoch and self.seq is not None and seq <= self.seq

    def move(self, epoch: Any, seq: Any) -> None:
        if isinstance(epoch, str) and isinstance(seq, int):
            self.epoch, self.seq = epoch, seq


class Follower:
    """Follows the event stream for one filter across reconnects, never losing an event
    the server still has, and never passing one on twice."""

    def __init__(
        self,
        url: str,
        token: str,
        filter: Json,
        *,
        on_event: Callable[[Json, str], None],
        note: Callable[[str], None],
        on_catchup: Callable[[Json, str], None] | None = None,
        backoff: Backoff | None = None,
        open_timeout: float = 10,
    ) -> None:
        self.url = url
        self.token = token
        self.filter = filter
        self.on_event = on_event  # (the parsed event, its raw JSON text)
        self.on_catchup = on_catchup  # (a `catchup` chunk, its raw JSON text)
        self.note = note  # one-line progress messages (stderr)
        self.backoff = backoff or Backoff()
        self.open_timeout = open_timeout
        self.cursor = Cursor()
        self._names = itertools.count(1)
        self._last_note = ""

    async def run(self) -> None:
        """Follow until cancelled; raises :class:`AuthError` when the token is refused."""
        while True:
            try:
                connection = await open_connection(self.url, self.token, timeout=self.open_timeout)
            except AuthError:
                raise
            except ClientError as exc:
                self._pause_note(str(exc))
                await asyncio.sleep(self.backoff.next_delay())
                continue
            try:
                await self._follow(connection)
            except ConnectionClosed:
                pass  # a normal close ends the loop silently; both are handled below
            finally:
                await connection.close()
            code, reason = connection.close_code or 1006, connection.close_reason or ""
            if code in FATAL_CLOSE_CODES:
                raise AuthError(f"server closed the connection: {reason or code}")
            self._pause_note(f"connection closed ({code}{': ' + reason if reason else ''})")
            await asyncio.sleep(self.backoff.next_delay())

    def _pause_note(self, why: str) -> None:
        # Said once per outage, not once per retry: a server down for a minute is one line.
        if why != self._last_note:
            self.note(f"{why}; reconnecting")
        self._last_note = why

    async def _follow(self, connection: ClientConnection) -> None:
        # This connection's subscriptions still in flight: sub → what it was made for
        # ("start", "resume", "snapshot"), or "replaced" when it waits to be dropped.
        purposes: dict[str, str] = {}
        since = self.cursor.since()
        await self._subscribe(connection, purposes, "resume" if since else "start", since=since)
        async for raw in connection:
            message = _parse(raw)
            kind = message.get("type")
            if isinstance(kind, str) and kind.startswith("story."):
                self._event(message, str(raw))
            elif kind == "subscribed":
                purpose = purposes.pop(str(message.get("sub")), None)
                if purpose is not None:
                    await self._subscribed(connection, purposes, purpose, message)
            elif kind == "snapshot" and message.get("done"):
                self.cursor.move(message.get("epoch"), message.get("seq"))
            elif kind == "catchup":
                self._catchup(message, str(raw))
            elif kind == "resync":
                await self._resync(connection, purposes, message)
            elif kind == "error":
                self._error(message)

    async def _subscribe(
        self,
        connection: ClientConnection,
        purposes: dict[str, str],
        purpose: str,
        *,
        since: Json | None = None,
    ) -> str:
        sub = f"tail-{next(self._names)}"
        purposes[sub] = purpose
        message: Json = {"type": "subscribe", "sub": sub, "filter": self.filter}
        if since is not None:
            message["since"] = since
        if purpose == "snapshot":
            message["snapshot"] = True
        await _send(connection, message)
        return sub

    async def _subscribed(
        self,
        connection: ClientConnection,
        purposes: dict[str, str],
        purpose: str,
        message: Json,
    ) -> None:
        self.backoff.reset()
        self._last_note = ""
        sub = str(message.get("sub"))
        if purpose == "start":  # the stream starts for us here
            self.cursor.move(message.get("epoch"), message.get("seq"))
            self.note(f"subscribed at seq {message.get('seq')}")
        elif purpose == "resume" and message.get("recovered") is True:
            if message.get("compacted"):
                self.note("resumed: catching up on the stories that changed (compacted)")
            else:
                self.note(f"resumed: {message.get('replayed', 0)} missed events replayed")
        elif purpose == "resume":
            # The history we would resume from is gone (restart without it, or too old):
            # take a fresh snapshot under a new sub, then drop this one — in that order,
            # so no live event falls between the two.
            self.note("resynced: the server no longer has the events since the last one seen")
            await self._subscribe(connection, purposes, "snapshot")
            purposes[sub] = "replaced"
        if purpose == "snapshot":
            for old, why in list(purposes.items()):
                if why == "replaced":
                    del purposes[old]
                    await _send(connection, {"type": "unsubscribe", "sub": old})

    async def _resync(
        self, connection: ClientConnection, purposes: dict[str, str], message: Json
    ) -> None:
        self.note(f"resynced: {message.get('reason')}")
        if message.get("reason") == "epoch_changed":
            # The subscription goes on in the new epoch; resume from its start.
            self.cursor.move(message.get("epoch"), message.get("seq"))
            return
        # Overflow: the server dropped our subscriptions; start again from a snapshot.
        await self._subscribe(connection, purposes, "snapshot")

    def _event(self, message: Json, raw: str) -> None:
        epoch, seq = message.get("epoch"), message.get("seq")
        if isinstance(epoch, str) and isinstance(seq, int):
            if self.cursor.seen(epoch, seq):
                return  # already passed on before a reconnect
            self.cursor.move(epoch, seq)
        self.on_event(message, raw)

    def _catchup(self, message: Json, raw: str) -> None:
        """A chunk of a catch-up: passed on; the last one moves the cursor to its seq (the
        live events that follow are newer)."""
        if self.on_catchup is not None:
            self.on_catchup(message, raw)
        if message.get("done"):
            self.cursor.move(message.get("epoch"), message.get("seq"))

    def _error(self, message: Json) -> None:
        if message.get("code") == "forbidden":
            raise AuthError(f"server refused: {message.get('message')}")
        if message.get("code") in ("invalid_filter", "bad_request"):
            raise ClientError(f"server refused the subscription: {message.get('message')}")
        self.note(f"server error {message.get('code')}: {message.get('message')}")


# -- publishing (publish) --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PublishResult:
    messages: int
    count: int  # events the server emitted
    seq: int | None  # the last seq it assigned (or its current seq)


def batches(units: Sequence[list[Json]], source: Json, max_bytes: int) -> list[list[Json]]:
    """Pack units into messages of ≤ 1000 items and ≤ ``max_bytes`` (the server closes a
    connection that sends a bigger message, 1009)."""
    envelope = _size({"type": "publish", "ref": "publish-000000", "items": [], "source": source})
    out: list[list[Json]] = []
    current: list[Json] = []
    used = envelope
    for unit in units:
        size = sum(_size(item) + 1 for item in unit)
        if envelope + size > max_bytes:
            story_id = unit[-1].get("id") or unit[-1]["story"]["id"]
            raise ClientError(
                f"story {story_id!r} needs a {envelope + size}-byte publish message; the "
                f"server accepts {max_bytes} (limits.max_message_bytes)"
            )
        if current and (used + size > max_bytes or len(current) + len(unit) > MAX_PUBLISH_ITEMS):
            out.append(current)
            current, used = [], envelope
        current.extend(unit)
        used += size
    if current:
        out.append(current)
    return out


def _size(value: Json) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


async def publish(
    url: str,
    token: str,
    batches: Sequence[list[Json]],
    source: Json,
    *,
    timeout: float = 30,
    pace: float = 1 / 15,
    sources: Sequence[Json] | None = None,
) -> PublishResult:
    """Send each batch as one ``publish`` message and wait for its ``published`` ack.

    Batches go one at a time: the acks keep them in order, and ``pace`` keeps a long run
    under the server's inbound rate limit (20 messages/s by default). ``sources``: one
    ``source`` per batch (the commit of its stories, SPEC §11) instead of ``source``.
    """
    connection = await open_connection(url, token, timeout=timeout)
    count, seq = 0, None
    try:
        await _expect(connection, lambda m: m.get("type") == "welcome", timeout)
        for n, items in enumerate(batches, 1):
            batch_source = sources[n - 1] if sources is not None else source
            ack = await _publish_one(connection, f"publish-{n}", items, batch_source, timeout)
            count += int(ack.get("count", 0))
            seq = ack.get("seq") if isinstance(ack.get("seq"), int) else seq
            if n < len(batches):
                await asyncio.sleep(pace)
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd is not None else 1006
        reason = exc.rcvd.reason if exc.rcvd is not None else "connection lost"
        raise ClientError(f"server closed the connection ({code}: {reason})") from exc
    except TimeoutError as exc:
        raise ClientError(f"no answer from {url} within {timeout:g} s") from exc
    finally:
        await connection.close()
    return PublishResult(messages=len(batches), count=count, seq=seq)


async def _publish_one(
    connection: ClientConnection, ref: str, items: list[Json], source: Json, timeout: float
) -> Json:
    message = {"type": "publish", "ref": ref, "items": items, "source": source}
    for _attempt in range(5):
        await _send(connection, message)
        reply = await _expect(
            connection,
            lambda m: m.get("type") in ("published", "error") and m.get("ref") == ref,
            timeout,
        )
        if reply["type"] == "published":
            return reply
        if reply.get("code") == "rate_limited":
            await asyncio.sleep(1.0)  # the server's bucket refills in about a second
            continue
        if reply.get("code") == "forbidden":
            raise AuthError(f"server refused publish: {reply.get('message')}")
        raise ClientError(f"server refused publish: {reply.get('code')}: {reply.get('message')}")
    raise ClientError("server kept rate-limiting the publish messages")


async def _expect(
    connection: ClientConnection, wanted: Callable[[Json], bool], timeout: float
) -> Json:
    async with asyncio.timeout(timeout):
        while True:
            message = _parse(await connection.recv())
            if wanted(message):
                return message


async def _send(connection: ClientConnection, message: Json) -> None:
    await connection.send(json.dumps(message, ensure_ascii=False, separators=(",", ":")))


def _parse(raw: str | bytes) -> Json:
    try:
        message = json.loads(raw)
    except ValueError:
        return {}
    return message if isinstance(message, dict) else {}
