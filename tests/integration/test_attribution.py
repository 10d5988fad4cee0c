"""SPEC §11 against the real daemon: ``source.git.commit`` on pulls, merges, checkouts,
resets, deletes and renames (none on plain saves), through every backend; the history API
(renames, limits, scope, 401/404) and ``storywatch history`` in text and JSON.

The watched checkout is a clone of an "upstream" repository in which several authors commit;
every attributed event is checked against ``git log -1 HEAD -- PATH`` run by the test.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.gitrepo import GitRepo
from tests.integration.daemon import Client, Daemon
from tests.integration.redis_server import RedisServer
from tests.integration.test_cli import storywatch
from tests.integration.test_pressure import http_get
from tests.integration.test_redis import wait_for_stories

pytestmark = pytest.mark.integration

STORIES = {  # id → (path, epic)
    "INT-1": ("stories/INT-1.md", "integration"),
    "INT-2": ("stories/INT-2.md", "integration"),
    "INT-3": ("stories/INT-3.md", "integration"),
    "UI-1": ("stories/UI-1.md", "ui"),
}


def write_story(
    repo: GitRepo,
    story_id: str,
    status: str,
    *,
    title: str = "",
    body: str = "body",
    path: str = "",
) -> None:
    rel, epic = STORIES[story_id]
    repo.write(
        path or rel,
        f"---\nid: {story_id}\ntitle: {title or story_id}\n"
        f"status: {status}\nepic: {epic}\n---\n\n{body}\n",
    )


def upstream(root: Path) -> GitRepo:
    up = GitRepo.init(root)
    for story_id in STORIES:
        write_story(up, story_id, "draft")
    up.commit("start", author="Ada")
    return up


def clone(up: GitRepo, dest: Path) -> GitRepo:
    subprocess.run(
        ["git", "clone", "-q", str(up.root), str(dest)],
        check=True,
        env={"PATH": "/usr/bin:/bin", "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null"},
    )
    repo = GitRepo(dest)
    repo.clock = up.clock + 10_000
    return repo


def commit_of(event: dict[str, Any]) -> dict[str, Any] | None:
    git = event["source"].get("git") or {}
    commit: dict[str, Any] | None = git.get("commit")
    return commit


def assert_attributed(repo: GitRepo, events: list[dict[str, Any]]) -> None:
    """Every event carries the commit ``git log -1 HEAD -- PATH`` names, in full."""
    for event in events:
        commit = commit_of(event)
        assert commit is not None, event
        assert commit["sha"] == repo.last("HEAD", event["path"]), event
        line = repo.git("log", "-1", "--format=%an%x00%ae%x00%aI%x00%s", commit["sha"])
        assert [commit["author"], commit["email"], commit["time"], commit["subject"]] == line.split(
            "\0"
        )
        assert event["source"]["git"]["head"] == repo.head()


async def next_events(client: Client, count: int) -> dict[str, dict[str, Any]]:
    events = await client.events(count)
    return {e["story_id"]: e for e in events}


@pytest.fixture
def world(tmp_path: Path) -> tuple[GitRepo, GitRepo]:
    up = upstream(tmp_path / "upstream")
    return up, clone(up, tmp_path / "watched")


async def test_attribution_through_git_operations(
    world: tuple[GitRepo, GitRepo], daemon_factory: type[Daemon]
) -> None:
    up, repo = world
    daemon = daemon_factory(repo.root).start()
    daemon.wait_healthy()
    client = await Client.connect(daemon.ws_url())
    await client.subscribe()

    # A working-tree edit that has no commit, and undoing it: HEAD did not move.
    write_story(repo, "INT-1", "ready")
    saved = await next_events(client, 1)
    repo.git("checkout", "--", "stories/INT-1.md")
    restored = await next_events(client, 1)
    for event in (saved["INT-1"], restored["INT-1"]):
        assert event["type"] == "story.transitioned"
        assert "git" not in event["source"], event["source"]

    # A pull bringing several commits touching one file: the last one is the file's.
    write_story(up, "INT-1", "ready")
    up.commit("INT-1 ready", author="Bo Li")
    write_story(up, "INT-1", "in-progress")
    cy = up.commit("INT-1 started", author="Cy Young", zone="+0530")
    write_story(up, "INT-2", "done")
    bo = up.commit("INT-2 done", author="Bo Li", zone="-0700")
    repo.git("pull", "-q", "--ff-only")
    pulled = await next_events(client, 2)
    assert_attributed(repo, list(pulled.values()))
    assert commit_of(pulled["INT-1"]) == {
        "sha": cy,
        "author": "Cy Young",
        "email": "cy@example.com",
        "time": commit_of(pulled["INT-1"])["time"],
        "subject": "INT-1 started",  # type: ignore[index]
    }
    assert commit_of(pulled["INT-1"])["time"].endswith("+05:30")  # type: ignore[index]
    assert (pulled["INT-1"]["from"], pulled["INT-1"]["to"]) == ("draft", "in-progress")
    assert commit_of(pulled["INT-2"])["sha"] == bo  # type: ignore[index]
    assert pulled["INT-1"]["source"]["batch"] == pulled["INT-2"]["source"]["batch"]

    # A branch with a change of its own, and main changing the same story elsewhere.
    up.git("checkout", "-q", "-b", "feature")
    write_story(up, "UI-1", "review")
    write_story(up, "INT-2", "done", body="feature body")
    dee = up.commit("UI-1 to review", author="Dee")
    up.git("checkout", "-q", "main")
    write_story(up, "INT-3", "ready")
    write_story(up, "INT-2", "done", title="main title")
    up.commit("INT-3 ready, INT-2 renamed", author="Ada")
    repo.git("pull", "-q", "--ff-only")
    assert_attributed(repo, list((await next_events(client, 2)).values()))

    # The merge: UI-1 took the feature's version (Dee's commit); INT-2 was changed on
    # both sides, so the merge itself is the commit that made it what it is.
    repo.git("fetch", "-q")
    repo.git("merge", "-q", "--no-ff", "--no-edit", "origin/feature", author="Eve")
    merged = await next_events(client, 2)
    assert_attributed(repo, list(merged.values()))
    assert commit_of(merged["UI-1"])["sha"] == dee  # type: ignore[index]
    assert commit_of(merged["INT-2"])["sha"] == repo.head()  # type: ignore[index]
    assert commit_of(merged["INT-2"])["author"] == "Eve"  # type: ignore[index]

    # A checkout of another branch, and back.
    repo.git("checkout", "-q", "-b", "side", "origin/feature")
    side = await next_events(client, 2)
    assert set(side) == {"INT-2", "INT-3"}
    assert_attributed(repo, list(side.values()))
    assert side["INT-3"]["source"]["git"]["branch"] == "side"
    assert commit_of(side["INT-3"])["subject"] == "start"  # type: ignore[index]
    repo.git("checkout", "-q", "main")
    assert_attributed(repo, list((await next_events(client, 2)).values()))

    # A reset undoing the merge.
    repo.git("reset", "-q", "--hard", "HEAD~1")
    reset = await next_events(client, 2)
    assert set(reset) == {"UI-1", "INT-2"}
    assert_attributed(repo, list(reset.values()))
    assert commit_of(reset["UI-1"])["subject"] == "start"  # type: ignore[index]

    # A pull with a delete and a rename.
    up.git("rm", "-q", "stories/INT-3.md")
    drop = up.commit("drop INT-3", author="Bo Li")
    up.git("mv", "stories/INT-1.md", "stories/INT-1-moved.md")
    moved_by = up.commit("move INT-1", author="Cy Young")
    repo.git("pull", "-q", "--ff-only")
    last = await next_events(client, 2)
    assert last["INT-3"]["type"] == "story.deleted"
    assert last["INT-1"]["type"] == "story.moved"
    assert_attributed(repo, list(last.values()))
    assert commit_of(last["INT-3"])["sha"] == drop  # type: ignore[index]
    assert commit_of(last["INT-1"])["sha"] == moved_by  # type: ignore[index]

    # -- the history API on what happened ---------------------------------------------
    status, history = http_get(daemon, "/api/stories/INT-1/history")
    assert status == 200
    assert history["story_id"] == "INT-1"
    seqs = [e["seq"] for e in history["events"]]
    assert seqs == sorted(seqs, reverse=True) and len(seqs) == 4
    assert [c["sha"] for c in history["commits"]] == repo.git(
        "log", "--follow", "--format=%H", "HEAD", "--", "stories/INT-1-moved.md"
    ).split()
    assert [(c["path"], c["status"], c["author"]) for c in history["commits"]] == [
        ("stories/INT-1-moved.md", "in-progress", "Cy Young"),
        ("stories/INT-1.md", "in-progress", "Cy Young"),
        ("stories/INT-1.md", "ready", "Bo Li"),
        ("stories/INT-1.md", "draft", "Ada"),
    ]
    status, one = http_get(daemon, "/api/stories/INT-1/history?limit=1")
    assert status == 200 and len(one["events"]) == 1 and len(one["commits"]) == 1
    assert one["events"][0] == history["events"][0]
    for bad in ("0", "501", "abc", "-1", "2.5"):
        status, body = http_get(daemon, f"/api/stories/INT-1/history?limit={bad}")
        assert (status, body["error"]["code"]) == (400, "bad_request"), bad
    # A deleted story keeps its history; the delete commit has no status.
    status, gone = http_get(daemon, "/api/stories/INT-3/history")
    assert status == 200 and gone["events"][0]["type"] == "story.deleted"
    assert gone["commits"][0]["sha"] == drop and gone["commits"][0]["status"] is None
    assert http_get(daemon, "/api/stories/NOPE/history")[0] == 404
    assert http_get(daemon, "/api/stories/INT-1/history", token=None)[0] == 401
    # Scope: a token limited to epic integration sees INT-* but not UI-1.
    assert http_get(daemon, "/api/stories/UI-1/history", token="tok-integration")[0] == 404
    status, scoped = http_get(daemon, "/api/stories/INT-2/history", token="tok-integration")
    assert status == 200 and scoped["events"]

    # -- the CLI: the same object; a timeline for people ----------------------------------
    done = storywatch("history", "INT-1", "--repo", str(repo.root), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["commits"] == history["commits"]
    assert json.loads(done.stdout)["events"] == []  # the memory backend keeps no state
    text = storywatch("history", "INT-1", "--repo", str(repo.root))
    assert text.returncode == 0, text.stderr
    assert "draft → ready" in text.stdout and "ready → in-progress" in text.stdout
    assert "Bo Li" in text.stdout and "Cy Young" in text.stdout
    unknown = storywatch("history", "NOPE", "--repo", str(repo.root))
    assert unknown.returncode == 1 and len(unknown.stderr.strip().splitlines()) == 1
    await client.close()


async def test_commit_survives_sqlite_and_reaches_the_cli(
    world: tuple[GitRepo, GitRepo], daemon_factory: type[Daemon]
) -> None:
    up, repo = world
    daemon = daemon_factory(repo.root, backend="sqlite").start()
    daemon.wait_healthy()
    client = await Client.connect(daemon.ws_url())
    subscribed, _ = await client.subscribe()
    write_story(up, "INT-2", "review")
    bo = up.commit("INT-2 review", author="Bo Li")
    repo.git("pull", "-q", "--ff-only")
    live = (await client.events(1))[0]
    assert commit_of(live)["sha"] == bo  # type: ignore[index]
    await client.close()
    assert daemon.stop() == 0

    # Replayed after a restart, from the state file: the same commit.
    again = daemon_factory(repo.root, backend="sqlite").start()
    again.wait_healthy()
    client = await Client.connect(again.ws_url())
    await client.subscribe(since={"epoch": subscribed["epoch"], "seq": subscribed["seq"]})
    replayed = (await client.events(1))[0]
    assert replayed["replay"] is True and commit_of(replayed) == commit_of(live)
    status, history = http_get(again, "/api/stories/INT-2/history")
    assert status == 200 and commit_of(history["events"][0]) == commit_of(live)
    await client.close()
    assert again.stop() == 0

    done = storywatch("history", "INT-2", "--repo", str(repo.root), "--json")
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert [e["seq"] for e in payload["events"]] == [live["seq"]]
    assert commit_of(payload["events"][0]) == commit_of(live)
    text = storywatch("history", "INT-2", "--repo", str(repo.root))
    assert "transitioned  draft → review  by Bo Li" in text.stdout, text.stdout


@pytest.mark.redis
async def test_commit_travels_through_the_redis_stream(
    world: tuple[GitRepo, GitRepo], redis_server: RedisServer, daemon_factory: type[Daemon]
) -> None:
    up, repo = world
    daemon_factory(
        repo.root, command="watch", backend="redis", extra_args=["--redis-url", redis_server.url]
    ).start()
    server = daemon_factory(
        repo.root, command="serve", backend="redis", extra_args=["--redis-url", redis_server.url]
    ).start()
    server.wait_healthy()
    client = await Client.connect(server.ws_url())
    assert len(await wait_for_stories(client, 4)) == 4  # the watcher is watching
    await client.subscribe()
    write_story(repo, "UI-1", "ready")
    plain = (await client.events(1))[0]
    assert commit_of(plain) is None
    repo.git("checkout", "--", ".")
    await client.events(1)
    write_story(up, "UI-1", "done")
    cy = up.commit("UI-1 done", author="Cy Young")
    repo.git("pull", "-q", "--ff-only")
    event = (await client.events(1))[0]
    assert commit_of(event)["sha"] == cy  # type: ignore[index]
    assert commit_of(event)["author"] == "Cy Young"  # type: ignore[index]
    await client.close()


async def test_publish_carries_the_commit_of_each_path(
    tmp_path: Path, daemon_factory: type[Daemon]
) -> None:
    repo = upstream(tmp_path / "repo")
    base = repo.head()
    write_story(repo, "INT-1", "ready")
    bo = repo.commit("INT-1 ready", author="Bo Li")
    write_story(repo, "INT-2", "done", title="x" * 2000)  # a long title: two messages
    repo.git("rm", "-q", "stories/UI-1.md")
    cy = repo.commit("INT-2 done; drop UI-1 " + "with a long subject " * 80, author="Cy Young")
    daemon = daemon_factory(tmp_path / "unused", command="serve").start()
    client = await Client.connect(daemon.ws_url())
    await client.subscribe()
    zero = "0" * 40
    first = storywatch(
        "publish",
        "--from",
        zero,
        "--to",
        base,
        "--repo",
        str(repo.root),
        "--url",
        daemon.http,
        "--token",
        "tok-publisher",
    )
    assert first.returncode == 0, first.stderr
    created = await next_events(client, 4)
    assert {commit_of(e)["sha"] for e in created.values()} == {base}  # type: ignore[index]
    done = storywatch(
        "publish",
        "--from",
        base,
        "--to",
        repo.head(),
        "--repo",
        str(repo.root),
        "--url",
        daemon.http,
        "--token",
        "tok-publisher",
    )
    assert done.returncode == 0, done.stderr
    events = await next_events(client, 3)
    assert commit_of(events["INT-1"])["sha"] == bo  # type: ignore[index]
    assert commit_of(events["INT-1"])["author"] == "Bo Li"  # type: ignore[index]
    assert commit_of(events["INT-2"])["sha"] == cy  # type: ignore[index]
    assert events["UI-1"]["type"] == "story.deleted"
    assert commit_of(events["UI-1"])["sha"] == cy  # type: ignore[index]
    for event in events.values():
        assert event["source"]["kind"] == "git" and event["source"]["to"] == repo.head()
    await client.close()


@pytest.mark.redis
async def test_publish_into_redis_carries_commits(
    tmp_path: Path, redis_server: RedisServer, daemon_factory: type[Daemon]
) -> None:
    repo = upstream(tmp_path / "repo")
    base = repo.head()
    write_story(repo, "INT-1", "ready")
    bo = repo.commit("INT-1 ready", author="Bo Li")
    write_story(repo, "INT-2", "done")
    cy = repo.commit("INT-2 done", author="Cy Young")
    daemon = daemon_factory(
        tmp_path / "unused",
        command="serve",
        backend="redis",
        extra_args=["--redis-url", redis_server.url],
    ).start()
    daemon.wait_healthy()
    client = await Client.connect(daemon.ws_url())
    await client.subscribe()
    for rev_from, rev_to, count in (("0" * 40, base, 4), (base, repo.head(), 2)):
        done = storywatch(
            "publish",
            "--from",
            rev_from,
            "--to",
            rev_to,
            "--repo",
            str(repo.root),
            "--redis-url",
            redis_server.url,
        )
        assert done.returncode == 0, done.stderr
        events = await next_events(client, count)
    assert commit_of(events["INT-1"])["sha"] == bo  # type: ignore[index]
    assert commit_of(events["INT-2"])["sha"] == cy  # type: ignore[index]
    await client.close()


async def test_a_folder_without_git_has_no_attribution(
    tmp_path: Path, daemon_factory: type[Daemon]
) -> None:
    plain = GitRepo(tmp_path / "plain")
    write_story(plain, "INT-1", "draft")
    daemon = daemon_factory(plain.root).start()
    daemon.wait_healthy()
    client = await Client.connect(daemon.ws_url())
    await client.subscribe()
    write_story(plain, "INT-1", "done")
    event = (await client.events(1))[0]
    assert "git" not in event["source"]
    status, history = http_get(daemon, "/api/stories/INT-1/history")
    assert status == 200 and history["commits"] == [] and len(history["events"]) == 1
    cli = storywatch("history", "INT-1", "--repo", str(plain.root), "--json")
    assert cli.returncode == 1  # no commit and no event (the memory backend kept none)
    await client.close()
