"""The Redis Streams backend: one stream shared by many servers, one elected watcher.

Keys (one hash tag, so a cluster keeps them on one slot), for ``stream: NAME``:

    {NAME}:meta    hash   epoch, seq, index_gen
    {NAME}:events  stream entry id "<seq>-0"; fields d (draft JSON), s (source), t, e (epoch)
    {NAME}:index   hash   path → index record JSON (the last good state of every story)
    {NAME}:lock    string the watcher lock (token, TTL); appends by a watcher are fenced by it

Seq and epoch are assigned in one Lua script together with the index update, so every
server sees the same numbering and a watcher that lost its lock cannot write. Servers
follow the stream with a blocking XREAD from the last id they have (never ``$``) on a
connection whose socket timeout is longer than the block.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Sequence
from typing import Any, Final

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError, ResponseError

from storywatch.config import BackendSettings
from storywatch.errors import BackendError, NotLeaderError, RefusedError
from storywatch.eventlog import IndexRecords, LogState, OnEvents, OnReset, new_epoch
from storywatch.events import Draft, Event, Json, number, utc_now_iso, with_commit

logger = logging.getLogger(__name__)

LOCK_TTL_MS: Final = 10_000
BLOCK_MS: Final = 1_000
SOCKET_TIMEOUT_S: Final = 5.0
# Error replies that say Redis cannot take writes for now, not that the batch is bad.
_TRANSIENT: Final = ("OOM", "BUSY", "LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "NOSCRIPT")

_APPEND: Final = """
if ARGV[4] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[4] then
  return redis.error_reply('NOTLEADER the watcher lock is held by another process')
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[2]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0, 'index_gen', 0)
end
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq'))
local n = tonumber(ARGV[5])
local first = seq + 1
for i = 1, n do
  seq = seq + 1
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], seq .. '-0',
             'd', ARGV[7 + i], 's', ARGV[6], 't', ARGV[3], 'e', epoch)
end
redis.call('HSET', KEYS[1], 'seq', seq)
if ARGV[7] == '1' then
  redis.call('DEL', KEYS[3])
  redis.call('HINCRBY', KEYS[1], 'index_gen', 1)
end
local i = 8 + n
while i < #ARGV do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[3], ARGV[i])
  else
    redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  end
  i = i + 2
end
return {epoch, first, seq}
"""

_ENSURE_EPOCH: Final = """
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'seq', 0, 'index_gen', 0)
  return 1
end
return 0
"""

_RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def connect(url: str, *, socket_timeout: float | None = SOCKET_TIMEOUT_S) -> aioredis.Redis:
    """A client with retries (redis-py does not retry unless given a Retry)."""
    return aioredis.from_url(
        url,
        decode_responses=True,
        socket_timeout=socket_timeout,
        socket_connect_timeout=2.0,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
        health_check_interval=10,
    )


class RedisLog:
    kind = "redis"

    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings
        name = settings.stream
        self.keys = {
            "meta": f"{{{name}}}:meta",
            "events": f"{{{name}}}:events",
            "index": f"{{{name}}}:index",
            "lock": f"{{{name}}}:lock",
        }
        self.redis = connect(settings.redis_url)
        # Blocking reads get their own connection, with a timeout longer than the block.
        self.reader = connect(settings.redis_url, socket_timeout=BLOCK_MS / 1000 + 5)
        self._append = self.redis.register_script(_APPEND)
        self._ensure = self.redis.register_script(_ENSURE_EPOCH)
        self._renew = self.redis.register_script(_RENEW)
        self._release = self.redis.register_script(_RELEASE)
        self.lock_token = ""  # set while this process holds the watcher lock
        self._healthy = False
        self.epoch = ""
        self.index_gen = "0"

    @property
    def healthy(self) -> bool:
        return self._healthy

    def _ok(self) -> None:
        self._healthy = True

    def _failed(self, exc: BaseException) -> BackendError:
        if self._healthy:
            logger.warning("redis unreachable: %s", exc)
        self._healthy = False
        return BackendError(f"redis: {exc}")

    # -- EventLog -----------------------------------------------------------------------

    async def open(self) -> LogState:
        """Load epoch, seq, the replay window and the index; create the epoch if missing."""
        try:
            created = bool(await self._ensure(keys=[self.keys["meta"]], args=[new_epoch()]))
        except RedisError as exc:
            raise self._failed(exc) from exc
        state = await self.load(self.settings.buffer_size)
        state.fresh = created
        return state

    async def load(self, count: int) -> LogState:
        """Meta, the last ``count`` events and the index, read in one transaction."""
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(self.keys["meta"])
                pipe.xrevrange(self.keys["events"], "+", "-", count=max(1, count))
                pipe.hgetall(self.keys["index"])
                meta, entries, index = await pipe.execute()
        except RedisError as exc:
            raise self._failed(exc) from exc
        self._ok()
        entries = entries if count > 0 else []
        self.epoch = meta.get("epoch", "")
        self.index_gen = meta.get("index_gen", "0")
        recent = [_event(entry_id, fields) for entry_id, fields in reversed(entries)]
        recent = [e for e in recent if e.epoch == self.epoch]
        return LogState(
            epoch=self.epoch,
            seq=int(meta.get("seq", 0)),
            recent=recent,
            index={path: json.loads(record) for path, record in index.items()},
            fresh=False,
        )

    async def append(
        self,
        drafts: Sequence[Draft],
        source: Json,
        index: IndexRecords | None = None,
        *,
        reseed: bool = False,
    ) -> list[Event]:
        time = utc_now_iso()
        args: list[Any] = [
            self.settings.buffer_size,
            new_epoch(),
            time,
            self.lock_token,
            len(drafts),
            json.dumps(source, separators=(",", ":")),
            "1" if reseed else "0",
        ]
        args += [json.dumps(_stored(d), ensure_ascii=False, separators=(",", ":")) for d in drafts]
        for path, record in (index or {}).items():
            args += [path, "" if record is None else json.dumps(record, ensure_ascii=False)]
        keys = [self.keys["meta"], self.keys["events"], self.keys["index"], self.keys["lock"]]
        _check_encodable(args)
        try:
            epoch, first, _last = await self._append(keys=keys, args=args)
        except ResponseError as exc:
            if "NOTLEADER" in str(exc):
                self.lock_token = ""
                raise NotLeaderError(str(exc)) from exc
            if not str(exc).startswith(_TRANSIENT):
                raise RefusedError(f"redis refused a batch: {exc}") from exc
            raise self._failed(exc) from exc
        except RedisError as exc:
            raise self._failed(exc) from exc
        self._ok()
        return [number(d, int(first) + i, epoch, time, source) for i, d in enumerate(drafts)]

    async def close(self) -> None:
        if self.lock_token:
            await self.release_lock()
        for client in (self.redis, self.reader):
            with contextlib.suppress(RedisError):
                await client.aclose()

    # -- following the stream -----------------------------------------------------------

    async def follow(self, after_seq: int, on_events: OnEvents, on_reset: OnReset) -> None:
        """Deliver every new event in order, forever. ``on_reset`` when history was lost
        (a new epoch: the state and its recent events), or when the watcher reseeded the
        shared index (the same epoch: the new index, no events — the stream goes on)."""
        last_id = f"{after_seq}-0"
        delay = 0.05
        while True:
            try:
                answer = await self.reader.xread(
                    {self.keys["events"]: last_id}, block=BLOCK_MS, count=200
                )
                meta = await self.redis.hmget(self.keys["meta"], ["epoch", "index_gen"])
                self._ok()
                delay = 0.05
            except RedisError as exc:
                self._failed(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            epoch, index_gen = meta
            if epoch is None:  # Redis came back empty: start a new epoch
                await self._ensure(keys=[self.keys["meta"]], args=[new_epoch()])
                epoch, index_gen = await self.redis.hmget(self.keys["meta"], ["epoch", "index_gen"])
            if epoch != self.epoch:
                logger.warning("stream epoch changed to %s: history was lost", epoch)
                state = await self.load(self.settings.buffer_size)
                await on_reset(state)
                last_id = f"{state.seq}-0"
                continue
            if index_gen != self.index_gen:
                logger.info("the shared index was reseeded by the watcher")
                await on_reset(await self.load(0))
                # Not skipped: the events read above still go out, in order.
            events = [e for e in _stream_events(answer) if e.epoch == self.epoch]
            if events:
                last_id = f"{events[-1].seq}-0"
                on_events(events)

    # -- the watcher lock ---------------------------------------------------------------

    async def acquire_lock(self) -> bool:
        token = self.lock_token or secrets.token_hex(8)
        try:
            got = await self.redis.set(self.keys["lock"], token, nx=True, px=LOCK_TTL_MS)
        except RedisError as exc:
            raise self._failed(exc) from exc
        if got:
            self.lock_token = token
        return bool(got)

    async def renew_lock(self) -> bool:
        if not self.lock_token:
            return False
        try:
            ok = await self._renew(keys=[self.keys["lock"]], args=[self.lock_token, LOCK_TTL_MS])
        except RedisError as exc:
            raise self._failed(exc) from exc
        if not ok:
            self.lock_token = ""
        return bool(ok)

    async def release_lock(self) -> None:
        token, self.lock_token = self.lock_token, ""
        with contextlib.suppress(RedisError):
            await self._release(keys=[self.keys["lock"]], args=[token])


def _check_encodable(args: list[Any]) -> None:
    """Refuse a batch Redis could never take as UTF-8 (a lone surrogate in a value)."""
    try:
        for arg in args:
            if isinstance(arg, str):
                arg.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RefusedError(f"the batch cannot be encoded: {exc}") from exc


def _stream_events(answer: Any) -> list[Event]:
    """Events of an XREAD answer: [[stream, [(id, fields), …]], …]."""
    events: list[Event] = []
    for _stream, entries in answer or ():
        events.extend(_event(entry_id, fields) for entry_id, fields in entries)
    return events


def _stored(draft: Draft) -> Json:
    """The draft as kept in the stream; its commit (SPEC §11) rides along as ``_commit``."""
    data = draft.to_json()
    if draft.commit is not None:
        data["_commit"] = draft.commit
    return data


def _event(entry_id: str, fields: dict[str, str]) -> Event:
    seq = int(entry_id.split("-", 1)[0])
    draft = json.loads(fields["d"])
    source = json.loads(fields["s"])
    commit = draft.pop("_commit", None)
    data = {
        "type": draft.pop("type"),
        "seq": seq,
        "epoch": fields["e"],
        "time": fields["t"],
        **draft,
        "source": source if commit is None else with_commit(source, commit),
    }
    return Event(seq=seq, epoch=fields["e"], data=data)
