"""A real webhook receiver for tests: a tiny asyncio HTTP/1.1 server on 127.0.0.1, port 0.

``respond`` decides each answer (status, headers, and may wait on an event to be "slow");
every request is recorded with its arrival time, headers and body. Keep-alive, like a
real server, so the sender's connection reuse is exercised too. No mocks: the sender talks
to this over a real socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from storywatch.webhooks.signing import signature
from tests.conftest import scaled

SECRET_PATH = "/hooks/s3cr3t-path-T0KEN"


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    arrived: float  # time.monotonic()
    answered: float = 0.0

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def seq(self) -> int | None:
        data = self.json()
        return data.get("seq") if isinstance(data, dict) else None


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"


Respond = Callable[[Received], Awaitable[Answer] | Answer]


async def answer_ok(request: Received) -> Answer:
    return Answer(200)


class Receiver:
    def __init__(self, respond: Respond = answer_ok) -> None:
        self.respond = respond
        self.requests: list[Received] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._server: asyncio.Server | None = None
        self._changed = asyncio.Condition()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, port: int = 0) -> Receiver:
        """Listen on ``port`` (0: any free one; a given one: a receiver that was down and
        comes back where the hook points)."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def url(self, path: str = SECRET_PATH) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def wait_for(
        self, count: int, timeout: float = 20, *, where: Callable[[Received], bool] | None = None
    ) -> list[Received]:
        """At least ``count`` requests (matching ``where``) have arrived."""

        def matching() -> list[Received]:
            return [r for r in self.requests if where is None or where(r)]

        async with asyncio.timeout(scaled(timeout)):
            async with self._changed:
                await self._changed.wait_for(lambda: len(matching()) >= count)
        return matching()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                async with self._changed:
                    self.requests.append(request)
                    self._changed.notify_all()
                try:
                    answer = self.respond(request)
                    if not isinstance(answer, Answer):
                        answer = await answer
                finally:
                    self.in_flight -= 1
                request.answered = time.monotonic()
                head = [f"HTTP/1.1 {answer.status} X", f"Content-Length: {len(answer.body)}"]
                head += [f"{k}: {v}" for k, v in answer.headers.items()]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + answer.body)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            # Python 3.11's start_server logs a handler task that ends cancelled (at loop
            # teardown, a handler still waiting for a request) as an error.
            return
        finally:
            self._writers.discard(writer)
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> Received | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Received(method, path, headers, body, time.monotonic())


def verify(key: bytes, msg_id: str, timestamp: str, body: bytes, header: str) -> bool:
    """What a receiver checks: whether any ``v1,`` signature in the space-separated
    ``webhook-signature`` header matches (a real one also refuses old timestamps)."""
    try:
        stamp = int(timestamp)
    except ValueError:
        return False
    expected = signature(key, msg_id, stamp, body)
    return any(hmac.compare_digest(expected, part) for part in header.split())


def closed_port() -> int:
    """A port nothing listens on (a receiver that is down)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
