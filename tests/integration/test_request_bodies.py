"""Requests with a body, on a raw socket (SPEC §10 and §13).

websockets parses every request and refuses any body by closing the connection without an
answer; the server reads and drops a small one itself, so ``POST /api/hooks/{name}/test``
works from ``curl -d`` and most HTTP libraries. Bigger than 64 KiB: 413. Every refusal is an
HTTP answer with ``nosniff``. The API is GET but for the hook test: other methods get 405.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import scaled
from tests.integration.daemon import Daemon
from tests.integration.test_webhooks import hook, start, write_story
from tests.receiver import Receiver

pytestmark = pytest.mark.integration

ADMIN = b"Authorization: Bearer tok-admin\r\n"


class Answer:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ", 2)[1])
        self.headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:])
        }

    def json(self) -> Any:
        return json.loads(self.body)


def exchange(port: int, request: bytes) -> Answer:
    """Send ``request`` and read the answer until the server closes (it always does)."""
    with socket.create_connection(("127.0.0.1", port), timeout=scaled(10)) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    assert raw, "the server closed the connection without an answer"
    return Answer(raw)


async def send(daemon: Daemon, request: bytes) -> Answer:
    return await asyncio.to_thread(exchange, daemon.port, request)


def post(path: str, extra: bytes = b"", body: bytes = b"", token: bytes = ADMIN) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode() + token + extra
    return head + b"\r\n" + body


def chunked(body: bytes, size: int = 1000) -> bytes:
    parts = [
        f"{len(body[i : i + size]):x};ext=1\r\n".encode() + body[i : i + size] + b"\r\n"
        for i in range(0, len(body), size)
    ]
    return b"".join(parts) + b"0\r\nX-Trailer: t\r\n\r\n"


@pytest.fixture
async def served(
    tmp_path: Path, daemon_factory: type[Daemon]
) -> AsyncIterator[tuple[Daemon, Receiver]]:
    receiver = await Receiver().start()
    repo = tmp_path / "stories"
    repo.mkdir()
    write_story(repo, "B-1", epic="ui")
    config = {"webhooks": [hook("h", receiver.url())]}
    daemon = await start(daemon_factory(repo, config=config))
    yield daemon, receiver
    await receiver.close()


async def test_the_hook_test_takes_and_drops_a_small_body(
    served: tuple[Daemon, Receiver],
) -> None:
    daemon, receiver = served
    path = "/api/hooks/h/test"
    small = b'{"hello": "world"}'
    requests = [
        post(path, b"Content-Length: 0\r\n"),
        post(path, f"Content-Length: {len(small)}\r\n".encode(), small),
        post(path, b"Content-Type: application/json\r\nContent-Length: 65536\r\n", b"x" * 65536),
        post(path, b"Transfer-Encoding: chunked\r\n", chunked(b"y" * 5000)),
        post(path, b"transfer-encoding: Chunked\r\n", chunked(b"")),
        post(path),  # no body at all, as before
    ]
    for n, request in enumerate(requests, start=1):
        answer = await send(daemon, request)
        assert (answer.status, answer.json()) == (200, {"status": 200, "error": None}), n
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["content-type"] == "application/json"
        await receiver.wait_for(n)
    assert all(r.json()["type"] == "storywatch.test" for r in receiver.requests)


async def test_bodies_it_will_not_read_are_refused_with_an_answer(
    served: tuple[Daemon, Receiver],
) -> None:
    daemon, receiver = served
    path = "/api/hooks/h/test"
    refused = {
        "too large": (post(path, b"Content-Length: 65537\r\n"), 413),
        "far too large": (post(path, b"Content-Length: 99999999999999999999\r\n"), 413),
        "chunked, too large": (
            post(path, b"Transfer-Encoding: chunked\r\n", chunked(b"z" * 70_000, 8192)),
            413,
        ),
        "both framings": (
            post(path, b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", chunked(b"x")),
            400,
        ),
        "two lengths": (post(path, b"Content-Length: 1\r\nContent-Length: 2\r\n", b"xy"), 400),
        "a bad length": (post(path, b"Content-Length: -1\r\n"), 400),
        "a bad chunk": (post(path, b"Transfer-Encoding: chunked\r\n", b"zz\r\n"), 400),
        "gzip": (post(path, b"Transfer-Encoding: gzip\r\n", b"x"), 501),
        "a GET with a body": (
            b"GET /api/stories HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + ADMIN
            + b"Content-Length: 2\r\n\r\n{}",
            400,
        ),
    }
    for name, (request, status) in refused.items():
        answer = await send(daemon, request)
        assert answer.status == status, name
        assert answer.headers["x-content-type-options"] == "nosniff", name
    assert receiver.requests == []  # none of them reached the route
    health = await asyncio.to_thread(daemon.wait_healthy)
    assert health["status"] == "ok"


async def test_the_api_is_get_but_for_the_hook_test(served: tuple[Daemon, Receiver]) -> None:
    daemon, _ = served
    for method, path, allowed in [
        ("POST", "/api/stories", "GET"),
        ("DELETE", "/api/stories/B-1", "GET"),
        ("PUT", "/api/events?since=0", "GET"),
        ("HEAD", "/api/stories", "GET"),
        ("POST", "/api/hooks", "GET"),
        ("GET", "/api/hooks/h/test", "POST"),
        ("DELETE", "/api/hooks/h/dead", "GET"),
    ]:
        request = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode() + ADMIN + b"\r\n"
        answer = await send(daemon, request)
        assert (answer.status, answer.headers["allow"]) == (405, allowed), (method, path)
        assert answer.headers["x-content-type-options"] == "nosniff"
        if method != "HEAD":
            assert answer.json()["error"]["code"] == "method_not_allowed"
    # Still authentication first: no token, no hint about methods.
    answer = await send(daemon, b"POST /api/stories HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert answer.status == 401
    ok = await send(daemon, b"GET /api/stories HTTP/1.1\r\nHost: 127.0.0.1\r\n" + ADMIN + b"\r\n")
    assert ok.status == 200 and [s["id"] for s in ok.json()["stories"]] == ["B-1"]
