"""storywatch.webhooks.api: the shapes of ``/api/hooks`` (SPEC §10)."""

from __future__ import annotations

import json
from typing import Any

from storywatch.webhooks.api import HooksApi, is_hooks_route
from storywatch.webhooks.config import HookConfig, origin_of
from storywatch.webhooks.store import HookState, MemoryStore, dead_letter
from tests.receiver import Answer, Receiver, closed_port

URL = "http://127.0.0.1:9/very/secret/path"


def make_hook(name: str, url: str = URL) -> HookConfig:
    return HookConfig(name=name, url=url, origin=origin_of(url))


def make_api(
    *hooks: HookConfig, latest: int = 50, epoch: str = "ep"
) -> tuple[HooksApi, MemoryStore]:
    store = MemoryStore()
    return HooksApi(hooks, store, latest=lambda: latest, epoch=lambda: epoch), store


async def call(api: HooksApi, method: str, route: str) -> tuple[int, Any, dict[str, str]]:
    reply = await api.handle(method, route)
    return reply.status, json.loads(reply.body), reply.headers


async def test_status_shape() -> None:
    api, store = make_api(make_hook("a"), make_hook("b"), make_hook("c"))
    error = {"time": "2026-12-04T10:00:00.000Z", "message": "HTTP 500"}
    await store.save(
        "a",
        HookState(
            "ep",
            42,
            delivered=40,
            failed=3,
            dead_letters=1,
            last_error=error,
            next_attempt="2026-12-04T10:00:01.000Z",
        ),
    )
    await store.save("c", HookState("old-epoch", 900, delivered=7))
    status, body, _ = await call(api, "GET", "/api/hooks")
    assert status == 200
    assert body == {
        "hooks": [
            {
                "name": "a",
                "cursor": 42,
                "lag": 8,
                "delivered": 40,
                "failed": 3,
                "dead_letters": 1,
                "last_error": error,
                "next_attempt": "2026-12-04T10:00:01.000Z",
            },
            # Not started yet: it will start at the latest seq.
            {
                "name": "b",
                "cursor": 50,
                "lag": 0,
                "delivered": 0,
                "failed": 0,
                "dead_letters": 0,
                "last_error": None,
                "next_attempt": None,
            },
            # Its cursor is of a lost epoch: the whole new epoch is ahead of it.
            {
                "name": "c",
                "cursor": 0,
                "lag": 50,
                "delivered": 7,
                "failed": 0,
                "dead_letters": 0,
                "last_error": None,
                "next_attempt": None,
            },
        ]
    }
    assert "secret" not in json.dumps(body)


async def test_dead_letters_and_unknown_hooks() -> None:
    api, store = make_api(make_hook("a"))
    entry = dead_letter(3, "story.updated", "S-3", 10, {"time": "T", "message": "HTTP 500"})
    await store.save("a", HookState("ep", 3, dead_letters=1), entry)
    assert await call(api, "GET", "/api/hooks/a/dead") == (200, {"dead": [entry]}, {})
    status, body, _ = await call(api, "GET", "/api/hooks/nope/dead")
    assert (status, body["error"]["code"]) == (404, "not_found")
    status, _, _ = await call(api, "POST", "/api/hooks/nope/test")
    assert status == 404
    assert (await call(api, "GET", "/api/hooks/a/other"))[0] == 404
    assert (await call(api, "GET", "/api/hooks/a"))[0] == 404


async def test_methods() -> None:
    api, _ = make_api(make_hook("a"))
    status, _, headers = await call(api, "GET", "/api/hooks/a/test")
    assert (status, headers["Allow"]) == (405, "POST")
    status, _, headers = await call(api, "POST", "/api/hooks")
    assert (status, headers["Allow"]) == (405, "GET")
    assert (await call(api, "DELETE", "/api/hooks/a/dead"))[0] == 405


async def test_a_test_delivery_answers_with_the_receivers_status() -> None:
    receiver = await Receiver(lambda request: Answer(418)).start()
    try:
        api, store = make_api(
            make_hook("a", receiver.url()),
            make_hook("down", f"http://127.0.0.1:{closed_port()}/x/y"),
        )
        assert await call(api, "POST", "/api/hooks/a/test") == (
            200,
            {"status": 418, "error": None},
            {},
        )
        status, body, _ = await call(api, "POST", "/api/hooks/down/test")
        assert status == 200 and body["status"] is None
        assert body["error"].startswith("cannot connect") and "/x/y" not in body["error"]
        assert await store.load(["a"]) == {}  # counted nowhere
    finally:
        await receiver.close()


def test_routes() -> None:
    assert is_hooks_route("/api/hooks") and is_hooks_route("/api/hooks/a/dead")
    assert not is_hooks_route("/api/hooksx") and not is_hooks_route("/api/stories")
