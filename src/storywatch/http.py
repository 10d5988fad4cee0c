"""The small HTTP surface on the WebSocket port: health, metrics, the JSON API, the board.

Handlers return :class:`HttpReply`; the server turns it into a websockets response. Every
handler that reveals stories filters them through the caller's token scope first.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Final
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from storywatch.coalesce import transformed
from storywatch.events import Event, Json
from storywatch.filters import FILTER_KEYS, Filter
from storywatch.history import CommitSource, story_history
from storywatch.hub import Hub
from storywatch.inbound import RequestError, parse_filter
from storywatch.ports import StoryBodies
from storywatch.values import Principal

MAX_WAIT_S: Final = 25.0
DEFAULT_WAIT_S: Final = 20.0
MAX_EVENTS_PER_POLL: Final = 1000
JSON_TYPE: Final = "application/json"


@dataclass
class HttpReply:
    status: int
    body: bytes
    content_type: str = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)


def json_reply(status: int, payload: Any) -> HttpReply:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    return HttpReply(status, body)


def error_reply(status: int, code: str, message: str) -> HttpReply:
    return json_reply(status, {"error": {"code": code, "message": message}})


def query_filter(query: Mapping[str, list[str]]) -> Filter:
    """The filter keys of a query string, bounded like a subscription's (SPEC §13)."""
    raw = {key: values for key, values in query.items() if key in FILTER_KEYS}
    return parse_filter(raw)


class Api:
    """``/api/*`` for one hub; ``bodies`` finds a story's markdown body by id."""

    def __init__(
        self, hub: Hub, bodies: StoryBodies, commits_of: CommitSource | None = None
    ) -> None:
        self.hub = hub
        self.bodies = bodies
        self.commits_of = commits_of  # SPEC §11: git, when there is a repo
        self._new_events = asyncio.Event()
        hub.listeners.append(self._wake)

    def _wake(self, events: list[Event]) -> None:
        self._new_events.set()
        self._new_events = asyncio.Event()

    async def handle(self, path: str, principal: Principal) -> HttpReply:
        parts = urlsplit(path)
        query = parse_qs(parts.query)
        try:
            flt = query_filter(query)
        except RequestError as exc:
            return error_reply(400, exc.code, exc.message)
        route = parts.path.rstrip("/")
        if route == "/api/stories":
            return self.stories(principal, flt)
        if route.startswith("/api/stories/") and route.endswith("/history"):  # SPEC §11
            story_id = route.removeprefix("/api/stories/").removesuffix("/history")
            return await self.history(unquote(story_id), query, principal)
        if route.startswith("/api/stories/"):
            return self.story(unquote(route.removeprefix("/api/stories/")), principal)
        if route == "/api/events":
            return await self.events(query, principal, flt)
        return error_reply(404, "not_found", f"no such endpoint: {parts.path}")

    def stories(self, principal: Principal, flt: Filter) -> HttpReply:
        scope = principal.epics
        stories = [s for s in self.hub.stories() if scope.sees(s) and flt.matches_story(s)]
        stories.sort(key=lambda s: str(s.get("id")))
        return json_reply(200, {"epoch": self.hub.epoch, "seq": self.hub.seq, "stories": stories})

    async def history(
        self, story_id: str, query: Mapping[str, list[str]], principal: Principal
    ) -> HttpReply:
        """The story's timeline from the retained events and git (``commits_of``)."""
        retained = list(self.hub.buffer)
        current = self.hub.story(story_id)
        status, payload = await story_history(
            story_id, current, retained, principal.epics, query, self.commits_of
        )
        return json_reply(status, payload)

    def story(self, story_id: str, principal: Principal) -> HttpReply:
        story = self.hub.story(story_id)
        if story is None or not principal.epics.sees(story):
            return error_reply(404, "not_found", "no such story")
        body = self.bodies.body_of(story_id)
        return json_reply(200, {**story, "body": body if body is not None else ""})

    async def events(
        self, query: Mapping[str, list[str]], principal: Principal, flt: Filter
    ) -> HttpReply:
        """The long-poll (SPEC §5), and behind the replay buffer a paged catch-up (§9).

        A catch-up page with ``more: true`` ends at ``seq``; the client's state is then not
        the state *at* that seq (stories changed later are not told yet), so the next poll
        must continue the catch-up, not replay events: ``compacted=1`` asks for that, and the
        answer's ``next`` carries it. Without it, a ``since`` that came within the buffer
        meanwhile would be answered by replay, and a story that left the client's filter
        or epics in the part already paged over could stay behind."""
        epoch = _first(query, "epoch") or self.hub.epoch
        try:
            since = int(_first(query, "since") or self.hub.seq)
            wait = float(_first(query, "wait") or DEFAULT_WAIT_S)
            compacted = _flag(_first(query, "compacted"))
        except ValueError:
            message = "`since` must be an integer, `wait` a number, `compacted` 0 or 1"
            return error_reply(400, "bad_request", message)
        if not math.isfinite(wait):
            return error_reply(400, "bad_request", "`wait` must be a finite number of seconds")
        wait = min(max(wait, 0.0), MAX_WAIT_S)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            replay = self.hub.replay(epoch, since)
            if replay is None or compacted:
                page = self.hub.page(epoch, since, flt, principal.epics)
                if page is None:
                    lost = {"epoch": self.hub.epoch, "seq": self.hub.seq, "recovered": False}
                    return json_reply(200, {**lost, "events": []})
                answer = page.to_json(self.hub.epoch)
                if page.more:
                    answer["next"] = _next_poll(query, self.hub.epoch, page.seq)
                return json_reply(200, answer)
            page_events = replay[:MAX_EVENTS_PER_POLL]
            frames = self._visible(page_events, principal, flt)
            cursor = page_events[-1].seq if len(replay) > len(page_events) else self.hub.seq
            remaining = deadline - loop.time()
            if frames or remaining <= 0:
                return json_reply(
                    200,
                    {"epoch": self.hub.epoch, "seq": cursor, "recovered": True, "events": frames},
                )
            since = cursor
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_events.wait(), remaining)

    def _visible(self, events: list[Event], principal: Principal, flt: Filter) -> list[Json]:
        out = []
        for event in events:
            view = transformed(event, principal.epics)
            if view is not None and flt.matches(view.type, view.before, view.after):
                out.append(view.data if view.data is not None else event.data)
        return out


@dataclass(frozen=True)
class BoardPage:
    """The board, with the configured column order filled in, and its Content-Security-
    Policy: scripts only by the hashes of the page's own inline blocks, connections only to
    its own origin (a story repo is shared content: a title must never run as code)."""

    body: bytes
    script_hashes: tuple[str, ...]

    def csp(self, host: str | None, tls: bool) -> str:
        connect = "'self'"
        if host is not None and _HOST.fullmatch(host):
            connect += f" {'wss' if tls else 'ws'}://{host}"
        scripts = " ".join(f"'sha256-{h}'" for h in self.script_hashes) or "'none'"
        return (
            f"default-src 'self'; script-src {scripts}; style-src 'self' 'unsafe-inline'; "
            f"img-src 'self' data:; connect-src {connect}; base-uri 'none'; "
            "form-action 'none'; frame-ancestors 'none'; object-src 'none'"
        )


_HOST: Final = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
_INLINE_SCRIPT: Final = re.compile(rb"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.S)


def board_page(statuses: Sequence[str] = ()) -> BoardPage:
    """The board page (``board.statuses`` filled in) and the hashes its CSP allows."""
    try:
        page = resources.files("storywatch").joinpath("board/index.html").read_bytes()
    except (FileNotFoundError, OSError):
        page = b"<!doctype html><title>storywatch</title><p>The board is not installed.</p>"
    if statuses:
        config = json.dumps({"statuses": list(statuses)}).replace("</", "<\\/").encode()
        page = page.replace(b'{"statuses": []}', config, 1)
    hashes = tuple(
        base64.b64encode(hashlib.sha256(block).digest()).decode()
        for block in _INLINE_SCRIPT.findall(page)
    )
    return BoardPage(page, hashes)


def _flag(value: str | None) -> bool:
    if value is None or value in ("", "0", "false"):
        return False
    if value in ("1", "true"):
        return True
    raise ValueError(value)


def _next_poll(query: Mapping[str, list[str]], epoch: str, seq: int) -> str:
    """Where a paged catch-up goes on: this path with the same filter, ``since`` the last
    entry's seq, and ``compacted=1`` (the token is the client's to add, as before)."""
    params = [("epoch", epoch), ("since", str(seq)), ("compacted", "1")]
    params += [(key, value) for key in FILTER_KEYS for value in query.get(key, ())]
    return "/api/events?" + urlencode(params)


def _first(query: Mapping[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[0] if values else None
