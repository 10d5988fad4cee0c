"""``/api/hooks`` (scope admin; SPEC §10): the hooks' state, dead letters, test deliveries.

Answers come from the hooks' store, so every node of a Redis deployment agrees with the
one that delivers. Nothing here shows a URL beyond scheme, host and port, or a secret.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from urllib.parse import unquote

from storywatch.events import Json
from storywatch.http import HttpReply, error_reply, json_reply
from storywatch.webhooks.config import HookConfig
from storywatch.webhooks.store import HookState, HookStore

PREFIX = "/api/hooks"


def is_hooks_route(route: str) -> bool:
    return route == PREFIX or route.startswith(PREFIX + "/")


class HooksApi:
    def __init__(
        self,
        hooks: Sequence[HookConfig],
        store: HookStore,
        *,
        latest: Callable[[], int],
        epoch: Callable[[], str],
    ) -> None:
        self.hooks = {hook.name: hook for hook in hooks}
        self.store = store
        self.latest = latest
        self.epoch = epoch

    async def handle(self, method: str, route: str) -> HttpReply:
        """``route`` is the request's path without its query."""
        parts = [unquote(p) for p in route.removeprefix(PREFIX).strip("/").split("/") if p]
        if not parts:
            return await self.status() if method == "GET" else method_not_allowed("GET")
        if len(parts) != 2 or parts[1] not in ("dead", "test"):
            return error_reply(404, "not_found", "no such endpoint")
        name, action = parts
        hook = self.hooks.get(name)
        if hook is None:
            return error_reply(404, "not_found", "no such webhook")
        if action == "dead":
            if method != "GET":
                return method_not_allowed("GET")
            return json_reply(200, {"dead": await self.store.dead_letters(name)})
        if method != "POST":
            return method_not_allowed("POST")
        return await self.test(hook)

    async def status(self) -> HttpReply:
        states = await self.store.load(list(self.hooks))
        latest, epoch = self.latest(), self.epoch()
        hooks = [self.describe(name, states.get(name), latest, epoch) for name in self.hooks]
        return json_reply(200, {"hooks": hooks})

    @staticmethod
    def describe(name: str, state: HookState | None, latest: int, epoch: str) -> Json:
        if state is None:  # configured, not started yet: it will start at the latest seq
            state = HookState(epoch=epoch, cursor=latest)
        same_epoch = state.epoch == epoch
        cursor = state.cursor if same_epoch else 0
        return {
            "name": name,
            "cursor": cursor,
            "lag": max(0, latest - cursor),
            "delivered": state.delivered,
            "failed": state.failed,
            "dead_letters": state.dead_letters,
            "last_error": state.last_error,
            "next_attempt": state.next_attempt,
        }

    async def test(self, hook: HookConfig) -> HttpReply:
        from storywatch.webhooks.sender import send_test  # the one module that speaks HTTP

        status, error = await send_test(hook)
        return json_reply(200, {"status": status, "error": error})


def method_not_allowed(allowed: str) -> HttpReply:
    """405 with ``Allow`` (the server's other /api routes answer it too: they are GET)."""
    reply = error_reply(405, "method_not_allowed", f"use {allowed}")
    reply.headers["Allow"] = allowed
    return reply
