"""Small helpers the integration tests share: HTTP, handshakes and story edits."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import websockets
from websockets.exceptions import InvalidStatus

from tests.conftest import scaled
from tests.integration.daemon import Daemon

_FRONT = re.compile(rb"\A(?:\xef\xbb\xbf)?---\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.S)
_STATUS_LINE = re.compile(rb"(?m)^status:[^\r\n]*")


def http_get(
    daemon: Daemon,
    path: str,
    token: str | None = "tok-reader",
    timeout: float = 10,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """(status, parsed JSON body or text) of a GET on the daemon; blocking."""
    request = urllib.request.Request(daemon.http + path, headers=dict(headers or {}))
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=scaled(timeout)) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


async def ws_status(url: str, **kwargs: Any) -> int:
    """101 when the handshake was accepted, else the HTTP status of the refusal."""
    try:
        async with websockets.connect(url, subprotocols=["storywatch.v1"], **kwargs) as ws:
            await ws.recv()
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


def edit(path: Path, old: str, new: str) -> str:
    """Replace the first ``old`` in the file (which must hold it); the new text."""
    text = path.read_text()
    assert old in text, (path, old)
    updated = text.replace(old, new, 1)
    path.write_text(updated)
    return updated


def set_status(path: Path, status: str) -> None:
    """Rewrite the front-matter ``status:`` line only (keeps BOM, CRLF and the body)."""
    data = path.read_bytes()
    match = _FRONT.match(data)
    assert match is not None, path
    block, n = _STATUS_LINE.subn(b"status: " + status.encode(), match.group(1), count=1)
    assert n == 1, path
    path.write_bytes(data[: match.start(1)] + block + data[match.end(1) :])


def story_path(repo: Path, story_id: str) -> Path:
    """The file of a fixture story (named ``<id>-<slug>.md``)."""
    (match,) = list(repo.rglob(f"{story_id}-*.md"))
    return match
