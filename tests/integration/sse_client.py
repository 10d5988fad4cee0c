"""A plain HTTP client for ``GET /api/stream`` (SPEC §12): a raw socket, the request by
hand, and the event-stream parsed line by line the way the WHATWG algorithm (what a
browser's ``EventSource`` runs) dispatches it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

from tests.conftest import scaled


@dataclass
class SseEvent:
    type: str
    data: Any  # the JSON
    id: str  # the stream's last event id after this event ("" when none yet)


class SseStream:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""  # the answer's body when it is not a stream
        self.last_id = ""
        self.comments = 0

    @classmethod
    async def open(
        cls,
        port: int,
        path: str = "/api/stream",
        token: str | None = "tok-reader",
        headers: dict[str, str] | None = None,
    ) -> SseStream:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Accept: text/event-stream"]
        if token is not None:
            lines.append(f"Authorization: Bearer {token}")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        stream = cls(reader, writer)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), scaled(15))
        status_line, *fields = head.decode("latin-1").split("\r\n")
        stream.status = int(status_line.split()[1])
        for field in fields:
            if field:
                name, _, value = field.partition(":")
                stream.headers[name.strip().lower()] = value.strip()
        if stream.status != 200:
            length = int(stream.headers.get("content-length", "0"))
            stream.body = await reader.readexactly(length)
        return stream

    def json(self) -> Any:
        return json.loads(self.body)

    async def next(self, timeout: float = 10) -> SseEvent:
        """The next dispatched event (comments counted, not returned), within ``timeout``."""
        async with asyncio.timeout(scaled(timeout)):
            return await self._next()

    async def _next(self) -> SseEvent:
        kind, data = "", ""
        while True:
            raw = await self.reader.readline()
            if not raw:
                raise EOFError("the stream ended")
            line = raw.decode("utf-8").rstrip("\n").rstrip("\r")
            if line == "":
                if data:
                    return SseEvent(kind or "message", json.loads(data), self.last_id)
                kind, data = "", ""
                continue
            if line.startswith(":"):
                self.comments += 1
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                kind = value
            elif name == "data":
                data += value
            elif name == "id":
                self.last_id = value

    async def until(self, kind: str, timeout: float = 10) -> tuple[SseEvent, list[SseEvent]]:
        seen: list[SseEvent] = []
        while True:
            event = await self.next(timeout)
            if event.type == kind:
                return event, seen
            seen.append(event)

    async def ended(self, timeout: float = 10) -> bool:
        """Whether the server ends the stream (EOF) within ``timeout``, whatever it sends."""
        try:
            async with asyncio.timeout(scaled(timeout)):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
