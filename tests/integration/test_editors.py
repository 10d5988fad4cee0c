"""Every event type, editor save patterns and invalid files, against the real daemon.

Each test starts ``storywatch run`` on a fresh copy of ``fixtures/stories`` (memory
backend, ``settle_ms`` 20), subscribes with ``{}`` and changes files the way a user or an
editor would. Events are checked against SPEC §3 to the letter.

The small helpers at the top are shared by the other integration test modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import scaled
from tests.integration.daemon import Client, Daemon
from tests.integration.helpers import edit, http_get

pytestmark = pytest.mark.integration

ISO_MS_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
STORY_TYPES = (
    "story.created",
    "story.deleted",
    "story.transitioned",
    "story.moved",
    "story.updated",
    "story.invalid",
)

UI5 = Path("ui") / "UI-005-dark-mode.md"  # status: ready, epic: ui
INT1 = Path("integration") / "INT-001-file-system-watcher-for-story-directory.md"  # done

NEW_STORY = """\
---
id: NEW-001
title: A brand new story
epic: ui
status: draft
labels: [ui, new]
owner: frontend-team
market: null
created: 2025-09-01
estimate: {points: 3, unit: sp}
---
# NEW-001

Body text.
"""


# -- helpers shared by the integration modules ------------------------------------------


def assert_event(
    event: dict[str, Any],
    epoch: str,
    *,
    type: str | None = None,
    story_id: str | None = None,
    path: str | None = None,
    subs: list[str] | None = None,
) -> None:
    """The fields every ``story.*`` message carries (SPEC §3, §4)."""
    assert event["type"] in STORY_TYPES, event
    if type is not None:
        assert event["type"] == type, event
    assert isinstance(event["seq"], int) and not isinstance(event["seq"], bool), event
    assert event["epoch"] == epoch, event
    assert ISO_MS_Z.match(event["time"]), event["time"]
    assert isinstance(event["story_id"], str), event
    if story_id is not None:
        assert event["story_id"] == story_id, event
    if path is not None:
        assert event["path"] == path, event
    story = event["story"]
    assert story["id"] == event["story_id"], event
    assert isinstance(story["path"], str), event
    assert "body" not in story, event
    assert isinstance(event["changes"], dict), event
    if event["type"] == "story.invalid":
        assert "body_changed" not in event, event
        assert event["error"]["reason"] in (
            "yaml",
            "missing_id",
            "duplicate_id",
            "too_large",
            "unreadable",
        ), event
        assert isinstance(event["error"]["message"], str), event
        assert event["error"]["line"] is None or isinstance(event["error"]["line"], int)
    else:
        assert isinstance(event["body_changed"], bool), event
        assert story["path"] == event["path"], event
    if event["type"] == "story.transitioned":
        assert event["from"] == event["changes"]["status"]["old"], event
        assert event["to"] == event["changes"]["status"]["new"], event
        assert event["to"] == story.get("status"), event
    else:
        assert "from" not in event and "to" not in event, event
    if event["type"] == "story.moved":
        assert event["old_path"] != event["path"], event
    source = event["source"]
    assert source["kind"] in ("fs", "git", "publish"), event
    if source["kind"] == "fs":
        assert isinstance(source["batch"], str) and source["batch"], event
        assert isinstance(source["batch_size"], int) and source["batch_size"] >= 1, event
    if subs is not None:
        assert event["subs"] == subs, event


def assert_consecutive(events: list[dict[str, Any]], after: int) -> None:
    assert [e["seq"] for e in events] == list(range(after + 1, after + 1 + len(events))), [
        (e["seq"], e["type"], e["story_id"]) for e in events
    ]


class Clients:
    """Opens WebSocket clients and closes them all on exit, also when a test fails."""

    def __init__(self) -> None:
        self.opened: list[Client] = []

    async def __aenter__(self) -> Clients:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in self.opened:
            with contextlib.suppress(Exception):
                await client.close()

    async def open(self, daemon: Daemon, token: str | None = "tok-reader", **kwargs: Any) -> Client:
        client = await Client.connect(daemon.ws_url(token), **kwargs)
        self.opened.append(client)
        return client

    async def subscribed(
        self,
        daemon: Daemon,
        token: str = "tok-reader",
        filter: dict[str, Any] | None = None,
        sub: str = "s1",
        **extra: Any,
    ) -> tuple[Client, dict[str, Any]]:
        client = await self.open(daemon, token)
        subscribed, _ = await client.subscribe(sub, filter or {}, **extra)
        assert subscribed["type"] == "subscribed", subscribed
        return client, subscribed


async def pause(seconds: float) -> None:
    """Separate two editor steps that must not land in one watcher batch."""
    await asyncio.sleep(seconds)


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    async with Clients() as pool:
        yield pool


@pytest.fixture
async def live(daemon: Daemon, clients: Clients) -> tuple[Client, dict[str, Any]]:
    client, subscribed = await clients.subscribed(daemon)
    assert subscribed["seq"] == client.welcome["seq"]
    return client, subscribed


# -- every event type -------------------------------------------------------------------


async def test_created(live: tuple[Client, dict[str, Any]], repo: Path) -> None:
    client, subscribed = live
    (repo / "ui" / "NEW-001.md").write_text(NEW_STORY)
    (event,) = await client.events(1)
    epoch = client.welcome["epoch"]
    assert_event(
        event, epoch, type="story.created", story_id="NEW-001", path="ui/NEW-001.md", subs=["s1"]
    )
    assert event["seq"] == subscribed["seq"] + 1
    assert event["story"] == {
        "id": "NEW-001",
        "title": "A brand new story",
        "epic": "ui",
        "status": "draft",
        "labels": ["ui", "new"],
        "owner": "frontend-team",
        "market": None,
        "created": "2025-09-01",
        "estimate": {"points": 3, "unit": "sp"},
        "path": "ui/NEW-001.md",
    }
    # every key with old null; null-valued keys are no change; path is not front-matter
    assert event["changes"] == {
        "id": {"old": None, "new": "NEW-001"},
        "title": {"old": None, "new": "A brand new story"},
        "epic": {"old": None, "new": "ui"},
        "status": {"old": None, "new": "draft"},
        "labels": {"old": None, "new": ["ui", "new"]},
        "owner": {"old": None, "new": "frontend-team"},
        "created": {"old": None, "new": "2025-09-01"},
        "estimate": {"old": None, "new": {"points": 3, "unit": "sp"}},
    }
    assert event["body_changed"] is False
    assert "old_path" not in event and "from" not in event
    assert event["source"]["kind"] == "fs" and event["source"]["batch_size"] == 1
    await client.no_event()


async def test_updated_with_body_changed(live: tuple[Client, dict[str, Any]], repo: Path) -> None:
    client, subscribed = live
    path = repo / UI5
    edit(path, "Follow `prefers-color-scheme`", "Follow the OS `prefers-color-scheme`")
    (body_only,) = await client.events(1)
    assert_event(
        body_only,
        client.welcome["epoch"],
        type="story.updated",
        story_id="UI-005",
        path=UI5.as_posix(),
        subs=["s1"],
    )
    assert body_only["changes"] == {}
    assert body_only["body_changed"] is True
    assert body_only["story"]["status"] == "ready"
    edit(path, "priority: low", "priority: high")
    (field_only,) = await client.events(1)
    assert_event(field_only, client.welcome["epoch"], type="story.updated", story_id="UI-005")
    assert field_only["changes"] == {"priority": {"old": "low", "new": "high"}}
    assert field_only["body_changed"] is False
    assert field_only["story"]["priority"] == "high"
    assert_consecutive([body_only, field_only], subscribed["seq"])
    await client.no_event()


async def test_transitioned_with_from_to(live: tuple[Client, dict[str, Any]], repo: Path) -> None:
    client, subscribed = live
    path = repo / UI5
    text = path.read_text().replace("status: ready", "status: in-progress", 1)
    path.write_text(text.replace("priority: low", "priority: medium", 1) + "\nMore.\n")
    (event,) = await client.events(1)
    assert_event(
        event,
        client.welcome["epoch"],
        type="story.transitioned",
        story_id="UI-005",
        path=UI5.as_posix(),
        subs=["s1"],
    )
    assert event["from"] == "ready" and event["to"] == "in-progress"
    # other changes ride along
    assert event["changes"] == {
        "status": {"old": "ready", "new": "in-progress"},
        "priority": {"old": "low", "new": "medium"},
    }
    assert event["body_changed"] is True
    assert "old_path" not in event
    assert event["seq"] == subscribed["seq"] + 1
    await client.no_event()


async def test_moved_by_rename(live: tuple[Client, dict[str, Any]], repo: Path) -> None:
    client, subscribed = live
    (repo / "ui" / "done").mkdir()
    os.rename(repo / UI5, repo / "ui" / "done" / "UI-005.md")
    (event,) = await client.events(1)
    assert_event(
        event,
        client.welcome["epoch"],
        type="story.moved",
        story_id="UI-005",
        path="ui/done/UI-005.md",
        subs=["s1"],
    )
    assert event["old_path"] == UI5.as_posix()
    assert event["story"]["path"] == "ui/done/UI-005.md"
    assert event["changes"] == {}
    assert event["body_changed"] is False
    assert event["seq"] == subscribed["seq"] + 1
    await client.no_event()


async def test_folder_rename_moves_its_stories(
    live: tuple[Client, dict[str, Any]], repo: Path
) -> None:
    client, subscribed = live
    os.rename(repo / "api" / "v2", repo / "api" / "v3")
    events = await client.events(3)
    assert sorted(e["story_id"] for e in events) == ["API-003", "API-005", "API-006"]
    for event in events:
        assert_event(event, client.welcome["epoch"], type="story.moved")
        assert event["old_path"].startswith("api/v2/")
        assert event["path"] == "api/v3/" + event["old_path"].removeprefix("api/v2/")
    assert_consecutive(events, subscribed["seq"])
    await client.no_event()


async def test_deleted_after_grace(live: tuple[Client, dict[str, Any]], repo: Path) -> None:
    client, subscribed = live
    before = json.loads(json.dumps(await _story_via_api(client, "UI-005")))
    started = time.monotonic()
    os.remove(repo / UI5)
    (event,) = await client.events(1, timeout=2 + 0.3)
    elapsed = time.monotonic() - started
    assert elapsed >= 0.3 - 0.05, f"deleted after {elapsed:.3f}s, before delete_grace_ms"
    assert elapsed <= scaled(0.3 + 1.0), f"deleted after {elapsed:.3f}s"
    assert_event(
        event,
        client.welcome["epoch"],
        type="story.deleted",
        story_id="UI-005",
        path=UI5.as_posix(),
        subs=["s1"],
    )
    assert event["story"] == before  # the last known state
    assert event["changes"] == {
        key: {"old": value, "new": None}
        for key, value in before.items()
        if key != "path" and value is not None
    }
    assert event["body_changed"] is False
    assert event["source"]["kind"] == "fs" and event["source"]["batch_size"] == 1
    assert event["seq"] == subscribed["seq"] + 1
    await client.no_event()


async def _story_via_api(client: Client, story_id: str) -> dict[str, Any]:
    """The story's current state, from a snapshot on a second subscription."""
    subscribed, stories = await client.subscribe(
        f"peek-{story_id}", {"stories": [story_id]}, snapshot=True
    )
    assert subscribed["type"] == "subscribed"
    await client.send({"type": "unsubscribe", "sub": f"peek-{story_id}"})
    await client.recv_until(lambda m: m.get("type") == "unsubscribed")
    (story,) = stories
    return story


async def test_invalid_yaml_reason_and_line(
    live: tuple[Client, dict[str, Any]], repo: Path
) -> None:
    client, subscribed = live
    path = repo / UI5
    good = path.read_text()
    lines = good.split("\n")
    assert lines[4] == "epic: ui"
    lines[4] = "epic: ui: nested: oops"  # line 5 of the file
    path.write_text("\n".join(lines))
    (event,) = await client.events(1)
    assert_event(
        event,
        client.welcome["epoch"],
        type="story.invalid",
        story_id="UI-005",
        path=UI5.as_posix(),
        subs=["s1"],
    )
    assert event["error"]["reason"] == "yaml"
    assert event["error"]["line"] == 5
    assert event["error"]["message"]
    assert event["story"]["status"] == "ready" and event["story"]["epic"] == "ui"
    assert event["changes"] == {}
    assert event["seq"] == subscribed["seq"] + 1
    await client.no_event()


async def test_invalid_missing_id(live: tuple[Client, dict[str, Any]], repo: Path) -> None:
    client, _ = live
    edit(repo / UI5, "id: UI-005\n", "")
    (event,) = await client.events(1)
    assert_event(
        event, client.welcome["epoch"], type="story.invalid", story_id="UI-005", path=UI5.as_posix()
    )
    assert event["error"]["reason"] == "missing_id"
    assert event["story"]["id"] == "UI-005" and event["story"]["path"] == UI5.as_posix()
    await client.no_event()


async def test_duplicate_id(live: tuple[Client, dict[str, Any]], repo: Path) -> None:
    client, subscribed = live
    copy = repo / "ui" / "UI-005-copy.md"
    copy.write_text((repo / UI5).read_text().replace("status: ready", "status: done", 1))
    (event,) = await client.events(1)
    assert_event(
        event,
        client.welcome["epoch"],
        type="story.invalid",
        story_id="UI-005",
        path="ui/UI-005-copy.md",
        subs=["s1"],
    )
    assert event["error"]["reason"] == "duplicate_id"
    # story is the state of the story that keeps the id
    assert event["story"]["path"] == UI5.as_posix()
    assert event["story"]["status"] == "ready"
    assert event["seq"] == subscribed["seq"] + 1
    await client.no_event()
    # the owner keeps it: editing the copy again says nothing new, the owner still works
    edit(repo / UI5, "status: ready", "status: review")
    (owner_event,) = await client.events(1)
    assert owner_event["type"] == "story.transitioned"
    assert owner_event["path"] == UI5.as_posix()
    await client.no_event()


async def test_every_type_in_one_stream(live: tuple[Client, dict[str, Any]], repo: Path) -> None:
    """created, updated, transitioned, moved, invalid, deleted: seq gap-free, one epoch."""
    client, subscribed = live
    epoch = client.welcome["epoch"]
    got: list[dict[str, Any]] = []
    steps: list[tuple[Callable[[], object], str]] = [
        (lambda: (repo / "ui" / "NEW-001.md").write_text(NEW_STORY), "story.created"),
        (lambda: edit(repo / "ui" / "NEW-001.md", "Body text.", "Other text."), "story.updated"),
        (
            lambda: edit(repo / "ui" / "NEW-001.md", "status: draft", "status: ready"),
            "story.transitioned",
        ),
        (
            lambda: os.rename(repo / "ui" / "NEW-001.md", repo / "ui" / "NEW-001-x.md"),
            "story.moved",
        ),
        (
            lambda: edit(repo / "ui" / "NEW-001-x.md", "labels: [ui, new]", "labels: [ui, new"),
            "story.invalid",
        ),
        (lambda: os.remove(repo / "ui" / "NEW-001-x.md"), "story.deleted"),
    ]
    for action, expected in steps:
        action()
        (event,) = await client.events(1)
        assert_event(event, epoch, type=expected, story_id="NEW-001", subs=["s1"])
        got.append(event)
    assert_consecutive(got, subscribed["seq"])
    assert got[-1]["story"]["path"] == "ui/NEW-001-x.md"
    assert got[-1]["story"]["status"] == "ready"  # the last good state
    await client.no_event()


# -- editor saves: exactly one event each -------------------------------------------------


def _save_temp_rename(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def _save_vim(path: Path, text: str) -> None:
    backup = path.with_name(path.name + "~")
    probe = path.with_name("4913")
    probe.write_text("")
    probe.unlink()
    os.rename(path, backup)
    with open(path, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    backup.unlink()


async def _save_truncate_then_write(path: Path, text: str) -> None:
    with open(path, "r+") as handle:
        handle.truncate(0)
    await pause(0.1)
    with open(path, "r+") as handle:
        handle.write(text)


def _save_jetbrains(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + "___jb_tmp___")
    old = path.with_name(path.name + "___jb_old___")
    tmp.write_text(text)
    os.rename(path, old)
    os.rename(tmp, path)
    old.unlink()


async def _save_delete_then_create(path: Path, text: str) -> None:
    path.unlink()
    await pause(0.05)
    path.write_text(text)


async def save_with(editor: str, path: Path, text: str) -> None:
    if editor == "temp-rename":
        _save_temp_rename(path, text)
    elif editor == "vim":
        await _save_vim(path, text)
    elif editor == "truncate-write":
        await _save_truncate_then_write(path, text)
    elif editor == "jetbrains":
        _save_jetbrains(path, text)
    elif editor == "delete-create":
        await _save_delete_then_create(path, text)
    else:  # pragma: no cover
        raise AssertionError(editor)


EDITORS = ["temp-rename", "vim", "truncate-write", "jetbrains", "delete-create"]


@pytest.mark.parametrize("editor", EDITORS)
async def test_editor_save_body_is_one_update(
    editor: str, live: tuple[Client, dict[str, Any]], repo: Path
) -> None:
    client, subscribed = live
    path = repo / UI5
    text = path.read_text().replace("Follow `prefers", "Follow the `prefers", 1)
    await save_with(editor, path, text)
    (event,) = await client.events(1, timeout=3)
    assert_event(
        event,
        client.welcome["epoch"],
        type="story.updated",
        story_id="UI-005",
        path=UI5.as_posix(),
        subs=["s1"],
    )
    assert event["changes"] == {} and event["body_changed"] is True
    assert "old_path" not in event
    assert event["seq"] == subscribed["seq"] + 1
    await client.no_event()  # longer than delete_grace_ms: no late delete/invalid


@pytest.mark.parametrize("editor", EDITORS)
async def test_editor_save_status_is_one_transition(
    editor: str, live: tuple[Client, dict[str, Any]], repo: Path
) -> None:
    client, subscribed = live
    path = repo / INT1
    text = path.read_text().replace("status: done", "status: review", 1)
    await save_with(editor, path, text)
    (event,) = await client.events(1, timeout=3)
    assert_event(
        event,
        client.welcome["epoch"],
        type="story.transitioned",
        story_id="INT-001",
        path=INT1.as_posix(),
        subs=["s1"],
    )
    assert event["from"] == "done" and event["to"] == "review"
    assert event["changes"] == {"status": {"old": "done", "new": "review"}}
    assert event["body_changed"] is False
    assert event["seq"] == subscribed["seq"] + 1
    await client.no_event()


@pytest.mark.parametrize("editor", EDITORS)
async def test_editor_save_of_identical_content_is_silent(
    editor: str, live: tuple[Client, dict[str, Any]], repo: Path
) -> None:
    client, _ = live
    path = repo / UI5
    await save_with(editor, path, path.read_text())
    await client.no_event()
    # the watcher is still alive and the story unchanged: the next real edit is an update
    edit(path, "priority: low", "priority: high")
    (event,) = await client.events(1)
    assert event["type"] == "story.updated"
    assert event["changes"] == {"priority": {"old": "low", "new": "high"}}


async def test_touch_is_silent(live: tuple[Client, dict[str, Any]], repo: Path) -> None:
    client, _ = live
    path = repo / UI5
    os.utime(path, None)
    path.touch()
    await client.no_event()
    path.write_bytes(path.read_bytes())  # identical content, written in place
    await client.no_event()
    edit(path, "priority: low", "priority: high")
    (event,) = await client.events(1)
    assert event["type"] == "story.updated"


async def test_ignored_temp_files_are_silent(
    live: tuple[Client, dict[str, Any]], repo: Path
) -> None:
    client, _ = live
    story = (repo / UI5).read_text().replace("id: UI-005", "id: TEMP-1", 1)
    names = [
        "x.md.swp",
        "x.md~",
        ".#x.md",
        "#x.md#",
        "4913",
        "x.md___jb_tmp___",
        "x.md___jb_old___",
        "x.md.tmp",
        ".syncthing.x.md",
        "~syncthing~x.md",
    ]
    for name in names:
        (repo / "ui" / name).write_text(story)
    (repo / ".hidden").mkdir()
    (repo / ".hidden" / "x.md").write_text(story)
    (repo / "node_modules").mkdir()
    (repo / "node_modules" / "x.md").write_text(story)
    await client.no_event()


# -- invalid files keep the last good state ---------------------------------------------


async def test_invalid_keeps_last_good_state_and_fix_diffs_against_it(
    daemon: Daemon, live: tuple[Client, dict[str, Any]], repo: Path, clients: Clients
) -> None:
    client, _subscribed = live
    path = repo / UI5
    good = path.read_text()
    # broken YAML, with a status change inside the broken text
    broken = good.replace("status: ready", "status: review", 1).replace(
        "labels: []", "labels: [unclosed", 1
    )
    path.write_text(broken)
    (invalid,) = await client.events(1)
    assert invalid["type"] == "story.invalid"
    assert invalid["error"]["reason"] == "yaml"
    assert invalid["story"]["status"] == "ready"

    status, story = http_get(daemon, "/api/stories/UI-005")
    assert status == 200, story
    assert story["status"] == "ready" and story["path"] == UI5.as_posix()
    assert story["body"].lstrip().startswith("# UI-005: Dark mode")
    status, listing = http_get(daemon, "/api/stories?stories=UI-005")
    assert status == 200 and [s["status"] for s in listing["stories"]] == ["ready"]
    # a new subscriber's snapshot still has it
    other = await clients.open(daemon)
    _, stories = await other.subscribe("s3", {"stories": ["UI-005"]}, snapshot=True)
    assert [s["status"] for s in stories] == ["ready"]

    # still broken, differently: no flapping to deleted/created
    path.write_text(broken.replace("priority: low", "priority: high", 1))
    await client.no_event()

    # the fix is diffed against the last good state
    path.write_text(good.replace("status: ready", "status: review", 1))
    (fixed,) = await client.events(1)
    assert_event(fixed, client.welcome["epoch"], type="story.transitioned", story_id="UI-005")
    assert fixed["from"] == "ready" and fixed["to"] == "review"
    assert fixed["changes"] == {"status": {"old": "ready", "new": "review"}}
    assert fixed["body_changed"] is False
    assert fixed["seq"] == invalid["seq"] + 1
    assert http_get(daemon, "/api/stories/UI-005")[1]["status"] == "review"
    await client.no_event()


async def test_fix_restoring_last_good_content_is_silent(
    live: tuple[Client, dict[str, Any]], repo: Path
) -> None:
    client, _ = live
    path = repo / UI5
    good = path.read_text()
    path.write_text(good.replace("labels: []", "labels: [", 1))
    (invalid,) = await client.events(1)
    assert invalid["type"] == "story.invalid"
    path.write_text(good)
    await client.no_event()


# -- more ways a story file changes ------------------------------------------------------


async def test_latency_under_a_second(live: tuple[Client, dict[str, Any]], repo: Path) -> None:
    client, _ = live
    for n in range(3):
        started = time.monotonic()
        edit(
            repo / UI5,
            f"priority: {('low', 'high', 'medium')[n]}",
            f"priority: {('high', 'medium', 'low')[n]}",
        )
        await client.events(1)
        assert time.monotonic() - started <= scaled(1.0)


async def test_delete_then_create_elsewhere_is_a_move(
    live: tuple[Client, dict[str, Any]], repo: Path
) -> None:
    client, subscribed = live
    text = (repo / UI5).read_text()
    os.remove(repo / UI5)
    await pause(0.05)
    (repo / "UI-005.md").write_text(text.replace("status: ready", "status: review", 1))
    (event,) = await client.events(1, timeout=3)
    assert_event(
        event,
        client.welcome["epoch"],
        type="story.transitioned",
        story_id="UI-005",
        path="UI-005.md",
    )
    assert event["old_path"] == UI5.as_posix()
    assert event["seq"] == subscribed["seq"] + 1
    await client.no_event()


async def test_moved_out_of_the_repo_is_deleted(
    live: tuple[Client, dict[str, Any]], repo: Path, tmp_path: Path
) -> None:
    client, _ = live
    os.rename(repo / UI5, tmp_path / "UI-005.md")
    (event,) = await client.events(1, timeout=3)
    assert_event(
        event, client.welcome["epoch"], type="story.deleted", story_id="UI-005", path=UI5.as_posix()
    )
    await client.no_event()


async def test_duplicate_takes_over_when_the_owner_goes(
    live: tuple[Client, dict[str, Any]], repo: Path
) -> None:
    client, _ = live
    copy = repo / "ui" / "UI-005-copy.md"
    copy.write_text((repo / UI5).read_text().replace("status: ready", "status: done", 1))
    (invalid,) = await client.events(1)
    assert invalid["type"] == "story.invalid"
    assert invalid["error"]["reason"] == "duplicate_id"
    os.remove(repo / UI5)
    # never deleted: the duplicate now holds the id
    (event,) = await client.events(1, timeout=3)
    assert_event(
        event,
        client.welcome["epoch"],
        type="story.transitioned",
        story_id="UI-005",
        path="ui/UI-005-copy.md",
    )
    assert event["old_path"] == UI5.as_posix()
    assert event["from"] == "ready" and event["to"] == "done"
    await client.no_event()


async def test_too_large_and_unreadable(
    repo: Path, daemon_factory: type[Daemon], clients: Clients
) -> None:
    daemon = daemon_factory(
        repo, config={"watch": {"settle_ms": 20, "max_file_bytes": 20_000}}
    ).start()
    daemon.wait_healthy()
    client, _ = await clients.subscribed(daemon)
    path = repo / UI5
    good = path.read_text()
    path.write_text(good + "x" * 30_000)
    (event,) = await client.events(1, timeout=3)
    assert_event(event, client.welcome["epoch"], type="story.invalid", story_id="UI-005")
    assert event["error"]["reason"] == "too_large"
    path.write_bytes(good.encode() + b"\n\xff\xfe not utf-8\n")
    (event,) = await client.events(1, timeout=3)
    assert event["type"] == "story.invalid" and event["error"]["reason"] == "unreadable"
    path.write_text(good)  # back to the last good content: nothing to tell
    await client.no_event()


async def test_story_emptied_is_invalid_not_deleted(
    live: tuple[Client, dict[str, Any]], repo: Path
) -> None:
    client, _ = live
    (repo / UI5).write_text("")
    (event,) = await client.events(1, timeout=3)
    assert_event(event, client.welcome["epoch"], type="story.invalid", story_id="UI-005")
    assert event["error"]["reason"] == "missing_id"
    await client.no_event()


async def test_held_delete_keeps_its_batch(live: tuple[Client, dict[str, Any]], repo: Path) -> None:
    client, _ = live
    edit(repo / UI5, "priority: low", "priority: high")
    os.remove(repo / "api" / "API-007-rate-limit-headers.md")
    events = await client.events(2, timeout=3)
    assert [e["type"] for e in events] == ["story.updated", "story.deleted"]
    # the delete is emitted later, with the source of the batch it was seen in
    assert events[0]["source"]["batch"] == events[1]["source"]["batch"]
    assert [e["source"]["batch_size"] for e in events] == [2, 2]
