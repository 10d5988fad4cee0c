"""The hooks' store on Redis (imported only for ``backend.kind: redis``).

Keys, under the stream's hash tag so a cluster keeps them on the stream's slot::

    {NAME}:hooks:<hook>       string  the hook's state (JSON: epoch, cursor, counters, …)
    {NAME}:hooks:<hook>:dead  list    its dead letters (JSON), oldest first, the newest kept

Only the elected watcher delivers and writes; every node reads, so every node's
``/api/hooks`` agrees. A hook name never contains ``:``, so the two keys cannot collide.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from typing import Final

from redis.exceptions import RedisError, ResponseError

from storywatch.config import BackendSettings
from storywatch.errors import BackendError, NotLeaderError
from storywatch.events import Json
from storywatch.log.redis import connect
from storywatch.webhooks.store import DEAD_LETTERS_KEPT, HookState

# A hook's state is written only by the holder of the watcher lock (the one deliverer):
# a process that lost the lock while it was stalled cannot move a cursor or a counter.
_SAVE: Final = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[1] then
  return redis.error_reply('NOTLEADER the watcher lock is held by another process')
end
redis.call('SET', KEYS[1], ARGV[2])
if ARGV[3] ~= '' then
  redis.call('RPUSH', KEYS[2], ARGV[3])
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[4]), -1)
end
return 1
"""


class RedisStore:
    kind = "redis"

    def __init__(self, settings: BackendSettings, fence: Callable[[], str] | None = None) -> None:
        self.prefix = f"{{{settings.stream}}}:hooks:"
        self.lock_key = f"{{{settings.stream}}}:lock"
        self.redis = connect(settings.redis_url)
        # The watcher lock's token this process holds ("" = unfenced: no lock in play).
        self.fence = fence or (lambda: "")
        self._save = self.redis.register_script(_SAVE)

    def _state_key(self, name: str) -> str:
        return self.prefix + name

    async def open(self) -> None:
        return None  # connects on first use; an unreachable Redis is retried per call

    async def load(self, names: Sequence[str]) -> dict[str, HookState]:
        if not names:
            return {}
        try:
            values = await self.redis.mget([self._state_key(name) for name in names])
        except RedisError as exc:
            raise BackendError(f"redis: {exc}") from exc
        out = {}
        for name, text in zip(names, values, strict=True):
            state = HookState.from_json(json.loads(text)) if text else None
            if state is not None:
                out[name] = state
        return out

    async def save(self, name: str, state: HookState, dead: Json | None = None) -> None:
        key = self._state_key(name)
        args: list[str | int] = [
            self.fence(),
            _dumps(state.to_json()),
            "" if dead is None else _dumps(dead),
            DEAD_LETTERS_KEPT,
        ]
        try:
            await self._save(keys=[key, key + ":dead", self.lock_key], args=args)
        except ResponseError as exc:
            if "NOTLEADER" in str(exc):
                raise NotLeaderError(f"webhook {name}: not the deliverer any more") from exc
            raise BackendError(f"redis: {exc}") from exc
        except RedisError as exc:
            raise BackendError(f"redis: {exc}") from exc

    async def dead_letters(self, name: str) -> list[Json]:
        try:
            texts = await self.redis.lrange(self._state_key(name) + ":dead", 0, -1)
        except RedisError as exc:
            raise BackendError(f"redis: {exc}") from exc
        return [letter for text in texts if isinstance(letter := json.loads(text), dict)]

    async def close(self) -> None:
        with contextlib.suppress(RedisError):
            await self.redis.aclose()


def _dumps(value: Json) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
