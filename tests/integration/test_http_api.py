"""The HTTP API on the WebSocket port (SPEC §5): ``/api/stories`` with filters and token
scope, ``/api/stories/{id}`` with the body, the ``/api/events`` long-poll (latency, at once,
empty after ``wait``, lost cursors, scope, and a 15 s wait that outlives the 10 s handshake
timeout), and the auth answers (401 / 403)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import scaled
from tests.integration.daemon import Daemon, copy_fixtures
from tests.integration.helpers import http_get, set_status
from tests.integration.test_pressure import disk_stories

pytestmark = pytest.mark.integration

UI5 = Path("ui") / "UI-005-dark-mode.md"  # epic ui, status ready
API1 = Path("api") / "v1" / "API-001-list-stories-endpoint.md"  # epic api, status done
API2 = Path("api") / "v1" / "API-002-story-detail-endpoint.md"  # epic api, status done
INT1 = Path("integration") / "INT-001-file-system-watcher-for-story-directory.md"  # done
INT4 = Path("integration") / "INT-004-slack-notification-bridge.md"  # blocked


class LongPoll:
    """One GET in a thread: its answer and how long it took."""

    def __init__(
        self, daemon: Daemon, path: str, token: str = "tok-reader", timeout: float = 40
    ) -> None:
        self.result: tuple[int, Any] | None = None
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self.finished = 0.0
        self._thread = threading.Thread(
            target=self._run, args=(daemon, path, token, timeout), daemon=True
        )
        self._thread.start()

    def _run(self, daemon: Daemon, path: str, token: str, timeout: float) -> None:
        try:
            self.result = http_get(daemon, path, token, timeout=timeout)
        except BaseException as exc:  # reported by join()
            self.error = exc
        self.finished = time.monotonic()

    async def join(self, timeout: float) -> tuple[int, Any]:
        await asyncio.to_thread(self._thread.join, timeout)
        assert not self._thread.is_alive(), "the long-poll did not return"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    @property
    def elapsed(self) -> float:
        return self.finished - self.started


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the module; tests that edit files read the state they start from."""
    workdir = tmp_path_factory.mktemp("api")
    daemon = Daemon(copy_fixtures(workdir / "stories"), workdir).start()
    daemon.wait_healthy()
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module", autouse=True)
def idle_long_poll(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LongPoll]:
    """A long-poll with wait=15 on a daemon where nothing happens, started with the module
    so that its 15 s overlap the other tests; checked by the last test."""
    workdir = tmp_path_factory.mktemp("idle")
    daemon = Daemon(copy_fixtures(workdir / "stories"), workdir).start()
    try:
        health = daemon.wait_healthy()
        poll = LongPoll(
            daemon, f"/api/events?epoch={health['epoch']}&since={health['seq']}&wait=15"
        )
        yield poll
    finally:
        daemon.stop()


def current(daemon: Daemon) -> tuple[str, int]:
    status, body = http_get(daemon, "/api/stories")
    assert status == 200, body
    return body["epoch"], body["seq"]


def ids(stories: list[dict[str, Any]]) -> set[str]:
    return {s["id"] for s in stories}


# -- /api/stories ------------------------------------------------------------------------


def test_stories_list_with_filters_and_scope(api: Daemon) -> None:
    disk = disk_stories(api.repo)
    status, body = http_get(api, "/api/stories")
    assert status == 200, body
    assert set(body) == {"epoch", "seq", "stories"}
    health = http_get(api, "/healthz", None)[1]
    assert (body["epoch"], body["seq"]) == (health["epoch"], health["seq"])
    assert ids(body["stories"]) == set(disk)
    for story in body["stories"]:
        assert "body" not in story, story
        assert story["status"] == disk[story["id"]]["status"], story
        assert (api.repo / story["path"]).is_file(), story
    numeric = next(s for s in body["stories"] if s["id"] == "1042")
    assert numeric["path"] == "data/legacy/1042-import-legacy-jira-backlog.md"

    # Repeated keys are OR-ed, different keys AND-ed.
    status, body = http_get(api, "/api/stories?epics=api&epics=ui&statuses=done")
    assert status == 200, body
    want = {i for i, s in disk.items() if s["epic"] in ("api", "ui") and s["status"] == "done"}
    assert want and want != {i for i, s in disk.items() if s["epic"] in ("api", "ui")}
    assert ids(body["stories"]) == want
    status, body = http_get(api, "/api/stories?statuses=done&statuses=blocked")
    assert ids(body["stories"]) == {
        i for i, s in disk.items() if s["status"] in ("done", "blocked")
    }
    status, body = http_get(api, "/api/stories?labels=websocket")
    assert status == 200 and "INT-002" in ids(body["stories"]), body
    status, body = http_get(api, "/api/stories?epics=nothing-like-this")
    assert status == 200 and body["stories"] == [], body

    # An epic-scoped token sees its epics only, whatever it asks for.
    integration = {i for i, s in disk.items() if s["epic"] == "integration"}
    status, body = http_get(api, "/api/stories", "tok-integration")
    assert status == 200 and ids(body["stories"]) == integration, body
    status, body = http_get(api, "/api/stories?epics=api&epics=integration", "tok-integration")
    assert ids(body["stories"]) == integration
    status, body = http_get(api, "/api/stories?epics=api", "tok-integration")
    assert status == 200 and body["stories"] == [], body


# -- /api/stories/{id} ---------------------------------------------------------------------


def test_story_detail_with_body_and_404s(api: Daemon) -> None:
    text = (api.repo / API2).read_text()
    expected_body = text.split("\n---\n", 1)[1]
    status, story = http_get(api, "/api/stories/API-002")
    assert status == 200, story
    assert story["id"] == "API-002" and story["epic"] == "api"
    assert story["path"] == API2.as_posix()
    assert story["body"].strip() == expected_body.strip()
    assert "id: API-002" not in story["body"]  # the front-matter is not the body

    status, story = http_get(api, "/api/stories/1042")  # a numeric id, as a string
    assert status == 200 and story["id"] == "1042", story
    assert "# 1042: Import legacy Jira backlog" in story["body"]

    assert http_get(api, "/api/stories/NOPE-404")[0] == 404
    assert http_get(api, "/api/stories/api-002")[0] == 404  # ids are case-sensitive
    # Out of the token's scope: as if it did not exist.
    assert http_get(api, "/api/stories/API-002", "tok-integration")[0] == 404
    status, story = http_get(api, "/api/stories/INT-002", "tok-integration")
    assert status == 200 and story["id"] == "INT-002" and story["body"], story


def test_story_detail_body_follows_the_file(api: Daemon) -> None:
    epoch, seq = current(api)
    path = api.repo / API1
    path.write_text(path.read_text() + "\nA line added by the HTTP API test.\n")
    status, body = http_get(api, f"/api/events?epoch={epoch}&since={seq}&wait=10", timeout=20)
    assert status == 200, body
    (event,) = body["events"]
    assert event["type"] == "story.updated" and event["body_changed"] is True, event
    status, story = http_get(api, "/api/stories/API-001")
    assert status == 200 and "A line added by the HTTP API test." in story["body"]


# -- auth ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/stories", "/api/stories/API-002", "/api/events?wait=0"])
def test_api_auth(api: Daemon, path: str) -> None:
    assert http_get(api, path, None)[0] == 401
    assert http_get(api, path, "tok-unknown")[0] == 401
    assert http_get(api, path, "tok-publisher")[0] == 403  # publish only: no read scope
    assert http_get(api, path, "tok-reader")[0] == 200
    assert http_get(api, path, "tok-admin")[0] == 200
    joiner = "&" if "?" in path else "?"
    assert http_get(api, f"{path}{joiner}token=tok-reader", None)[0] == 200
    assert http_get(api, f"{path}{joiner}token=tok-publisher", None)[0] == 403
    assert http_get(api, "/healthz", None)[0] == 200  # no auth


# -- /api/events long-poll -------------------------------------------------------------


async def test_long_poll_returns_a_change_within_2s(api: Daemon) -> None:
    epoch, seq = await asyncio.to_thread(current, api)
    first = seq
    latencies = []
    for status in ("in-progress", "review", "done"):
        poll = LongPoll(api, f"/api/events?epoch={epoch}&since={seq}&wait=10")
        # Nothing to wait on: give the request time to reach the server and park.
        await asyncio.sleep(0.3)
        edited = time.monotonic()
        set_status(api.repo / UI5, status)
        code, body = await poll.join(scaled(15))
        assert code == 200, body
        latency = poll.finished - edited
        latencies.append(latency)
        assert body["epoch"] == epoch and body["recovered"] is True, body
        (event,) = body["events"]
        assert event["type"] == "story.transitioned" and event["story_id"] == "UI-005"
        assert event["to"] == status and event["seq"] == seq + 1, event
        assert body["seq"] == seq + 1
        seq = body["seq"]
    print(
        "\nlong-poll latency from file write to answer: "
        + ", ".join(f"{x * 1000:.0f} ms" for x in latencies)
    )
    assert max(latencies) < scaled(2)

    # Events already there: the answer comes at once, with all of them in order.
    started = time.monotonic()
    code, body = await asyncio.to_thread(
        http_get, api, f"/api/events?epoch={epoch}&since={first}&wait=10"
    )
    elapsed = time.monotonic() - started
    print(f"long-poll with 3 events waiting answered in {elapsed * 1000:.0f} ms")
    assert code == 200 and body["recovered"] is True, body
    assert [e["to"] for e in body["events"]] == ["in-progress", "review", "done"]
    assert [e["seq"] for e in body["events"]] == [first + 1, first + 2, first + 3]
    assert body["seq"] == first + 3
    assert elapsed < scaled(1)


async def test_long_poll_empty_after_wait_and_lost_cursors(api: Daemon) -> None:
    epoch, seq = await asyncio.to_thread(current, api)
    started = time.monotonic()
    code, body = await asyncio.to_thread(
        http_get, api, f"/api/events?epoch={epoch}&since={seq}&wait=1"
    )
    elapsed = time.monotonic() - started
    print(f"\nlong-poll wait=1 with nothing happening answered after {elapsed:.2f} s")
    assert code == 200, body
    assert body == {"epoch": epoch, "seq": seq, "recovered": True, "events": []}
    assert 0.9 <= elapsed < scaled(3)

    # A cursor that cannot be resumed: at once, recovered false, the current position.
    for query in (f"epoch=not-{epoch}&since={seq}", f"epoch={epoch}&since={seq + 1000}"):
        started = time.monotonic()
        code, body = await asyncio.to_thread(http_get, api, f"/api/events?{query}&wait=10")
        assert code == 200, body
        assert body["recovered"] is False and body["events"] == [], body
        assert (body["epoch"], body["seq"]) == (epoch, seq), body
        assert time.monotonic() - started < scaled(2)


async def test_long_poll_follows_token_scope(api: Daemon) -> None:
    epoch, seq = await asyncio.to_thread(current, api)
    scoped = LongPoll(api, f"/api/events?epoch={epoch}&since={seq}&wait=10", "tok-integration")
    await asyncio.sleep(0.3)
    set_status(api.repo / API1, "review")  # not visible to tok-integration
    code, body = await asyncio.to_thread(
        http_get, api, f"/api/events?epoch={epoch}&since={seq}&wait=10"
    )
    assert [e["story_id"] for e in body["events"]] == ["API-001"], body
    seq_api = body["seq"]
    set_status(api.repo / INT1, "review")
    code, body = await scoped.join(scaled(15))
    assert code == 200, body
    assert [e["story_id"] for e in body["events"]] == ["INT-001"], body
    assert body["events"][0]["seq"] == seq_api + 1
    # A story leaving the token's epics: deleted, out of scope, old state only.
    seq = body["seq"]
    path = api.repo / INT4
    path.write_text(path.read_text().replace("epic: integration", "epic: api", 1))
    code, body = await asyncio.to_thread(
        http_get, api, f"/api/events?epoch={epoch}&since={seq}&wait=10", "tok-integration"
    )
    (event,) = body["events"]
    assert event["type"] == "story.deleted" and event["reason"] == "out_of_scope", event
    assert event["story_id"] == "INT-004" and event["story"]["epic"] == "integration", event
    status, _ = await asyncio.to_thread(http_get, api, "/api/stories/INT-004", "tok-integration")
    assert status == 404


async def test_long_poll_of_15s_is_not_cut_by_the_handshake_timeout(
    idle_long_poll: LongPoll,
) -> None:
    """Started with the module; by now it has run most of its 15 s."""
    code, body = await idle_long_poll.join(scaled(40))
    print(f"\nlong-poll wait=15 answered after {idle_long_poll.elapsed:.2f} s")
    assert code == 200, body
    assert body["recovered"] is True and body["events"] == [], body
    assert 14.9 <= idle_long_poll.elapsed < 15 + scaled(5)
