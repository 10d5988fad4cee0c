"""Auth before the upgrade (SPEC §4): tokens, scopes, origins, and epic-scoped tokens."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import websockets

from tests.integration.daemon import Daemon, copy_fixtures
from tests.integration.helpers import ws_status
from tests.integration.test_editors import UI5, Clients, assert_event, edit, http_get

pytestmark = pytest.mark.integration

INTEGRATION_IDS = sorted(f"INT-00{n}" for n in range(1, 9))
INT3 = Path("integration") / "git" / "INT-003-git-hook-to-publish-story-changes.md"  # ready
INT5 = Path("integration") / "git" / "INT-005-github-issue-sync.md"  # draft


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    async with Clients() as pool:
        yield pool


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon (no file changes) with an extra allowed browser origin."""
    workdir = tmp_path_factory.mktemp("auth")
    daemon = Daemon(
        copy_fixtures(workdir / "stories"),
        workdir,
        config={"server": {"origins": ["http://board.example"]}},
    ).start()
    daemon.wait_healthy()
    yield daemon
    daemon.stop()


# -- tokens and scopes -------------------------------------------------------------------


async def test_missing_or_unknown_token_is_401(shared: Daemon) -> None:
    assert await ws_status(shared.ws_url(None)) == 401
    assert await ws_status(shared.ws_url("tok-nope")) == 401
    assert (
        await ws_status(
            shared.ws_url(None), additional_headers={"Authorization": "Bearer tok-nope"}
        )
        == 401
    )
    assert (
        await ws_status(
            shared.ws_url(None), additional_headers={"Authorization": "Basic dG9rLXJlYWRlcg=="}
        )
        == 401
    )
    for path in ("/api/stories", "/api/stories/UI-005", "/api/events?wait=0"):
        assert http_get(shared, path, token=None)[0] == 401, path
        assert http_get(shared, path, token="tok-nope")[0] == 401, path
    status, body = http_get(shared, "/api/stories?token=tok-nope", token=None)
    assert status == 401
    assert "tok-nope" not in str(body)


async def test_token_by_header_or_query(shared: Daemon) -> None:
    headers = {"Authorization": "Bearer tok-reader"}
    async with websockets.connect(
        shared.ws_url(None), additional_headers=headers, subprotocols=["storywatch.v1"]
    ) as ws:
        welcome = await ws.recv()
        assert '"user":"reader"' in welcome.replace(" ", "")
    async with websockets.connect(shared.ws_url("tok-admin"), subprotocols=["storywatch.v1"]) as ws:
        welcome = await ws.recv()
        assert '"user":"admin"' in welcome.replace(" ", "")
    status, listing = http_get(shared, "/api/stories")  # header
    assert status == 200 and len(listing["stories"]) == 50
    status, listing = http_get(shared, "/api/stories?token=tok-reader", token=None)
    assert status == 200 and len(listing["stories"]) == 50
    status, story = http_get(shared, "/api/stories/UI-005?token=tok-admin", token=None)
    assert status == 200 and story["id"] == "UI-005" and "body" in story
    assert http_get(shared, "/api/stories/NOPE-1")[0] == 404


async def test_wrong_scope_is_403(shared: Daemon) -> None:
    for path in ("/api/stories", "/api/stories/UI-005", "/api/events?wait=0"):
        status, body = http_get(shared, path, token="tok-publisher")
        assert status == 403, (path, body)
    # /ws takes read or publish: a publish-only token connects (and gets forbidden on
    # subscribe, see test_protocol)
    assert await ws_status(shared.ws_url("tok-publisher")) == 101


async def test_healthz_needs_no_auth(shared: Daemon) -> None:
    status, health = http_get(shared, "/healthz", token=None)
    assert status == 200
    assert health["status"] == "ok" and health["stories"] == 50
    assert isinstance(health["seq"], int) and isinstance(health["epoch"], str)
    assert isinstance(health["connections"], int)
    assert health["backend"] == {"kind": "memory", "ok": True}


async def test_tokens_never_logged(shared: Daemon) -> None:
    await ws_status(shared.ws_url("tok-reader"))
    await ws_status(shared.ws_url("tok-secret-unknown"))
    http_get(shared, "/api/stories?token=tok-admin", token=None)
    http_get(shared, "/api/stories", token="tok-integration")
    logs = "".join(shared.stderr_lines + shared.stdout_lines)
    for token in ("tok-reader", "tok-secret-unknown", "tok-admin", "tok-integration"):
        assert token not in logs


# -- origins -----------------------------------------------------------------------------


async def test_origins(shared: Daemon) -> None:
    own = f"http://127.0.0.1:{shared.port}"
    assert await ws_status(shared.ws_url(), origin=own) == 101  # same origin
    assert await ws_status(shared.ws_url()) == 101  # no Origin: not a browser
    assert await ws_status(shared.ws_url(), origin="http://board.example") == 101  # listed
    assert await ws_status(shared.ws_url(), origin="http://evil.example") == 403
    assert await ws_status(shared.ws_url(), origin=f"http://127.0.0.1:{shared.port + 1}") == 403
    assert await ws_status(shared.ws_url(), origin=f"https://127.0.0.1:{shared.port}") == 403
    assert await ws_status(shared.ws_url(), origin="http://board.example.evil.example") == 403
    assert http_get(shared, "/api/stories", headers={"Origin": own})[0] == 200
    assert http_get(shared, "/api/stories", headers={"Origin": "http://board.example"})[0] == 200
    assert http_get(shared, "/api/stories", headers={"Origin": "http://evil.example"})[0] == 403


async def test_any_origin(repo: Path, daemon_factory: type[Daemon]) -> None:
    daemon = daemon_factory(repo, config={"server": {"origins": ["*"]}}).start()
    assert await ws_status(daemon.ws_url(), origin="http://evil.example") == 101


# -- epic-scoped tokens ------------------------------------------------------------------


async def test_scoped_token_snapshot_and_http(daemon: Daemon, clients: Clients) -> None:
    client = await clients.open(daemon, "tok-integration")
    assert client.welcome["user"] == "integration"
    _, stories = await client.subscribe("s1", {}, snapshot=True)
    assert sorted(s["id"] for s in stories) == INTEGRATION_IDS
    # a filter can narrow, never widen
    _, stories = await client.subscribe("s2", {"epics": ["ui", "integration"]}, snapshot=True)
    assert sorted(s["id"] for s in stories) == INTEGRATION_IDS
    _, stories = await client.subscribe("s3", {"epics": ["ui"]}, snapshot=True)
    assert stories == []
    _, stories = await client.subscribe("s4", {"statuses": ["draft"]}, snapshot=True)
    assert sorted(s["id"] for s in stories) == ["INT-002", "INT-005"]
    status, listing = http_get(daemon, "/api/stories", token="tok-integration")
    assert status == 200 and [s["id"] for s in listing["stories"]] == INTEGRATION_IDS
    status, listing = http_get(daemon, "/api/stories?epics=ui", token="tok-integration")
    assert status == 200 and listing["stories"] == []
    assert http_get(daemon, "/api/stories/INT-003", token="tok-integration")[0] == 200
    assert http_get(daemon, "/api/stories/UI-005", token="tok-integration")[0] == 404


async def test_scoped_token_live_and_replay(daemon: Daemon, repo: Path, clients: Clients) -> None:
    reader, subscribed = await clients.subscribed(daemon)
    scoped, _ = await clients.subscribed(daemon, "tok-integration")
    narrow, _ = await clients.subscribed(daemon, "tok-integration", filter={"epics": ["ui"]})
    cursor = {"epoch": subscribed["epoch"], "seq": subscribed["seq"]}
    edit(repo / UI5, "priority: low", "priority: high")
    (ui_event,) = await reader.events(1)
    edit(repo / INT3, "status: ready", "status: in-progress")
    (int_event,) = await reader.events(1)
    (seen,) = await scoped.events(1)
    assert seen == {**int_event, "subs": ["s1"]}
    await scoped.no_event(0.3)
    await narrow.no_event(0.3)
    # replay through the scope
    again = await clients.open(daemon, "tok-integration")
    await again.send({"type": "subscribe", "sub": "r", "filter": {}, "since": cursor})
    answer = await again.recv()
    assert answer["recovered"] is True and answer["replayed"] == 1
    (replayed,) = await again.events(1)
    assert replayed["seq"] == int_event["seq"] and replayed["replay"] is True
    # long-poll through the scope
    status, page = http_get(
        daemon,
        f"/api/events?epoch={cursor['epoch']}&since={cursor['seq']}&wait=0",
        token="tok-integration",
    )
    assert status == 200 and [e["seq"] for e in page["events"]] == [int_event["seq"]]
    assert ui_event["seq"] not in [e["seq"] for e in page["events"]]


async def test_story_leaving_scope_is_deleted_out_of_scope(
    daemon: Daemon, repo: Path, clients: Clients
) -> None:
    reader, _ = await clients.subscribed(daemon)
    scoped, _subscribed = await clients.subscribed(daemon, "tok-integration")
    path = repo / INT5
    before = (await scoped.subscribe("peek", {"stories": ["INT-005"]}, snapshot=True))[1][0]
    edit(path, "epic: integration", "epic: api")
    (seen_by_reader,) = await reader.events(1)
    assert seen_by_reader["type"] == "story.updated"
    assert seen_by_reader["changes"] == {"epic": {"old": "integration", "new": "api"}}
    (gone,) = await scoped.events(1)
    assert_event(
        gone,
        scoped.welcome["epoch"],
        type="story.deleted",
        story_id="INT-005",
        path=INT5.as_posix(),
    )
    assert gone["reason"] == "out_of_scope"
    assert gone["story"] == before  # only the old state
    assert gone["story"]["epic"] == "integration"
    assert "api" not in str(gone["changes"])
    assert gone["body_changed"] is False
    assert gone["seq"] == seen_by_reader["seq"]
    assert sorted(gone["subs"]) == ["peek", "s1"]
    # it is out of sight now
    edit(path, "status: draft", "status: ready")
    await reader.events(1)
    await scoped.no_event(0.3)
    assert http_get(daemon, "/api/stories/INT-005", token="tok-integration")[0] == 404
    # and comes back in scope as created
    edit(path, "epic: api", "epic: integration")
    await reader.events(1)
    (back,) = await scoped.events(1)
    assert_event(back, scoped.welcome["epoch"], type="story.created", story_id="INT-005")
    assert back["reason"] == "in_scope"
    assert back["story"]["epic"] == "integration" and back["story"]["status"] == "ready"


async def test_out_of_scope_with_status_change_and_status_filter(
    daemon: Daemon, repo: Path, clients: Clients
) -> None:
    """Leaving the scope with a status change: a board column still sees it leave."""
    column, _ = await clients.subscribed(daemon, "tok-integration", filter={"statuses": ["ready"]})
    text = (repo / INT3).read_text()
    (repo / INT3).write_text(
        text.replace("epic: integration", "epic: api", 1).replace(
            "status: ready", "status: done", 1
        )
    )
    (gone,) = await column.events(1)
    assert gone["type"] == "story.deleted" and gone["reason"] == "out_of_scope"
    assert gone["story"]["status"] == "ready" and gone["story"]["epic"] == "integration"
    assert "from" not in gone and "to" not in gone
    await column.no_event(0.3)
