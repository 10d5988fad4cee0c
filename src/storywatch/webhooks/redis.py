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
from collections.abc import Sequence

from redis.exceptions import RedisError

from storywatch.config import BackendSettings
from storywatch.errors import BackendError
from storywatch.events import Json
from storywatch.log.redis import connect
from storywatch.webhooks.store import DEAD_LETTERS_KEPT, HookState


class RedisStore:
    kind = "redis"

    def __init__(self, settings: BackendSettings) -> None:
        self.prefix = f"{{{settings.stream}}}:hooks:"
        self.redis = connect(settings.redis_url)

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
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.set(key, _dumps(state.to_json()))
                if dead is not None:
                    pipe.rpush(key + ":dead", _dumps(dead))
                    pipe.ltrim(key + ":dead", -DEAD_LETTERS_KEPT, -1)
                await pipe.execute()
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
