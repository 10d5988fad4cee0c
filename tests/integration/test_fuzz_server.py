"""Fuzzing the real daemon over real sockets (issue 8 item 1).

Seeded-random frames go to ``storywatch run`` while a well-behaved client follows every
event and a file keeps changing. Each frame is answered with defined messages or closes the
connection with a defined code (1008 abuse, 1009 too big); the daemon never crashes, logs no
error, leaks no connection, and the good client misses nothing.

Knobs: ``STORYWATCH_FUZZ_CASES`` (frames per run, default 3000), ``STORYWATCH_FUZZ_SEED``
(default fixed, so a failure replays). The number of cases run is printed (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import struct
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.conftest import scaled
from tests.integration.daemon import Client, Daemon

CASES = int(os.environ.get("STORYWATCH_FUZZ_CASES", "3000"))
SEED = int(os.environ.get("STORYWATCH_FUZZ_SEED", "20261126"))
MAX_MESSAGE = 65_536

SERVER_TYPES = frozenset(
    {
        "welcome",
        "subscribed",
        "snapshot",
        "unsubscribed",
        "heartbeat",
        "pong",
        "resync",
        "published",
        "error",
    }
)
EVENT_TYPES = frozenset(
    {
        "story.created",
        "story.deleted",
        "story.transitioned",
        "story.moved",
        "story.updated",
        "story.invalid",
    }
)
ERROR_CODES = frozenset(
    {
        "bad_request",
        "unknown_type",
        "invalid_filter",
        "forbidden",
        "rate_limited",
        "too_many_subscriptions",
        "duplicate_sub",
        "unknown_sub",
    }
)
EPICS = ("integration", "ui", "api", "data")
HOSTILE_PATHS = (
    "../x.md",
    "/etc/passwd",
    "a/../../x.md",
    "./a.md",
    "a//b.md",
    "a\\b.md",
    "a\x00b.md",
    "",
    "..",
    "x" * 3000,
)

# A high outbound budget: the good client must see every seq (no coalescing), and fuzzed
# frames should reach the parser rather than the inbound limiter.
FUZZ_LIMITS = {
    "rate_per_s": 100_000,
    "burst": 100_000,
    "inbound_per_s": 5_000,
    "inbound_burst": 10_000,
}


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(frame: str | bytes) -> dict[str, Any]:
    assert isinstance(frame, str), f"server sent a binary frame: {frame!r:.100}"
    message = json.loads(frame, parse_constant=_no_constant)
    assert isinstance(message, dict) and isinstance(message.get("type"), str), message
    return message


def check_message(message: dict[str, Any]) -> None:
    kind = message["type"]
    assert kind in SERVER_TYPES or kind in EVENT_TYPES, message
    if kind == "error":
        assert message["code"] in ERROR_CODES, message
        assert isinstance(message["message"], str)
    elif kind == "published":
        assert isinstance(message["count"], int) and isinstance(message["seq"], int)
    elif kind in EVENT_TYPES:
        assert isinstance(message["seq"], int) and isinstance(message["story"], dict)
        assert message["subs"], message


# -- seeded generator -------------------------------------------------------------------------


class FrameGen:
    """Frames a hostile or broken client might send; every choice comes from one seed."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def text(self) -> str:
        r = self.rng
        pick = r.random()
        if pick < 0.3:
            return r.choice(
                [
                    "",
                    "s1",
                    "f1",
                    "f2",
                    "ping",
                    "subscribe",
                    "story.created",
                    "x" * 64,
                    "x" * 65,
                    "integration",
                    "FZ-1",
                    "<script>",
                    "'\"\\",
                ]
            )
        if pick < 0.6:
            alphabet = "abcxyz-_ .:/\\\x00\x1f\x7f\t"
            return "".join(r.choice(alphabet) for _ in range(r.randint(0, 20)))
        if pick < 0.9:
            return "".join(chr(self._codepoint()) for _ in range(r.randint(0, 12)))
        return "y" * r.choice([1_000, 20_000, 60_000])

    def _codepoint(self) -> int:
        r = self.rng
        low, high = r.choice([(0x20, 0x7E), (0xA0, 0xD7FF), (0xE000, 0xFFFD), (0x10000, 0x10FFFF)])
        return r.randint(low, high)

    def scalar(self) -> Any:
        r = self.rng
        return r.choice(
            [
                None,
                True,
                False,
                0,
                -1,
                2**31,
                2**63 + 1,
                -(10**30),
                0.5,
                -1e300,
                1e-300,
                self.text(),
                self.text(),
            ]
        )

    def value(self, depth: int = 0) -> Any:
        r = self.rng
        if depth > 3 or r.random() < 0.5:
            return self.scalar()
        if r.random() < 0.5:
            return [self.value(depth + 1) for _ in range(r.randint(0, 4))]
        return {self.text()[:10]: self.value(depth + 1) for _ in range(r.randint(0, 4))}

    def story(self) -> dict[str, Any]:
        r = self.rng
        story: dict[str, Any] = {"id": f"FZ-{r.randint(0, 9)}"}
        if r.random() < 0.8:
            story["epic"] = r.choice(EPICS)
        if r.random() < 0.6:
            story["status"] = r.choice(["draft", "ready", "done"])
        if r.random() < 0.5:
            story["path"] = f"fuzz/FZ-{r.randint(0, 9)}.md"
        if r.random() < 0.3:
            story[self.text()[:8] or "k"] = self.value()
        return story

    def item(self) -> dict[str, Any]:
        r = self.rng
        if r.random() < 0.75:
            return {"op": "upsert", "story": self.story()}
        return {"op": "delete", "id": f"FZ-{r.randint(0, 9)}"}

    def valid(self) -> dict[str, Any]:
        """A message a correct client could send (it may still be refused, e.g. a
        duplicate sub)."""
        r = self.rng
        kind = r.choice(["subscribe", "unsubscribe", "ping", "publish", "publish"])
        if kind == "subscribe":
            message: dict[str, Any] = {
                "type": kind,
                "sub": f"f{r.randint(1, 5)}",
                "filter": r.choice(
                    [
                        {},
                        {"epics": [r.choice(EPICS)]},
                        {"statuses": ["done"]},
                        {"events": ["story.created"], "stories": ["FZ-1"]},
                    ]
                ),
            }
            if r.random() < 0.3:
                message["snapshot"] = True
            elif r.random() < 0.3:
                message["since"] = {"epoch": r.choice(["", "x"]), "seq": r.randint(0, 50)}
            return message
        if kind == "unsubscribe":
            return {"type": kind, "sub": f"f{r.randint(1, 5)}"}
        if kind == "ping":
            return {"type": kind, "nonce": self.value()}
        return {
            "type": kind,
            "ref": f"r-{r.randint(0, 99)}",
            "items": [self.item() for _ in range(r.randint(1, 3))],
        }

    def message(self) -> dict[str, Any]:
        """A valid message, or one with a field missing, of the wrong type or hostile."""
        r = self.rng
        message = self.valid()
        if r.random() < 0.4:
            return message
        for _ in range(r.randint(1, 2)):
            pick = r.random()
            key = r.choice(
                [*message, "sub", "ref", "filter", "items", "since", "snapshot", "source", "nonce"]
            )
            if pick < 0.2:
                message.pop(key, None)
            elif pick < 0.35 and _first_item(message) is not None:
                item = message["items"][0]
                if item["op"] == "upsert" and isinstance(item.get("story"), dict):
                    item["story"]["path"] = r.choice([*HOSTILE_PATHS, self.value()])
                else:
                    item["id"] = self.value()
            elif pick < 0.45 and _first_item(message) is not None:
                message["items"][0] = r.choice(
                    [{"op": self.value()}, self.value(), {"op": "upsert", "story": self.value()}]
                )
            else:
                message[key] = self.value()
        return message

    def frame(self) -> str | bytes:
        r = self.rng
        pick = r.random()
        if pick < 0.6:
            return json.dumps(self.message(), ensure_ascii=r.random() < 0.5)
        if pick < 0.67:
            return json.dumps(self.value())
        if pick < 0.72:
            return r.randbytes(r.randint(0, 200))
        if pick < 0.80:
            return "".join(chr(self._codepoint()) for _ in range(r.randint(0, 50)))
        if pick < 0.86:
            # Nesting clear of the recursion-limit window (test_nesting_sweep covers it).
            depth = r.choice([r.randint(1, 200), r.randint(5_000, 30_000)])
            opener = r.choice(["[", '{"a":'])
            return '{"type": "ping", "nonce": ' + opener * depth
        if pick < 0.93:
            good = json.dumps(self.message())
            cut = r.randint(0, len(good))
            return good[:cut] + self.text()[:5] + good[cut + 1 :]
        if pick < 0.98:
            return json.dumps({"type": "ping", "nonce": "z" * r.randint(30_000, 65_400)})
        return json.dumps({"type": "ping", "nonce": "z" * r.randint(66_000, 200_000)})


def _first_item(message: dict[str, Any]) -> dict[str, Any] | None:
    items = message.get("items")
    if isinstance(items, list) and items and isinstance(items[0], dict) and "op" in items[0]:
        return items[0]
    return None


# -- the well-behaved client ------------------------------------------------------------------


class Follower:
    """Follows every event with filter {}; checks seq continuity as it goes."""

    def __init__(self, client: Client, start_seq: int) -> None:
        self.client = client
        self.next_seq = start_seq + 1
        self.events: list[dict[str, Any]] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for raw in self.client.ws:
            message = strict_json(raw)
            check_message(message)
            if message["type"] in EVENT_TYPES:
                assert message["seq"] == self.next_seq, (message["seq"], self.next_seq)
                assert "coalesced" not in message
                self.next_seq += 1
                self.events.append(message)
            elif message["type"] in ("resync", "error"):
                raise AssertionError(f"good client got {message}")

    async def wait_for(self, predicate: Any, timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + scaled(timeout)
        seen = 0
        while time.monotonic() < deadline:
            for event in self.events[seen:]:
                if predicate(event):
                    return event
            seen = len(self.events)
            if self.task.done():
                self.task.result()
                raise AssertionError("the good client's connection ended")
            await asyncio.sleep(0.02)
        raise TimeoutError("the good client did not get the expected event")


async def follow(daemon: Daemon, opened: list[Any]) -> Follower:
    client = await Client.connect(daemon.ws_url("tok-reader"))
    opened.append(client)
    subscribed, _ = await client.subscribe("good", {})
    assert subscribed["type"] == "subscribed"
    follower = Follower(client, subscribed["seq"])
    opened.append(follower)
    return follower


async def connect(daemon: Daemon, opened: list[Any], token: str = "tok-reader") -> Client:
    client = await Client.connect(daemon.ws_url(token))
    opened.append(client)
    return client


async def change_file_until(path: Path, stop: asyncio.Event) -> int:
    """Edit one story every 100 ms; returns how many edits were made."""
    original = path.read_text()
    edits = 0
    while not stop.is_set():
        edits += 1
        path.write_text(original.replace("title:", f"fuzz_edit: {edits}\ntitle:", 1))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)
    return edits


def healthz(daemon: Daemon) -> dict[str, Any]:
    with urllib.request.urlopen(daemon.http + "/healthz", timeout=scaled(5)) as response:
        body: dict[str, Any] = json.loads(response.read())
        return body


async def wait_connections(daemon: Daemon, count: int) -> None:
    deadline = time.monotonic() + scaled(10)
    while time.monotonic() < deadline:
        if healthz(daemon)["connections"] == count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"connections did not return to {count}: {healthz(daemon)}")


def error_lines(daemon: Daemon) -> list[str]:
    return [
        line
        for line in daemon.stderr_lines
        if " ERROR " in line or "Traceback" in line or "never retrieved" in line
    ]


@pytest.fixture
async def opened() -> AsyncIterator[list[Any]]:
    """Every WebSocket a test opens (``Client`` or raw), closed at teardown whatever
    happened, so a failing test leaves no socket behind."""
    sockets: list[Any] = []
    yield sockets
    for item in sockets:
        if isinstance(item, Follower):
            item.task.cancel()
            item = item.client
        ws = item.ws if isinstance(item, Client) else item
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 2)


# -- tests ------------------------------------------------------------------------------------


async def _fuzz_connection(daemon: Daemon, opened: list[Any]) -> Any:
    ws = await websockets.connect(
        daemon.ws_url("tok-admin"), subprotocols=["storywatch.v1"], max_size=None
    )
    opened.append(ws)
    await ws.recv()  # welcome
    return ws


async def _answers_to(ws: Any, frame: str | bytes, probe: str) -> list[dict[str, Any]]:
    """Send ``frame`` then a ping; every message before the pong answers ``frame``."""
    await ws.send(frame)
    await ws.send(json.dumps({"type": "ping", "nonce": probe}))
    replies: list[dict[str, Any]] = []
    while True:
        message = strict_json(await asyncio.wait_for(ws.recv(), scaled(10)))
        check_message(message)
        if message == {"type": "pong", "nonce": probe}:
            return replies
        replies.append(message)


async def test_fuzzed_frames_get_defined_answers_while_a_good_client_keeps_receiving(
    repo: Path, daemon_factory: type[Daemon], opened: list[Any]
) -> None:
    daemon = daemon_factory(repo, config={"limits": FUZZ_LIMITS}).start()
    daemon.wait_healthy()
    follower = await follow(daemon, opened)
    stop = asyncio.Event()
    story_file = repo / "ui" / "UI-005-dark-mode.md"
    changer = asyncio.create_task(change_file_until(story_file, stop))
    gen = FrameGen(SEED)
    closes: dict[int, int] = {}
    answered = 0
    ws = await _fuzz_connection(daemon, opened)
    started = time.monotonic()
    for case in range(CASES):
        frame = gen.frame()
        size = len(frame.encode() if isinstance(frame, str) else frame)
        try:
            replies = await _answers_to(ws, frame, f"probe-{case}")
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            assert code in (1008, 1009), (case, code, frame[:200])
            if code == 1009:
                assert size > MAX_MESSAGE, (case, size)
            closes[code] = closes.get(code, 0) + 1
            ws = await _fuzz_connection(daemon, opened)
            continue
        answered += 1
        assert size <= MAX_MESSAGE, f"case {case}: a {size}-byte frame was accepted"
        assert replies, (case, frame[:200])
        if isinstance(frame, bytes):
            assert [r["code"] for r in replies if r["type"] == "error"] == ["bad_request"]
    elapsed = time.monotonic() - started
    await ws.close()
    stop.set()
    edits = await changer
    final = f"fuzz_edit: {edits}"
    await follower.wait_for(
        lambda e: e["story_id"] == "UI-005" and e["story"].get("fuzz_edit") == edits
    )
    file_events = [e for e in follower.events if e["story_id"] == "UI-005"]
    print(
        f"\nfuzz: {CASES} frames in {elapsed:.1f} s (seed {SEED}): {answered} answered, "
        f"closes {closes}; good client got {len(follower.events)} events in seq order, "
        f"{len(file_events)} for {edits} file edits (last '{final}')"
    )
    assert len(file_events) >= edits // 3, "the good client stopped getting file events"
    assert daemon.proc is not None and daemon.proc.poll() is None
    await wait_connections(daemon, 1)  # only the good client: no leaked connection
    assert not follower.task.done()
    await follower.client.close()
    assert error_lines(daemon) == []


async def test_abuse_closes_with_1008_and_big_frames_with_1009(
    repo: Path, daemon_factory: type[Daemon], opened: list[Any]
) -> None:
    daemon = daemon_factory(repo).start()  # default limits: 20 msg/s, burst 50, 64 KiB
    daemon.wait_healthy()
    follower = await follow(daemon, opened)

    big = await connect(daemon, opened)
    await big.ws.send(json.dumps({"type": "ping", "nonce": "b" * MAX_MESSAGE}))
    with pytest.raises(ConnectionClosed) as closed:
        await big.recv_until(lambda m: False)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009

    flood = await connect(daemon, opened)
    # Over the burst: the excess is answered with rate_limited and the connection stays.
    for n in range(60):
        await flood.ws.send(json.dumps({"type": "ping", "nonce": n}))
    replies = [await flood.recv() for _ in range(60)]
    codes = [r["code"] for r in replies if r["type"] == "error"]
    assert codes and set(codes) == {"rate_limited"}, replies
    assert all(r.get("ref") is None for r in replies if r["type"] == "error")

    # Keeping it up is sustained abuse: closed with 1008.
    async def send_flood() -> None:
        with contextlib.suppress(ConnectionClosed):
            for n in range(5000):
                await flood.ws.send(json.dumps({"type": "ping", "nonce": n}))
                await asyncio.sleep(0)  # let the reader see the close

    sender = asyncio.create_task(send_flood())
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            message = await flood.recv()
            assert message["type"] in ("pong", "error"), message
    await sender
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008

    story = repo / "ui" / "UI-005-dark-mode.md"
    story.write_text(story.read_text().replace("status: ready", "status: done", 1))
    await follower.wait_for(
        lambda e: e["story_id"] == "UI-005" and e["type"] == "story.transitioned"
    )
    await follower.client.close()
    assert error_lines(daemon) == []


def _frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, masked: bool = True
) -> bytes:
    """One raw WebSocket frame, as a (possibly broken) client would write it."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first, (0x80 if masked else 0) | length)
    elif length < 65536:
        header = struct.pack("!BBH", first, (0x80 if masked else 0) | 126, length)
    else:
        header = struct.pack("!BBQ", first, (0x80 if masked else 0) | 127, length)
    if not masked:
        return header + payload
    mask = os.urandom(4)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


GARBAGE_FRAMES = [
    ("text frame that is not UTF-8", _frame(0x1, b"\xff\xfe not utf-8"), {1007}),
    ("reserved opcode", _frame(0x3, b"{}"), {1002}),
    ("unmasked client frame", _frame(0x1, b'{"type":"ping"}', masked=False), {1002}),
    ("RSV1 without an extension", _frame(0x1, b"{}", rsv=4), {1002}),
    ("control frame over 125 bytes", _frame(0x9, b"p" * 126), {1002}),
    ("fragmented control frame", _frame(0x9, b"p", fin=False), {1002}),
    ("continuation of nothing", _frame(0x0, b"x"), {1002}),
    ("70 kB text frame", _frame(0x1, b"x" * 70_000), {1009}),
    ("close frame with a 1-byte payload", _frame(0x8, b"\x03"), {1002}),
    (
        "fragments adding up past 64 KiB",
        _frame(0x1, b"x" * 40_000, fin=False) + _frame(0x0, b"x" * 40_000),
        {1009},
    ),
]


async def test_websocket_level_garbage_gets_protocol_close_codes(
    daemon: Daemon, opened: list[Any]
) -> None:
    """Frames broken at the WebSocket layer are websockets' business: 1002 (protocol error),
    1007 (not UTF-8) or 1009; the daemon and other clients carry on."""
    other = await connect(daemon, opened)
    for name, frame, codes in GARBAGE_FRAMES:
        victim = await connect(daemon, opened)
        victim.ws.transport.write(frame)
        with pytest.raises(ConnectionClosed) as closed:
            await victim.recv_until(lambda m: False)
        assert closed.value.rcvd is not None, name
        assert closed.value.rcvd.code in codes, (name, closed.value.rcvd)
        await other.send({"type": "ping", "nonce": name})
        assert (await other.recv()) == {"type": "pong", "nonce": name}
    assert error_lines(daemon) == []


def _raw_http(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=scaled(5)) as sock:
        sock.sendall(request)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if chunks[0].startswith(b"HTTP/1.1 101 "):
                    break  # upgraded: the connection stays open
        except TimeoutError:
            pass
        return b"".join(chunks)


HTTP_OK_STATUSES = {101, 200, 400, 401, 403, 404, 405, 414, 426, 429, 431, 503}


def test_fuzzed_http_requests_get_defined_statuses(daemon: Daemon) -> None:
    rng = random.Random(SEED)
    routes = [
        "/",
        "/healthz",
        "/metrics",
        "/ws",
        "/api/stories",
        "/api/stories/UI-005",
        "/api/stories/%2e%2e%2fsecret",
        "/api/events",
        "/api/x",
        "/nope",
        "//api/stories",
        "/api/stories/" + "a" * 3000,
        "/%ff",
        "*",
    ]
    keys = ["token", "tok%65n", "epics", "statuses", "since", "epoch", "wait", "stories", "x"]
    values = [
        "tok-reader",
        "tok-integration",
        "bad",
        "integration",
        "-1",
        "1e999",
        "abc",
        "",
        "%",
        "%zz",
        "0",
    ]
    statuses: dict[int, int] = {}
    cases = max(100, CASES // 4)
    for _ in range(cases):
        query = "&".join(
            f"{rng.choice(keys)}={rng.choice(values)}" for _ in range(rng.randint(0, 4))
        )
        route = rng.choice(routes)
        if route == "/api/events":
            query += "&wait=0"
        headers = [b"Host: 127.0.0.1"]
        if rng.random() < 0.5:
            headers.append(
                b"Authorization: "
                + rng.choice(
                    [
                        b"Bearer tok-reader",
                        b"Bearer tok-integration",
                        b"Bearer",
                        b"Basic eA==",
                        b"bearer tok-reader",
                        b"Bearer  tok-reader ",
                        b"tok-reader",
                    ]
                )
            )
        if rng.random() < 0.2:
            headers.append(
                b"Origin: "
                + rng.choice([b"http://127.0.0.1", b"https://evil.example", b"null", b"file://"])
            )
        if rng.random() < 0.2:
            headers += [
                b"Upgrade: websocket",
                b"Connection: Upgrade",
                b"Sec-WebSocket-Version: " + rng.choice([b"13", b"8", b"x"]),
                b"Sec-WebSocket-Key: " + rng.choice([b"dGhlIHNhbXBsZSBub25jZQ==", b"short"]),
            ]
        if rng.random() < 0.05:
            headers.append(b"X-Big: " + b"h" * 9000)
        method = rng.choice([b"GET", b"GET", b"GET", b"POST", b"HEAD", b"DELETE"])
        target = (route + ("?" + query if query else "")).encode()
        request = method + b" " + target + b" HTTP/1.1\r\n" + b"\r\n".join(headers) + b"\r\n\r\n"
        answer = _raw_http(daemon.port, request)
        if not answer:
            continue  # websockets drops what it cannot parse as HTTP/1.1
        status = int(answer.split(b" ", 2)[1])
        statuses[status] = statuses.get(status, 0) + 1
        assert status in HTTP_OK_STATUSES, (request[:300], answer[:300])
        assert b"tok-reader" not in answer and b"tok-integration" not in answer
    print(f"\nhttp fuzz: {cases} requests, statuses {dict(sorted(statuses.items()))}")
    assert healthz(daemon)["status"] == "ok"
    assert error_lines(daemon) == []


def test_malformed_headers_are_refused_not_500(daemon: Daemon) -> None:
    answers = {}
    for headers in [
        b"Host: 127.0.0.1\r\nOrigin: http://127.0.0.1\r\nOrigin: https://evil.example\r\n",
        b"Host: 127.0.0.1\r\nAuthorization: Bearer tok-reader\r\nAuthorization: Bearer x\r\n",
        b"Host: 127.0.0.1\r\nOrigin: http://[::1\r\n",
        b"Host: 127.0.0.1\r\nOrigin: http://127.0.0.1:99999\r\n",
        b"Host: 127.0.0.1\r\nOrigin: http://127.0.0.1:8765.evil.example\r\n",
        b"Host: [::1\r\nOrigin: http://127.0.0.1\r\n",
    ]:
        answer = _raw_http(
            daemon.port, b"GET /api/stories?token=tok-reader HTTP/1.1\r\n" + headers + b"\r\n"
        )
        answers[headers] = int(answer.split(b" ", 2)[1])
    assert set(answers.values()) <= {400, 403}, answers
    assert error_lines(daemon) == []


async def test_nesting_sweep_never_closes_with_1011(
    repo: Path, daemon_factory: type[Daemon], opened: list[Any]
) -> None:
    daemon = daemon_factory(repo, config={"limits": FUZZ_LIMITS}).start()
    daemon.wait_healthy()
    ws = await _fuzz_connection(daemon, opened)
    closed_at: list[tuple[int, int | None]] = []
    for depth in range(1, 1100):
        nested = "[" * depth + "]" * depth
        for frame in (
            '{"type": "ping", "nonce": ' + nested + "}",
            '{"type": "publish", "ref": ' + nested + ', "items": 5}',
        ):
            try:
                await _answers_to(ws, frame, f"d{depth}")
            except ConnectionClosed as exc:
                closed_at.append((depth, exc.rcvd.code if exc.rcvd else None))
                ws = await _fuzz_connection(daemon, opened)
    await ws.close()
    assert closed_at == []
    assert error_lines(daemon) == []


@pytest.mark.parametrize("backend", ["sqlite", "memory"])
async def test_one_bad_publish_does_not_take_the_service_down(
    repo: Path, daemon_factory: type[Daemon], backend: str, opened: list[Any]
) -> None:
    daemon = daemon_factory(repo, backend=backend).start()
    daemon.wait_healthy()
    follower = await follow(daemon, opened)
    publisher = await connect(daemon, opened, "tok-publisher")
    await publisher.ws.send(
        '{"type": "publish", "ref": "p", "items": [{"op": "upsert", '
        '"story": {"id": "EVIL-1", "title": "\\udc00"}}]}'
    )
    with contextlib.suppress(ConnectionClosed):
        await publisher.recv_until(lambda m: m["type"] in ("published", "error"), timeout=3)
    story = repo / "ui" / "UI-005-dark-mode.md"
    story.write_text(story.read_text().replace("status: ready", "status: done", 1))
    await follower.wait_for(lambda e: e["story_id"] == "UI-005", timeout=5)
    assert healthz(daemon)["status"] == "ok"
    late = await connect(daemon, opened)
    _, stories = await late.subscribe("late", {}, snapshot=True)
    assert len(stories) >= 50
    await late.close()
    await follower.client.close()


async def test_published_stories_reach_clients_as_standard_json(
    daemon: Daemon, opened: list[Any]
) -> None:
    follower = await follow(daemon, opened)
    publisher = await connect(daemon, opened, "tok-publisher")
    await publisher.ws.send(
        '{"type": "publish", "ref": "p", "items": [{"op": "upsert", '
        '"story": {"id": "NAN-1", "points": NaN}}]}'
    )
    reply, _ = await publisher.recv_until(lambda m: m["type"] in ("published", "error"))
    if reply["type"] == "published" and reply["count"]:
        await follower.wait_for(lambda e: e["story_id"] == "NAN-1", timeout=5)
    await follower.client.close()
