"""The Redis Streams backend: one stream shared by many servers, one elected watcher.

Keys (one hash tag, so a cluster keeps them on one slot), for ``stream: NAME``:

    {NAME}:meta        hash   epoch, seq, index_gen, horizon
    {NAME}:events      stream entry id "<seq>-0"; fields d (draft JSON), s (source), t, e (epoch)
    {NAME}:index       hash   path → index record JSON (the last good state of every story)
    {NAME}:lock        string the watcher lock (token, TTL); appends by a watcher are fenced by it
    {NAME}:positions   hash   story id → its catch-up position (SPEC §9), ``Position.encode``
    {NAME}:tombstones  zset   story id of each tombstone, scored by its deletion time
    {NAME}:last_seq    zset   story id, scored by the seq of its last event   (webhooks,
    {NAME}:last_event  hash   story id → that event as logged (``_last_event``) SPEC §10)

Positions are written by the append script, in the same atomic step as the events; it also
drops the tombstones older than ``keep_days`` (found through ``tombstones``) and raises
``meta.horizon``. So are ``last_seq`` and ``last_event`` (a dropped tombstone takes its
story's entries with it): a webhook behind the stream's window gets each changed story's
latest event from them (:meth:`RedisLog.latest_events_after`). A stream written before
positions existed has no ``horizon``: it counts as its seq at the time (nothing older can be
caught up) until the next append writes it.

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
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError, ResponseError

from storywatch.catchup import DAY_S, DEFAULT_KEEP_DAYS, Position, event_epics, event_time
from storywatch.config import BackendSettings
from storywatch.errors import BackendError, NotLeaderError, RefusedError
from storywatch.eventlog import IndexRecords, LogState, OnEvents, OnReset, check_utf8, new_epoch
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
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0, 'index_gen', 0, 'horizon', 0)
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
while i < #ARGV - 1 do  -- the last argument is the positions payload
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[3], ARGV[i])
  else
    redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  end
  i = i + 2
end
-- catch-up positions (SPEC §9). The payload: {"c": tombstone cutoff, "p": per draft
-- [story id, [epics of the event], deletion time or ""]}.
local pos = cjson.decode(ARGV[#ARGV])
local horizon = tonumber(redis.call('HGET', KEYS[1], 'horizon') or (first - 1))
horizon = expire_tombstones(KEYS[5], KEYS[6], pos.c, horizon, KEYS[7], KEYS[8])
for k = 1, n do
  local p = pos.p[k]
  local id = p[1]
  local epics, seen = {}, {}
  local cur = redis.call('HGET', KEYS[5], id)
  if cur then
    for _, e in ipairs(cjson.decode(cur).e) do
      if not seen[e] then seen[e] = true; epics[#epics + 1] = cjson.encode(e) end
    end
  end
  for _, e in ipairs(p[2]) do
    if not seen[e] then seen[e] = true; epics[#epics + 1] = cjson.encode(e) end
  end
  local value = '{"s":' .. string.format('%d', first + k - 1) .. ',"e":['
    .. table.concat(epics, ',') .. ']'
  if p[3] ~= '' then
    value = value .. ',"d":' .. p[3]
    redis.call('ZADD', KEYS[6], p[3], id)
  else
    redis.call('ZREM', KEYS[6], id)
  end
  redis.call('HSET', KEYS[5], id, value .. '}')
  -- webhooks (SPEC §10): the story's last event as logged, ordered by its seq.
  local last = string.format('%d', first + k - 1)
  redis.call('ZADD', KEYS[7], last, id)
  redis.call('HSET', KEYS[8], id, '{"q":' .. last .. ',"e":' .. cjson.encode(epoch)
    .. ',"t":' .. cjson.encode(ARGV[3]) .. ',"s":' .. ARGV[6] .. ',"d":' .. ARGV[7 + k] .. '}')
end
redis.call('HSET', KEYS[1], 'horizon', string.format('%d', horizon))
return {epoch, first, seq}
"""

_ENSURE_EPOCH: Final = """
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'seq', 0, 'index_gen', 0, 'horizon', 0)
  return 1
end
return 0
"""

# -- catch-up (SPEC §9) --------------------------------------------------------------------
# Drop tombstones deleted at or before ``cutoff`` (at most EXPIRE_BATCH per call, so one call
# never blocks Redis for long; the rest go on the next); the horizon after.
EXPIRE_BATCH: Final = 10_000
_EXPIRE_FUNCTION: Final = f"""
local function expire_tombstones(positions, tombstones, cutoff, horizon, last_seq, last_event)
  local ids = redis.call('ZRANGEBYSCORE', tombstones, '-inf', cutoff, 'LIMIT', 0, {EXPIRE_BATCH})
  for _, id in ipairs(ids) do
    local cur = redis.call('HGET', positions, id)
    if cur then
      local s = cjson.decode(cur).s
      if s > horizon then horizon = s end
      redis.call('HDEL', positions, id)
    end
    redis.call('ZREM', tombstones, id)
    redis.call('ZREM', last_seq, id)  -- webhooks (SPEC §10)
    redis.call('HDEL', last_event, id)
  end
  return horizon
end
"""
_APPEND_WITH_POSITIONS: Final = _EXPIRE_FUNCTION + _APPEND
_EXPIRE: Final = (
    _EXPIRE_FUNCTION
    + """
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or 0)
local horizon = tonumber(redis.call('HGET', KEYS[1], 'horizon') or seq)
horizon = expire_tombstones(KEYS[2], KEYS[3], ARGV[1], horizon, KEYS[4], KEYS[5])
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'horizon', string.format('%d', horizon))
end
return horizon
"""
)

# -- webhooks (SPEC §10): up to ARGV[2] last events with seq > ARGV[1], by seq.
_LATEST_AFTER: Final = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf', 'LIMIT', 0, ARGV[2])
if #ids == 0 then return {} end
return redis.call('HMGET', KEYS[2], unpack(ids))
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

    def __init__(
        self,
        settings: BackendSettings,
        *,
        keep_days: float = DEFAULT_KEEP_DAYS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        name = settings.stream
        self.keys = {
            "meta": f"{{{name}}}:meta",
            "events": f"{{{name}}}:events",
            "index": f"{{{name}}}:index",
            "lock": f"{{{name}}}:lock",
            "positions": f"{{{name}}}:positions",  # SPEC §9
            "tombstones": f"{{{name}}}:tombstones",
            "last_seq": f"{{{name}}}:last_seq",  # SPEC §10
            "last_event": f"{{{name}}}:last_event",
        }
        self.keep_days = keep_days
        self.clock = clock
        self.redis = connect(settings.redis_url)
        # Blocking reads get their own connection, with a timeout longer than the block.
        self.reader = connect(settings.redis_url, socket_timeout=BLOCK_MS / 1000 + 5)
        self._append = self.redis.register_script(_APPEND_WITH_POSITIONS)
        self._expire = self.redis.register_script(_EXPIRE)
        self._latest = self.redis.register_script(_LATEST_AFTER)
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

    async def load(self, count: int, *, positions: bool = True) -> LogState:
        """Meta, the last ``count`` events, the index and (unless not asked for) the
        catch-up positions, read in one transaction."""
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(self.keys["meta"])
                pipe.xrevrange(self.keys["events"], "+", "-", count=max(1, count))
                pipe.hgetall(self.keys["index"])
                if positions:
                    pipe.hgetall(self.keys["positions"])
                meta, entries, index, *stored = await pipe.execute()
        except RedisError as exc:
            raise self._failed(exc) from exc
        self._ok()
        entries = entries if count > 0 else []
        self.epoch = meta.get("epoch", "")
        self.index_gen = meta.get("index_gen", "0")
        recent = [_event(entry_id, fields) for entry_id, fields in reversed(entries)]
        recent = [e for e in recent if e.epoch == self.epoch]
        seq = int(meta.get("seq", 0))
        return LogState(
            epoch=self.epoch,
            seq=seq,
            recent=recent,
            index={path: json.loads(record) for path, record in index.items()},
            fresh=False,
            positions=_positions(stored[0] if stored else {}),
            horizon=int(meta.get("horizon", seq)),
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
        args.append(self._positions_arg(drafts, time))  # SPEC §9: the last argument
        keys = [self.keys["meta"], self.keys["events"], self.keys["index"], self.keys["lock"]]
        keys += [self.keys["positions"], self.keys["tombstones"]]
        keys += [self.keys["last_seq"], self.keys["last_event"]]  # SPEC §10
        check_utf8(args)
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

    # -- catch-up positions (SPEC §9) ----------------------------------------------------

    def _cutoff(self) -> str:
        return repr(self.clock() - self.keep_days * DAY_S)

    def _positions_arg(self, drafts: Sequence[Draft], time: str) -> str:
        deleted_at = f"{event_time(time):.3f}"
        items = []
        for draft in drafts:
            epics = list(event_epics(draft.to_json()))
            items.append(
                [draft.story_id, epics, deleted_at if draft.type == "story.deleted" else ""]
            )
        return json.dumps({"c": self._cutoff(), "p": items}, ensure_ascii=False)

    async def expire_tombstones(self) -> int:
        """Drop the tombstones that expired by now; the horizon after. Safe from any node:
        it only removes what has expired, atomically."""
        keys = [self.keys["meta"], self.keys["positions"], self.keys["tombstones"]]
        keys += [self.keys["last_seq"], self.keys["last_event"]]  # SPEC §10
        try:
            horizon = await self._expire(keys=keys, args=[self._cutoff()])
        except RedisError as exc:
            raise self._failed(exc) from exc
        self._ok()
        return int(horizon)

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
        # Each follower knows its own position: several follow one log (hub, webhooks).
        known_epoch, known_gen = self.epoch, self.index_gen
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
            if epoch != known_epoch:
                logger.warning("stream epoch changed to %s: history was lost", epoch)
                state = await self.load(self.settings.buffer_size)
                known_epoch, known_gen = state.epoch, self.index_gen
                await on_reset(state)
                last_id = f"{state.seq}-0"
                continue
            if index_gen != known_gen:
                logger.info("the shared index was reseeded by the watcher")
                state = await self.load(0, positions=False)
                known_gen = self.index_gen
                await on_reset(state)
                # Not skipped: the events read above still go out, in order.
            events = [e for e in _stream_events(answer) if e.epoch == known_epoch]
            if events:
                last_id = f"{events[-1].seq}-0"
                on_events(events)

    async def read_after(self, after_seq: int, limit: int) -> list[Event]:
        try:
            entries: Any = await self.redis.xrange(
                self.keys["events"], min=f"{after_seq + 1}-0", max="+", count=limit
            )
        except RedisError as exc:
            raise self._failed(exc) from exc
        events = [_event(entry_id, fields) for entry_id, fields in entries]
        return [event for event in events if event.epoch == self.epoch]

    # -- each story's last event (webhooks, SPEC §10) ------------------------------------

    async def latest_events_after(self, after_seq: int, limit: int) -> list[Event]:
        """Each story's last event with seq > ``after_seq``, oldest first: one script reads
        the ids by seq and their events at once, so the two always agree."""
        keys = [self.keys["last_seq"], self.keys["last_event"]]
        try:
            texts: Any = await self._latest(keys=keys, args=[after_seq, limit])
        except RedisError as exc:
            raise self._failed(exc) from exc
        self._ok()
        events = [_last_event(text) for text in texts if text]
        return [e for e in events if e.epoch == self.epoch and e.seq > after_seq]

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


def _positions(stored: dict[str, str]) -> dict[str, Position]:
    out: dict[str, Position] = {}
    for story_id, text in stored.items():
        try:
            out[story_id] = Position.decode(text)
        except ValueError:
            logger.warning("ignoring a malformed catch-up position for story %r", story_id)
    return dict(sorted(out.items(), key=lambda item: item[1].seq))


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
    return _assembled(
        seq, fields["e"], fields["t"], json.loads(fields["d"]), json.loads(fields["s"])
    )


def _last_event(text: str) -> Event:
    """A story's last event as ``last_event`` keeps it: ``{"q", "e", "t", "s", "d"}``, the
    fields of its stream entry with the draft and source as JSON, not as strings."""
    value = json.loads(text)
    return _assembled(int(value["q"]), value["e"], value["t"], value["d"], value["s"])


def _assembled(seq: int, epoch: str, time: str, draft: Json, source: Json) -> Event:
    commit = draft.pop("_commit", None)
    data = {
        "type": draft.pop("type"),
        "seq": seq,
        "epoch": epoch,
        "time": time,
        **draft,
        "source": source if commit is None else with_commit(source, commit),
    }
    return Event(seq=seq, epoch=epoch, data=data)
