"""The only importer of websockets: handshake, auth, sessions and their writers.

Auth, origin and connection limits are decided in ``process_request``, before the upgrade.
Each connection gets a pure :class:`Session`; the shared :class:`~storywatch.writer.Flusher`
drains every outbox at the pace of its token bucket, and a socket that stays unwritable for
``write_timeout_s`` is closed with 1013, so one stalled phone never holds memory or the
event loop.

``GET /api/stream`` (Server-Sent Events, SPEC §12) is answered from ``process_request``
too, and never upgraded: the server writes the HTTP head on the connection's transport
itself, makes the connection an SSE :class:`Session` like any other (the same flusher
drains it, framed as SSE), and ``process_request`` returns only once the TCP connection is
closed — so websockets, which answers only a connection still in its opening handshake,
never writes a response of its own behind the stream.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import ssl
import weakref
from collections.abc import Callable, Generator, Sequence
from http import HTTPStatus
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import (
    ConnectionClosed,
    HeaderLineTooLong,
    InvalidMessage,
    NegotiationError,
    RequestLineTooLong,
    TooManyHeaders,
)
from websockets.http11 import Request, Response, parse_headers, parse_line
from websockets.protocol import CONNECTING, Protocol
from websockets.server import ServerProtocol
from websockets.streams import StreamReader
from websockets.typing import StatusLike, Subprotocol

from storywatch import SERVER_NAME, sse
from storywatch.auth import Authenticator, origin_allowed, token_from
from storywatch.config import Settings
from storywatch.errors import PublishRejected
from storywatch.events import Json, utc_now_iso
from storywatch.history import CommitSource
from storywatch.http import Api, HttpReply, board_page, error_reply, json_reply, query_filter
from storywatch.hub import Hub
from storywatch.inbound import Publish, RequestError, safe_ref
from storywatch.metrics import CONTENT_TYPE_LATEST, Metrics
from storywatch.paths import PathRules
from storywatch.ports import Publisher, StoryBodies
from storywatch.session import Close, Session
from storywatch.values import Principal, TokenEntry
from storywatch.webhooks.api import HooksApi, is_hooks_route, method_not_allowed
from storywatch.writer import Flusher, end_stream, only_write

logger = logging.getLogger(__name__)

SUBPROTOCOL: Final = Subprotocol("storywatch.v1")
HANDSHAKE_TIMEOUT_S: Final = 10.0
PING_INTERVAL_S: Final = 20.0
CLOSE_TIMEOUT_S: Final = 5.0
PING_TIMEOUT_S: Final = 20.0
CLOSE_GOING_AWAY: Final = 1001
CLOSE_POLICY: Final = 1008
CLOSE_OVERLOADED: Final = 1013
# A stream asked for while the daemon starts waits this long for it to be ready: an
# EventSource takes any answer but 200 as final and would never reconnect (SPEC §12).
STREAM_READY_WAIT_S: Final = 10.0
STREAM_ROUTE: Final = "/api/stream"


class _Protocol(ServerProtocol):
    """websockets' own refusals (400, 426, 431…) carry ``nosniff`` like ours (SPEC §13),
    and a request may come with a small body that is read and dropped (below)."""

    def reject(self, status: StatusLike, text: str) -> Response:
        response = super().reject(status, text)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    def parse(self) -> Generator[None]:
        """websockets' own request parsing, except for a body: its parser refuses any
        ``Content-Length`` but 0 and any ``Transfer-Encoding`` by closing the connection
        without an answer. ``POST /api/hooks/{name}/test`` from a client that sends a body
        (``curl -d``, most HTTP libraries) must work, so the body's framing headers are
        taken out before websockets parses the head, and the body (≤ ``MAX_BODY_BYTES``)
        is read and dropped here: no route reads one. Larger: 413; a body on a GET or
        HEAD, or framing that cannot be trusted: 400; a coding other than chunked: 501.
        Everything else (limits, the request line, the other refusals) is websockets'."""
        if self.state is not CONNECTING:
            return (yield from super().parse())
        framing = _BodyFraming()
        try:
            request = yield from Request.parse(framing.filter(self.reader.read_line))
            refusal = yield from framing.drop_body(request.method, self.reader)
        except RequestLineTooLong as exc:
            refusal = (HTTPStatus.REQUEST_URI_TOO_LONG, str(exc), exc)
        except (HeaderLineTooLong, TooManyHeaders) as exc:
            refusal = (HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, str(exc), exc)
        except Exception as exc:  # not HTTP/1.1 at all: as websockets does, no answer
            self.handshake_exc = InvalidMessage("did not receive a valid HTTP request")
            self.handshake_exc.__cause__ = exc
            if self.debug:
                self.logger.debug("! no valid HTTP request", exc_info=True)
            self.send_eof()
            self.parser = self.discard()
            next(self.parser)
            yield
            return
        if refusal is not None:
            status, text, cause = refusal
            self.handshake_exc = cause
            if self.debug:
                self.logger.debug("! request refused: %s", text)
            self.send_response(
                self.reject(status, f"Failed to open a WebSocket connection: {text}.\n")
            )
            yield
            return
        if self.debug:  # as websockets logs it (storywatch's log filter redacts tokens)
            self.logger.debug("< %s %s %s", request.method, request.path, request.protocol)
            for key, value in request.headers.raw_items():
                self.logger.debug("< %s: %s", key, value)
        self.events.append(request)
        yield from Protocol.parse(self)


# A request body is read and dropped up to this size (SPEC §10: the hook test takes none).
MAX_BODY_BYTES: Final = 65_536
_FRAMING: Final = (b"content-length:", b"transfer-encoding:")
_MAX_FRAMING_LINES: Final = 8
_CHUNK_SIZE: Final = re.compile(rb"[0-9a-fA-F]{1,8}")

_Refusal = tuple[HTTPStatus, str, Exception] | None
_ReadLine = Callable[[int, type[Exception]], Generator[None, None, bytes | bytearray]]


class _BodyFraming:
    """The ``Content-Length`` and ``Transfer-Encoding`` lines of a request's head, kept out
    of websockets' parser (which refuses any body) and then honoured here."""

    def __init__(self) -> None:
        self.lengths: list[bytes] = []
        self.codings: list[bytes] = []

    def filter(self, read_line: _ReadLine) -> _ReadLine:
        """``read_line`` that hands on every line but the framing headers after the first."""
        first = True

        def reading(limit: int, too_long: type[Exception]) -> Generator[None, None, bytes]:
            nonlocal first
            skipped = 0
            while True:
                line = bytes((yield from read_line(limit, too_long)))
                if first or not line[:18].lower().startswith(_FRAMING):
                    first = False
                    return line
                skipped += 1
                if skipped > _MAX_FRAMING_LINES:
                    raise TooManyHeaders("too many Content-Length/Transfer-Encoding headers")
                name, _, value = line.partition(b":")
                target = self.lengths if name.lower() == b"content-length" else self.codings
                target.append(value.strip())

        return reading

    def drop_body(self, method: str, reader: StreamReader) -> Generator[None, None, _Refusal]:
        """Read and drop the body; a refusal (status, text, cause) instead when it must not
        be read."""
        if not self.lengths and not self.codings:
            return None
        bad = InvalidMessage("unsupported request body")
        if self.codings:
            if self.lengths:  # both: a smuggling attempt or a broken client (RFC 9112 §6.1)
                return HTTPStatus.BAD_REQUEST, "both Content-Length and Transfer-Encoding", bad
            if [c.lower() for c in self.codings] != [b"chunked"]:
                return HTTPStatus.NOT_IMPLEMENTED, "only the chunked transfer coding", bad
            size = -1
        else:
            if len(set(self.lengths)) != 1 or not self.lengths[0].isdigit():
                return HTTPStatus.BAD_REQUEST, "bad Content-Length", bad
            text = self.lengths[0]
            size = int(text) if len(text) <= 12 else MAX_BODY_BYTES + 1
            if size == 0:
                return None
        if method in ("GET", "HEAD"):
            return HTTPStatus.BAD_REQUEST, f"a {method} request has no body", bad
        if size > MAX_BODY_BYTES:
            return HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request body too large", bad
        if size >= 0:
            yield from reader.read_exact(size)
            return None
        return (yield from _drop_chunked(reader, bad))


def _drop_chunked(reader: StreamReader, bad: Exception) -> Generator[None, None, _Refusal]:
    total = 0
    while True:
        line = yield from parse_line(reader.read_line)
        size_text = bytes(line).split(b";", 1)[0].strip()
        if not _CHUNK_SIZE.fullmatch(size_text):
            return HTTPStatus.BAD_REQUEST, "bad chunk size", bad
        size = int(size_text, 16)
        total += size
        if total > MAX_BODY_BYTES:
            return HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request body too large", bad
        if size == 0:
            yield from parse_headers(reader.read_line)  # the trailer
            return None
        yield from reader.read_exact(size)
        if (yield from reader.read_exact(2)) != b"\r\n":
            return HTTPStatus.BAD_REQUEST, "chunk without CRLF", bad


class _Connection(ServerConnection):
    """Applies the handshake timeout to receiving the request only, so a long-poll
    answered from ``process_request`` is not cut short by it."""

    def __init__(self, protocol: ServerProtocol, *args: Any, **kwargs: Any) -> None:
        # serve() builds a plain ServerProtocol; ours adds a header to its refusals and
        # takes a small request body. Its parser, started in the constructor, is started
        # again as ours (nothing has been received yet).
        protocol.__class__ = _Protocol
        protocol.parser.close()
        protocol.parser = protocol.parse()
        next(protocol.parser)
        super().__init__(protocol, *args, **kwargs)

    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
            await asyncio.wait(
                [self.request_rcvd, self.connection_lost_waiter],
                return_when=asyncio.FIRST_COMPLETED,
            )
        await super().handshake(*args, **kwargs)


class StoryServer:
    def __init__(
        self,
        settings: Settings,
        hub: Hub,
        metrics: Metrics,
        *,
        publisher: Publisher | None,
        bodies: StoryBodies,
        commits_of: CommitSource | None = None,
        hooks_api: HooksApi | None = None,
        health: Callable[[], tuple[int, Json]],
        authenticator: Authenticator,
        accepting: Callable[[], bool] = lambda: True,
    ) -> None:
        self.settings = settings
        self.hub = hub
        self.metrics = metrics
        self.publisher = publisher  # the write side's publish port; None: publish refused
        self.health = health
        self.auth = authenticator
        self.accepting = accepting  # False until the app is ready: /ws and /api answer 503
        self.api = Api(hub, bodies, commits_of)
        self.hooks_api = hooks_api  # /api/hooks (SPEC §10)
        self.tls = bool(settings.server.tls_cert)
        self._rules = PathRules(settings.watch.include, settings.watch.exclude)
        self._board_page = board_page(settings.board_statuses)
        self._server: Server | None = None
        self._accepted: weakref.WeakKeyDictionary[ServerConnection, TokenEntry] = (
            weakref.WeakKeyDictionary()
        )
        self._sessions: dict[Session, tuple[ServerConnection, TokenEntry]] = {}
        self._per_token: dict[str, int] = {}  # accepted connections by token name
        self._ids = itertools.count(1)
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Future[None]] = set()
        # SSE streams (SPEC §12): each one's "end now" (shutdown, token revoked, stalled).
        self._streams: dict[Session, asyncio.Event] = {}
        self._shutting_down = False
        self._flusher = Flusher(
            metrics, settings.limits.write_timeout_s, self._stalled, clock=hub.clock
        )

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings.server
        ssl_context = None
        if s.tls_cert:
            ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_context.load_cert_chain(s.tls_cert, s.tls_key)
        self._server = await serve(
            self._handle,
            s.host,
            s.port,
            create_connection=_Connection,
            process_request=self._process_request,
            process_response=self._process_response,
            select_subprotocol=_select_subprotocol,
            subprotocols=[SUBPROTOCOL],
            max_size=self.settings.limits.max_message_bytes,
            compression=None,  # per-message deflate costs ~100 kB per connection
            ping_interval=PING_INTERVAL_S,
            ping_timeout=PING_TIMEOUT_S,
            open_timeout=None,  # applied by _Connection.handshake
            close_timeout=CLOSE_TIMEOUT_S,
            server_header=SERVER_NAME,
            ssl=ssl_context,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S if ssl_context else None,
            logger=logging.getLogger("storywatch.websockets"),
        )
        self._heartbeat_task = asyncio.create_task(self._heartbeats())

    @property
    def port(self) -> int:
        if self._server is None:
            return 0
        sockets = self._server.sockets
        return int(sockets[0].getsockname()[1]) if sockets else 0

    async def close(self) -> None:
        """Stop accepting, close every client with 1001 (end every stream) and wait."""
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
        self._shutting_down = True
        if self._server is not None:
            self._server.close(close_connections=True)
            for ended in self._streams.values():
                ended.set()
            await self._server.wait_closed()

    @property
    def last_activity(self) -> float:
        """When an event was last published or written to a client (monotonic clock)."""
        return max(self.hub.last_publish, self._flusher.last_pass)

    @property
    def connection_count(self) -> int:
        return len(self._sessions)

    def reload_tokens(self, entries: Sequence[TokenEntry]) -> int:
        """New token list: close connections whose token was removed or narrowed."""
        self.auth = Authenticator(entries)
        by_hash = {e.sha256: e for e in entries}
        closed = 0
        for session, (connection, old) in list(self._sessions.items()):
            new = by_hash.get(old.sha256)
            if (new is None or _narrowed(old, new)) and session in self._streams:
                closed += 1
                self._streams[session].set()
            elif new is None or _narrowed(old, new):
                closed += 1
                task = asyncio.ensure_future(
                    connection.close(CLOSE_POLICY, "token revoked or narrowed")
                )
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            else:
                self._sessions[session] = (connection, new)
                session.principal = Principal.of(new)
        return closed

    # -- HTTP, before any upgrade -----------------------------------------------------

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        route = urlsplit(request.path).path
        if route == "/healthz":
            status, payload = self.health()
            return _response(json_reply(status, payload))
        if route in ("/", "/index.html"):
            page = self._board_page
            hosts = request.headers.get_all("Host")
            csp = page.csp(hosts[0] if len(hosts) == 1 else None, self.tls)
            return _response(
                HttpReply(
                    200,
                    page.body,
                    "text/html; charset=utf-8",
                    {"Content-Security-Policy": csp},
                )
            )
        if route == "/metrics" and self.settings.server.metrics_public:
            return _response(HttpReply(200, self.metrics.render(), CONTENT_TYPE_LATEST))
        if not (route == "/ws" or route.startswith("/api/") or route == "/metrics"):
            return self._refuse(404, "not_found", "no such endpoint")
        if (
            not self.accepting()
            and route != "/metrics"
            and (route != STREAM_ROUTE or not await self._until_ready())
        ):
            return self._refuse(503, "starting", "starting up; retry shortly")

        headers = request.headers
        single: dict[str, str | None] = {}
        for name in ("Origin", "Host", "Authorization"):
            values = headers.get_all(name)
            if len(values) > 1:
                return self._refuse(400, "bad_request", f"repeated {name} header")
            single[name] = values[0] if values else None
        if not origin_allowed(
            single["Origin"], single["Host"], self.tls, self.settings.server.origins
        ):
            return self._refuse(403, "forbidden", "origin not allowed")
        entry = self.auth.lookup(token_from(request.path, single["Authorization"]))
        if entry is None:
            return self._refuse(401, "unauthorized", "missing or unknown token")
        principal = Principal.of(entry)

        if route == "/metrics":
            if not principal.can("admin"):
                return self._refuse(403, "forbidden", "metrics need a token with scope admin")
            return _response(HttpReply(200, self.metrics.render(), CONTENT_TYPE_LATEST))
        # -- outbound webhooks (SPEC §10): admin only, GET and POST -----------------------
        if self.hooks_api is not None and is_hooks_route(route):
            if not principal.can("admin"):
                return self._refuse(403, "forbidden", "webhooks need a token with scope admin")
            return _response(await self.hooks_api.handle(request.method.upper(), route))
        # ------------------------------------------------------------------------------------
        if route.startswith("/api/"):
            if not principal.can("read"):
                return self._refuse(403, "forbidden", "this token has no read scope")
            if request.method.upper() != "GET":  # the API is GET, but the hook test (SPEC §10)
                return _response(method_not_allowed("GET"))
            if route == STREAM_ROUTE:  # SPEC §12
                return await self._stream(connection, request, entry)
            return _response(await self.api.handle(request.path, principal))

        # /ws
        if not (principal.can("read") or principal.can("publish")):
            return self._refuse(403, "forbidden", "this token has neither read nor publish scope")
        return self._admit(connection, entry)

    def _admit(self, connection: ServerConnection, entry: TokenEntry) -> Response | None:
        """Count a WebSocket or SSE connection against the limits (None: admitted)."""
        limits = self.settings.limits
        if len(self._accepted) >= limits.max_connections:
            return self._refuse(503, "overloaded", "too many connections")
        if self._per_token.get(entry.name, 0) >= limits.max_connections_per_token:
            return self._refuse(429, "too_many_connections", "too many connections for token")
        self._accepted[connection] = entry
        self._per_token[entry.name] = self._per_token.get(entry.name, 0) + 1
        return None

    async def _until_ready(self) -> bool:
        """Wait (bounded) for the app to be ready; False if it is not, or is stopping."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STREAM_READY_WAIT_S
        while not self.accepting():
            if self._shutting_down or loop.time() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return not self._shutting_down

    # -- Server-Sent Events (SPEC §12) ------------------------------------------------

    async def _stream(
        self, connection: ServerConnection, request: Request, entry: TokenEntry
    ) -> Response:
        """Serve ``GET /api/stream`` until the client goes, the token is revoked, the
        socket stalls, or the server stops; the answer returned is never sent."""
        query = parse_qs(urlsplit(request.path).query)
        try:
            flt = query_filter(query)
        except RequestError as exc:
            return self._refuse(400, exc.code, exc.message)
        ids = request.headers.get_all("Last-Event-ID") or query.get("last_event_id", [])
        resume = sse.parse_last_event_id(ids[0]) if len(ids) == 1 else None
        if self._shutting_down:
            return self._refuse(503, "stopping", "shutting down")
        refused = self._admit(connection, entry)
        if refused is not None:
            return refused
        session = self._open(connection, entry, sse=True)
        # The head goes out first, then the session's messages as the flusher drains them.
        only_write(connection)
        connection.transport.write(sse.http_head(SERVER_NAME))
        session.open_stream(flt, resume, self.hub)
        ended = self._streams[session] = asyncio.Event()
        writer = self._flusher.attach(connection, session, stream=True)
        ending: asyncio.Future[Any] = asyncio.ensure_future(ended.wait())
        lost: asyncio.Future[Any] = connection.connection_lost_waiter
        try:
            await asyncio.wait([lost, ending], return_when=asyncio.FIRST_COMPLETED)
        finally:
            ending.cancel()
            writer.close()
            self._streams.pop(session, None)
            self._closed(connection, session)
            await end_stream(connection, CLOSE_TIMEOUT_S)
        # Not sent: the connection is closed, so websockets writes nothing more.
        return _response(HttpReply(200, b""))

    def _release(self, connection: ServerConnection) -> None:
        entry = self._accepted.pop(connection, None)
        if entry is not None:
            left = self._per_token.get(entry.name, 1) - 1
            if left > 0:
                self._per_token[entry.name] = left
            else:
                self._per_token.pop(entry.name, None)

    def _process_response(
        self, connection: ServerConnection, request: Request, response: Response
    ) -> None:
        response.headers["X-Content-Type-Options"] = "nosniff"
        if response.status_code != HTTPStatus.SWITCHING_PROTOCOLS:
            self._release(connection)  # refused after all (e.g. subprotocol)

    def _refuse(self, status: int, code: str, message: str) -> Response:
        self.metrics.rejected.labels(str(status)).inc()
        return _response(error_reply(status, code, message))

    # -- WebSocket connections --------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        entry = self._accepted.get(connection)
        if entry is None:  # cannot happen: process_request accepted it
            await connection.close(1011, "internal error")
            return
        session = self._open(connection, entry, sse=False)
        session.send_control(
            {
                "type": "welcome",
                "session": session.id,
                "server": SERVER_NAME,
                "epoch": self.hub.epoch,
                "seq": self.hub.seq,
                "heartbeat_s": self.settings.server.heartbeat_s,
                "user": entry.name,
                "scopes": sorted(entry.scopes),
            }
        )
        writer = self._flusher.attach(connection, session)
        try:
            await self._reader(connection, session)
        except ConnectionClosed:
            pass
        finally:
            writer.close()
            self._closed(connection, session)

    def _open(self, connection: ServerConnection, entry: TokenEntry, *, sse: bool) -> Session:
        """A new session for an admitted connection (WebSocket, or an SSE stream)."""
        session = Session(
            f"c{next(self._ids)}",
            Principal.of(entry),
            self.settings.limits,
            self.hub.clock(),
            self._rules,
            sse=sse,
        )
        session.on_coalesced = self.metrics.coalesced.inc
        session.on_overflow = self.metrics.dropped.labels("overflow").inc
        self._sessions[session] = (connection, entry)
        self.hub.sessions.add(session)
        self.metrics.connections.inc()
        self.metrics.connections_total.inc()
        kind = "stream" if sse else "connection"
        logger.info("%s %s open: %s as %s", kind, session.id, _peer(connection), entry.name)
        return session

    def _closed(self, connection: ServerConnection, session: Session) -> None:
        self.hub.sessions.discard(session)
        self._sessions.pop(session, None)
        self._release(connection)  # its slot is free now, not at next GC
        self.metrics.connections.dec()
        if session.sse:
            logger.info("stream %s closed", session.id)
        else:
            logger.info("connection %s closed: code %s", session.id, connection.close_code)

    async def _reader(self, connection: ServerConnection, session: Session) -> None:
        clock = self.hub.clock
        async for message in connection:
            outcome = session.handle_message(message, clock(), self.hub)
            if isinstance(outcome, Close):
                self.metrics.dropped.labels("abuse").inc()
                await self._close_draining(connection, outcome)
                return
            if isinstance(outcome, Publish):
                await self._publish(session, outcome)

    async def _close_draining(self, connection: ServerConnection, close: Close) -> None:
        """Close, and keep discarding what the client still sends: its close frame sits
        behind those messages, and the handshake would otherwise wait for close_timeout."""
        closing = asyncio.create_task(connection.close(close.code, close.reason))
        try:
            async for _ in connection:
                pass
        except ConnectionClosed:
            pass
        await closing

    async def _publish(self, session: Session, request: Publish) -> None:
        ref = safe_ref(request.ref)
        if self.publisher is None:
            session.send_error("forbidden", "this server does not accept publish", ref)
            return
        try:
            done = await self.publisher.publish(request, session.principal)
        except PublishRejected as exc:
            session.send_error(exc.code, exc.message, ref)
            return
        session.send_control(
            {"type": "published", "ref": request.ref, "count": done.count, "seq": done.seq}
        )

    async def _stalled(self, connection: ServerConnection, session: Session) -> None:
        if session.overloaded:
            logger.warning("connection %s over its queued-bytes budget; closing", session.id)
        else:
            logger.warning("connection %s too slow to read; closing", session.id)
        self.metrics.dropped.labels("slow").inc()
        self.hub.sessions.discard(session)  # nothing more piles up for it
        ended = self._streams.get(session)
        if ended is not None:  # a stream has no close handshake: it just ends
            connection.transport.abort()
            ended.set()
            return
        await _close_or_abort(connection, CLOSE_OVERLOADED, "too slow to read")

    async def _heartbeats(self) -> None:
        interval = self.settings.server.heartbeat_s
        while True:
            await asyncio.sleep(interval)
            frame = json.dumps(
                {"type": "heartbeat", "time": utc_now_iso(), "seq": self.hub.seq},
                separators=(",", ":"),
            )
            comment = sse.HEARTBEAT.decode()  # a stream's heartbeat: a comment line
            for session in list(self._sessions):
                session.send_raw(comment if session.sse else frame, urgent=True)
            self.metrics.stories.set(len(self.hub))
            self.metrics.seq.set(self.hub.seq)


async def _close_or_abort(connection: ServerConnection, code: int, reason: str) -> None:
    """Close with ``code``; a peer that does not read cannot take the close frame off a
    full buffer, so after the close timeout the socket is aborted."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await connection.close(code, reason)
    except TimeoutError:
        connection.transport.abort()


def _select_subprotocol(
    connection: ServerConnection, subprotocols: Sequence[Subprotocol]
) -> Subprotocol | None:
    if SUBPROTOCOL in subprotocols:
        return SUBPROTOCOL
    if not subprotocols:
        return None
    raise NegotiationError(f"unsupported subprotocols; this server speaks {SUBPROTOCOL}")


def _narrowed(old: TokenEntry, new: TokenEntry) -> bool:
    if old.scopes - new.scopes:
        return True
    if new.epics is None:
        return False
    return old.epics is None or bool(old.epics - new.epics)


def _response(reply: HttpReply) -> Response:
    headers = Headers()
    headers["Content-Type"] = reply.content_type
    headers["Content-Length"] = str(len(reply.body))
    headers["Cache-Control"] = "no-store"
    headers["Connection"] = "close"
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"
    for key, value in reply.headers.items():
        headers[key] = value
    return Response(reply.status, HTTPStatus(reply.status).phrase, headers, reply.body)


def _peer(connection: ServerConnection) -> str:
    address = connection.remote_address
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)
