"""The only importer of httpx: one delivery task per hook, and test deliveries.

Each hook runs alone: its own task, its own ``httpx.AsyncClient`` (its own connection, its
own timeout), its own cursor. It reads the log after its cursor, decides per event whether
it gets it (:mod:`.matching`), and POSTs the events it gets one at a time, in seq order,
retrying as :mod:`.retry` says. The cursor advances (durably, in the hook's store) only once
an event is delivered, dead-lettered or found not to match: after a crash the hook resumes
after its cursor, so every event is delivered at least once and none is skipped.

A slow or dead receiver only ever holds its own task: the watcher and the hub hand events
to the log and never wait for a hook (the log is followed, not pushed into).

Why httpx: an asyncio-native client with connection pooling per client, timeouts per
phase, HTTP/1.1 keep-alive, TLS verification by default and no redirect following when
asked — everything the sender needs, well kept, typed, and no HTTP written by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import http.cookiejar
import logging
import random
import time
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit

import httpx

from storywatch.errors import BackendError
from storywatch.eventlog import LogState
from storywatch.events import Event, Json, utc_now_iso
from storywatch.metrics import Metrics
from storywatch.webhooks import retry, signing
from storywatch.webhooks.bodies import probe_body
from storywatch.webhooks.config import HookConfig
from storywatch.webhooks.matching import hook_view, request_body
from storywatch.webhooks.source import HookSource
from storywatch.webhooks.store import HookState, HookStore, dead_letter

logger = logging.getLogger(__name__)
# httpx logs every request's full URL at INFO, httpcore its details at DEBUG: a hook URL's
# path is a credential (Slack's are), so neither may ever reach a log line.
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).setLevel(logging.WARNING)

READ_BATCH: Final = 256
MAX_ANSWER_BYTES: Final = 65_536  # read (and drop) at most this much of an answer
DRAIN_TIMEOUT_S: Final = 1.0
STORE_RETRY_S: Final = (0.5, 5.0)  # first and longest wait while the store is unreachable

Clock = Callable[[], float]


class Tail:
    """The log's latest epoch and seq, and a way to wait for them to move."""

    def __init__(self, epoch: str, seq: int) -> None:
        self.epoch = epoch
        self.seq = seq
        self._moved = asyncio.Event()
        self.on_move: Callable[[], None] = lambda: None

    def advance(self, events: list[Event]) -> None:
        """``on_events`` of the log's ``follow``: called in the loop, never waits."""
        if events and events[-1].seq > self.seq:
            self.seq = events[-1].seq
            self._wake()

    async def reset(self, state: LogState) -> None:
        """``on_reset``: history was lost; hooks start over in the new epoch."""
        if state.epoch != self.epoch or state.seq != self.seq:
            self.epoch, self.seq = state.epoch, state.seq
            self._wake()

    def _wake(self) -> None:
        self._moved.set()
        self._moved = asyncio.Event()
        self.on_move()

    async def wait_past(self, epoch: str, seq: int) -> None:
        while self.epoch == epoch and self.seq <= seq:
            await self._moved.wait()


class HookRunner:
    """Delivers one hook's events, forever (until cancelled)."""

    def __init__(
        self,
        hook: HookConfig,
        state: HookState,
        *,
        source: HookSource,
        store: HookStore,
        tail: Tail,
        metrics: Metrics | None = None,
        clock: Clock = time.time,
        jitter: Callable[[], float] = random.random,
        window: int | None = None,
    ) -> None:
        self.hook = hook
        self.state = state
        # The replay buffer's size (backend.buffer_size): a hook whose next event is older
        # than the newest ``window`` events fell behind it, whatever the backend still
        # holds (a Redis stream is trimmed approximately and may keep a few more).
        self.window = window
        self.source = source
        self.store = store
        self.tail = tail
        self.metrics = metrics
        self.clock = clock
        self.jitter = jitter
        self._dirty = False  # the cursor moved past non-matching events, not yet saved

    @property
    def lag(self) -> int:
        if self.state.epoch != self.tail.epoch:
            return self.tail.seq
        return max(0, self.tail.seq - self.state.cursor)

    async def run(self) -> None:
        hook = self.hook
        logger.info(
            "webhook %s: delivering to %s after seq %d", hook.name, hook.origin, self.state.cursor
        )
        async with new_client(hook) as client:
            while True:
                if self.state.epoch != self.tail.epoch:
                    await self._new_epoch()
                events = await self._read()
                if not events:
                    await self._save_if_dirty()
                    self._observe_lag()
                    await self.tail.wait_past(self.state.epoch, self.state.cursor)
                    continue
                oldest = self._oldest_kept(events[0].seq)
                if oldest > self.state.cursor + 1 and events[0].epoch == self.state.epoch:
                    await self._compacted(client, oldest)
                    self._past_the_unknown(oldest)
                    continue  # back to the log, from the new cursor
                for event in events:
                    if event.epoch != self.state.epoch:
                        break  # the log started a new epoch: the next round resets
                    data = hook_view(event, hook)
                    if data is None:
                        self.state.cursor = event.seq
                        self._dirty = True
                    else:
                        await self._deliver(client, event, data)
                await self._save_if_dirty()
                self._observe_lag()

    async def _compacted(self, client: httpx.AsyncClient, oldest: int) -> None:
        """The log no longer holds the events after the cursor (the hook fell behind its
        window): send, per story changed since, its latest event as logged, with
        ``"compacted": true``, in seq order (SPEC §10, as a catch-up in §9). Each moves the
        cursor; the events skipped in between were each followed by a later one of the
        same story, sent here or, when appended meanwhile, from the log afterwards."""
        hook, state = self.hook, self.state
        logger.warning(
            "webhook %s: events %d to %d are no longer in the log; sending each story "
            "changed since %d its latest event instead (compacted)",
            hook.name,
            state.cursor + 1,
            oldest - 1,
            state.cursor,
        )
        while True:
            page = await self._read(latest=True)
            for event in page:
                if event.epoch != state.epoch or event.seq <= state.cursor:
                    return  # a new epoch (the next round resets), or nothing new
                data = hook_view(event, hook)
                if data is None:
                    state.cursor = event.seq
                    self._dirty = True
                else:
                    await self._deliver(client, event, {**data, "compacted": True})
            await self._save_if_dirty()
            self._observe_lag()
            if len(page) < READ_BATCH:
                return

    def _oldest_kept(self, first_read: int) -> int:
        """The oldest seq of the replay buffer: the first event the log gave, or the first
        of the newest ``window`` events, whichever is newer."""
        if self.window is None or self.tail.epoch != self.state.epoch:
            return first_read
        return max(first_read, self.tail.seq - self.window + 1)

    def _past_the_unknown(self, oldest: int) -> None:
        """After a compacted delivery the cursor is at the latest seq it saw, at or past
        ``oldest``, unless the log kept no latest event for the stories before that (a
        Redis stream or state file from a storywatch without them): then the hook goes on
        from the oldest event the log holds, rather than asking again and again."""
        state = self.state
        if state.epoch == self.tail.epoch and state.cursor < oldest - 1:
            logger.warning(
                "webhook %s: the log kept no latest event of the stories changed between "
                "%d and %d; going on from %d",
                self.hook.name,
                state.cursor + 1,
                oldest - 1,
                oldest,
            )
            state.cursor = oldest - 1
            self._dirty = True

    # -- one event ----------------------------------------------------------------------

    async def _deliver(self, client: httpx.AsyncClient, event: Event, data: Json) -> None:
        hook, state = self.hook, self.state
        born = retry.event_time(event.data.get("time"))
        msg_id = signing.message_id(event.epoch, event.seq)
        body = request_body(hook, event, data)
        if retry.too_old(born, hook.max_age_s, self.clock()):
            message = f"older than max_age_s ({hook.max_age_s:g} s) when its turn came"
            await self._dead(event, data, 0, self._error(message))
            return
        attempts = 0
        loop = asyncio.get_running_loop()
        while True:
            attempt = await post(client, hook, msg_id, body, self.clock)
            attempts += 1
            ended = loop.time()
            now = self.clock()
            verdict = retry.decide(
                attempt,
                attempts=attempts,
                max_attempts=hook.max_attempts,
                born=born,
                max_age_s=hook.max_age_s,
                now=now,
                jitter=self.jitter(),
            )
            if verdict.action == "delivered":
                if state.last_error is not None:
                    logger.info("webhook %s: delivering again", hook.name)
                state.cursor = event.seq
                state.delivered += 1
                state.last_error = state.next_attempt = None
                self._count("delivered")
                await self._save()
                return
            state.failed += 1
            self._count("failed")
            error = self._error(verdict.message or attempt.message, now)
            if verdict.action == "dead":
                await self._dead(event, data, attempts, error)
                return
            state.last_error = error
            state.next_attempt = _iso(now + verdict.delay_s)
            logger.info(
                "webhook %s: event %d attempt %d failed (%s); next in %.1f s",
                hook.name,
                event.seq,
                attempts,
                attempt.message,
                verdict.delay_s,
            )
            await self._save()
            # The wait counts from the end of the attempt, not from the save.
            await asyncio.sleep(max(0.0, ended + verdict.delay_s - loop.time()))

    async def _dead(self, event: Event, data: Json, attempts: int, error: Json) -> None:
        state = self.state
        state.cursor = event.seq
        state.dead_letters += 1
        state.last_error = error
        state.next_attempt = None
        letter = dead_letter(event.seq, str(data["type"]), event.story_id, attempts, error)
        self._count("dead_lettered")
        logger.warning(
            "webhook %s: event %d dead-lettered after %d attempts: %s",
            self.hook.name,
            event.seq,
            attempts,
            error["message"],
        )
        await self._save(letter)

    # -- state ----------------------------------------------------------------------------

    async def _new_epoch(self) -> None:
        logger.warning(
            "webhook %s: the log started epoch %s; delivering it from its start",
            self.hook.name,
            self.tail.epoch,
        )
        self.state.epoch, self.state.cursor = self.tail.epoch, 0
        self.state.next_attempt = None
        await self._save()

    async def _read(self, *, latest: bool = False) -> list[Event]:
        """The next events after the cursor; ``latest``: each story's latest one."""
        read = self.source.latest_events_after if latest else self.source.read_after
        delay = STORE_RETRY_S[0]
        while True:
            try:
                return await read(self.state.cursor, READ_BATCH)
            except BackendError as exc:
                logger.warning("webhook %s: cannot read the log (%s)", self.hook.name, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, STORE_RETRY_S[1])

    async def _save(self, dead: Json | None = None) -> None:
        """Persist the state; wait (this hook only) while the store is unreachable, so a
        cursor never moves on past a dead letter that was not kept."""
        delay = STORE_RETRY_S[0]
        while True:
            try:
                await self.store.save(self.hook.name, self.state, dead)
                self._dirty = False
                return
            except BackendError as exc:
                logger.warning("webhook %s: cannot save its state (%s)", self.hook.name, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, STORE_RETRY_S[1])

    async def _save_if_dirty(self) -> None:
        if self._dirty:
            await self._save()

    def _error(self, message: str, now: float | None = None) -> Json:
        return {"time": _iso(self.clock() if now is None else now), "message": message}

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.webhook_deliveries.labels(self.hook.name, outcome).inc()

    def _observe_lag(self) -> None:
        if self.metrics is not None:
            self.metrics.webhook_lag.labels(self.hook.name).set(self.lag)


# -- HTTP ---------------------------------------------------------------------------------


def new_client(hook: HookConfig) -> httpx.AsyncClient:
    """A client of the hook's own: one connection, kept alive, no redirects."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(hook.timeout_s),
        follow_redirects=False,
        cookies=_no_cookies(),  # a receiver's Set-Cookie is not sent back on later deliveries
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        headers={"user-agent": "storywatch-webhooks"},
    )


def _no_cookies() -> http.cookiejar.CookieJar:
    return http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))


async def post(
    client: httpx.AsyncClient, hook: HookConfig, msg_id: str, body: bytes, clock: Clock
) -> retry.Attempt:
    """One attempt: fresh timestamp and signature; the answer's status within
    ``timeout_s``, or why there was none (never naming the URL's path)."""
    headers = signing.headers(msg_id, int(clock()), body, hook.secret)
    try:
        request = client.build_request("POST", hook.url, content=body, headers=headers)
        async with asyncio.timeout(hook.timeout_s):
            response = await client.send(request, stream=True)
    except (TimeoutError, httpx.TimeoutException):
        return retry.Attempt(None, f"no answer within {hook.timeout_s:g} s ({hook.origin})")
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
        return retry.Attempt(None, describe_error(exc, hook))
    try:
        with contextlib.suppress(TimeoutError, httpx.HTTPError):
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                await _drain(response)
    finally:
        await response.aclose()
    return retry.Attempt(response.status_code, retry_after=response.headers.get("retry-after"))


async def _drain(response: httpx.Response) -> None:
    """Read (and drop) a small answer, so the connection can be reused."""
    read = 0
    async for chunk in response.aiter_raw():
        read += len(chunk)
        if read > MAX_ANSWER_BYTES:
            return


def describe_error(exc: BaseException, hook: HookConfig) -> str:
    """A failure in words, with the URL's scheme, host and port at most."""
    kinds: dict[type[BaseException], str] = {
        httpx.ConnectError: "cannot connect",
        httpx.RemoteProtocolError: "bad answer",
        httpx.ReadError: "connection lost",
        httpx.WriteError: "connection lost",
    }
    kind = kinds.get(type(exc), type(exc).__name__)
    detail = str(exc)
    parts = urlsplit(hook.url)
    for secret_part in (hook.url, parts.path + ("?" + parts.query if parts.query else "")):
        if len(secret_part) > 1:
            detail = detail.replace(secret_part, "…")
    if parts.query:
        detail = detail.replace(parts.query, "…")
    return f"{kind}: {detail} ({hook.origin})" if detail else f"{kind} ({hook.origin})"


async def send_test(hook: HookConfig, clock: Clock = time.time) -> tuple[int | None, str | None]:
    """``POST /api/hooks/{name}/test``: one ``storywatch.test`` delivery, no retry, counted
    nowhere. The receiver's status, or None and why there was none."""
    body = probe_body(hook.name, utc_now_iso(), hook.format)
    async with new_client(hook) as client:
        attempt = await post(client, hook, signing.probe_message_id(), body, clock)
    return attempt.status, attempt.error


def _iso(unix: float) -> str:
    return utc_now_iso(dt.datetime.fromtimestamp(unix, dt.UTC))
