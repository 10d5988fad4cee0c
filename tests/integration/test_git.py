"""git operations in a watched checkout: ``git mv`` and branch checkouts.

The expected events of a checkout are computed from the two trees with the pure code
(``parse_story`` + ``Index.apply``), then compared with what the daemon sends.
"""

from __future__ import annotations

import collections
import os
import subprocess
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest

from storywatch.events import Draft
from storywatch.index import Index
from storywatch.paths import PathRules
from storywatch.story import parse_story
from tests.integration.daemon import Client, Daemon
from tests.integration.test_editors import Clients, assert_consecutive, assert_event

pytestmark = pytest.mark.integration

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Ada",
    "GIT_AUTHOR_EMAIL": "ada@example.com",
    "GIT_COMMITTER_NAME": "Ada",
    "GIT_COMMITTER_EMAIL": "ada@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}


# -- helpers shared with test_backlog_replay --------------------------------------------


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV},
    )
    return result.stdout.strip()


def tree_files(repo: Path, rev: str, rules: PathRules | None = None) -> dict[str, str]:
    """path → blob sha of every file at ``rev`` that may be a story."""
    rules = rules or PathRules()
    out = subprocess.run(
        ["git", "-C", str(repo), "ls-tree", "-r", "-z", rev],
        check=True,
        capture_output=True,
    ).stdout.decode()
    files = {}
    for entry in out.split("\0"):
        if not entry:
            continue
        meta, path = entry.split("\t", 1)
        _mode, kind, sha = meta.split()
        if kind == "blob" and rules.wanted(path):
            files[path] = sha
    return files


class Blobs:
    """Reads blobs of one repository, each once."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.cache: dict[str, bytes] = {}

    def get(self, sha: str) -> bytes:
        if sha not in self.cache:
            self.cache[sha] = subprocess.run(
                ["git", "-C", str(self.repo), "cat-file", "blob", sha],
                check=True,
                capture_output=True,
            ).stdout
        return self.cache[sha]

    def prefetch(self, shas: Iterable[str]) -> None:
        missing = sorted(set(shas) - set(self.cache))
        if not missing:
            return
        out = subprocess.run(
            ["git", "-C", str(self.repo), "cat-file", "--batch"],
            check=True,
            input="\n".join(missing).encode() + b"\n",
            capture_output=True,
        ).stdout
        pos = 0
        for sha in missing:
            header_end = out.index(b"\n", pos)
            _sha, _kind, size = out[pos:header_end].split()
            start = header_end + 1
            self.cache[sha] = out[start : start + int(size)]
            pos = start + int(size) + 1


def index_of(files: dict[str, str], blobs: Blobs) -> Index:
    blobs.prefetch(files.values())
    index = Index()
    index.apply({path: parse_story(path, blobs.get(sha)) for path, sha in files.items()})
    return index


def diff_trees(index: Index, old: dict[str, str], new: dict[str, str], blobs: Blobs) -> list[Draft]:
    """Move ``index`` from tree ``old`` to tree ``new``; the events that takes."""
    changed = sorted(p for p in set(old) | set(new) if old.get(p) != new.get(p))
    blobs.prefetch(new[p] for p in changed if p in new)
    return index.apply(
        {p: (parse_story(p, blobs.get(new[p])) if p in new else None) for p in changed}
    )


def without_commit(event: dict[str, Any]) -> dict[str, Any] | None:
    """``source.git`` without ``commit``, which a checkout's events carry (SPEC §11) unless
    ``git log -1 HEAD -- PATH`` has none (a file only ever on the other branch)."""
    git = event["source"].get("git")
    if git is None:
        return None
    return {k: v for k, v in git.items() if k != "commit"}


def kinds(events: Iterable[Any]) -> collections.Counter[tuple[str, str]]:
    out: collections.Counter[tuple[str, str]] = collections.Counter()
    for event in events:
        if isinstance(event, Draft):
            out[(event.type, event.story_id)] += 1
        else:
            out[(event["type"], event["story_id"])] += 1
    return out


def compare(events: list[dict[str, Any]], drafts: list[Draft]) -> None:
    """Same (type, id) multiset, and the same content for each."""
    assert kinds(events) == kinds(drafts), (
        sorted(kinds(events) - kinds(drafts)),
        sorted(kinds(drafts) - kinds(events)),
    )
    by_key = {(d.type, d.story_id, d.path): d.to_json() for d in drafts}
    for event in events:
        expected = by_key[(event["type"], event["story_id"], event["path"])]
        for key, value in expected.items():
            if key == "error":
                assert event["error"]["reason"] == value["reason"], (event, value)
            else:
                assert event[key] == value, (key, event, expected)


# -- a git checkout of fixtures/stories ---------------------------------------------------

NEXT_STATUS = {
    "draft": "ready",
    "ready": "in-progress",
    "in-progress": "review",
    "review": "done",
    "done": "draft",
    "blocked": "ready",
}


@pytest.fixture
def git_repo(repo: Path) -> Path:
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "stories")
    return repo


def make_feature_branch(repo: Path) -> dict[str, Any]:
    """A branch changing many stories; returns what was done, for the reader."""
    git(repo, "checkout", "-q", "-b", "feature")
    paths = sorted(p for p in tree_files(repo, "HEAD") if "id:" in (repo / p).read_text()[:400])
    stories = [p for p in paths if (repo / p).read_text().startswith("---")]
    done: dict[str, Any] = {"status": [], "deleted": [], "renamed": [], "created": []}
    # 20 status changes
    for rel in stories[:20]:
        path = repo / rel
        text = path.read_text()
        status = next(
            line.split(":", 1)[1].strip()
            for line in text.splitlines()
            if line.startswith("status:")
        )
        path.write_text(text.replace(f"status: {status}", f"status: {NEXT_STATUS[status]}", 1))
        done["status"].append(rel)
    # 2 deletions, 2 pure renames, 1 rename with a status change, 1 body edit
    for rel in stories[20:22]:
        git(repo, "rm", "-q", rel)
        done["deleted"].append(rel)
    (repo / "archive").mkdir()
    for rel in stories[22:25]:
        git(repo, "mv", rel, f"archive/{Path(rel).name}")
        done["renamed"].append(rel)
    moved_and_edited = repo / "archive" / Path(stories[24]).name
    text = moved_and_edited.read_text()
    status = next(
        line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("status:")
    )
    moved_and_edited.write_text(
        text.replace(f"status: {status}", f"status: {NEXT_STATUS[status]}", 1)
    )
    body = repo / stories[25]
    body.write_text(body.read_text() + "\nOne more paragraph.\n")
    # a story whose YAML breaks, and a file taking an existing id
    broken = repo / stories[26]
    broken.write_text(broken.read_text().replace("labels: [", "labels: [[", 1))
    dup_source = (repo / stories[27]).read_text()
    (repo / "archive" / "duplicate.md").write_text(dup_source.replace("title:", "title: Dup", 1))
    # 3 new stories
    for n in range(3):
        (repo / "archive" / f"NEW-{n}.md").write_text(
            f"---\nid: NEW-{n}\ntitle: New {n}\nepic: ui\nstatus: draft\n"
            f"created: 2025-10-0{n + 1}\n---\nBody {n}\n"
        )
        done["created"].append(f"archive/NEW-{n}.md")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "feature: many changes")
    git(repo, "checkout", "-q", "main")
    return done


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    async with Clients() as pool:
        yield pool


@pytest.fixture
async def git_live(
    git_repo: Path, daemon_factory: type[Daemon], clients: Clients
) -> tuple[Daemon, Client, dict[str, Any]]:
    daemon = daemon_factory(git_repo).start()
    daemon.wait_healthy()
    client, subscribed = await clients.subscribed(daemon)
    return daemon, client, subscribed


async def test_git_mv_is_moved(
    git_live: tuple[Daemon, Client, dict[str, Any]], git_repo: Path
) -> None:
    _daemon, client, subscribed = git_live
    (git_repo / "ui" / "done").mkdir()
    git(git_repo, "mv", "ui/UI-005-dark-mode.md", "ui/done/UI-005-dark-mode.md")
    (event,) = await client.events(1)
    assert_event(
        event,
        client.welcome["epoch"],
        type="story.moved",
        story_id="UI-005",
        path="ui/done/UI-005-dark-mode.md",
        subs=["s1"],
    )
    assert event["old_path"] == "ui/UI-005-dark-mode.md"
    assert event["changes"] == {} and event["body_changed"] is False
    assert event["seq"] == subscribed["seq"] + 1
    assert "git" not in event["source"]  # HEAD did not move
    await client.no_event()
    # committing the move is no change to the files: nothing
    git(git_repo, "commit", "-q", "-m", "move UI-005")
    await client.no_event()


async def test_git_mv_folder_moves_each_story(
    git_live: tuple[Daemon, Client, dict[str, Any]], git_repo: Path
) -> None:
    _daemon, client, subscribed = git_live
    git(git_repo, "mv", "security/auth", "security/identity")
    events = await client.events(3)
    assert sorted(e["story_id"] for e in events) == ["SEC-001", "SEC-002", "SEC-005"]
    for event in events:
        assert_event(event, client.welcome["epoch"], type="story.moved")
        assert event["old_path"].startswith("security/auth/")
        assert event["path"].startswith("security/identity/")
    assert_consecutive(events, subscribed["seq"])
    await client.no_event()


async def _checkout(
    client: Client, repo: Path, rev: str, drafts: list[Draft], after_seq: int
) -> list[dict[str, Any]]:
    git(repo, "checkout", "-q", rev)
    events = await client.events(len(drafts), timeout=5)
    await client.no_event()
    assert_consecutive(events, after_seq)
    return events


async def test_checkout_branch_gives_exactly_the_right_events(
    git_repo: Path, daemon_factory: type[Daemon], clients: Clients
) -> None:
    done = make_feature_branch(git_repo)
    blobs = Blobs(git_repo)
    main_tree = tree_files(git_repo, "main")
    feature_tree = tree_files(git_repo, "feature")
    index = index_of(main_tree, blobs)
    forward = diff_trees(index, main_tree, feature_tree, blobs)
    feature_state = {sid: s.fields for sid, s in index.stories.items()}
    backward = diff_trees(index, feature_tree, main_tree, blobs)
    main_state = {sid: s.fields for sid, s in index.stories.items()}
    # the branch really exercises every kind of change
    forward_types = collections.Counter(d.type for d in forward)
    assert forward_types["story.transitioned"] == 21, forward_types
    assert forward_types["story.created"] == 3 and forward_types["story.deleted"] == 2
    assert forward_types["story.moved"] == 2 and forward_types["story.updated"] == 1
    assert forward_types["story.invalid"] == 2  # broken YAML + duplicate id
    assert len(done["status"]) == 20

    daemon = daemon_factory(git_repo).start()
    daemon.wait_healthy()
    client, subscribed = await clients.subscribed(daemon)
    epoch = client.welcome["epoch"]

    events = await _checkout(client, git_repo, "feature", forward, subscribed["seq"])
    head = git(git_repo, "rev-parse", "HEAD")
    compare(events, forward)
    for event in events:
        assert_event(event, epoch, subs=["s1"])
        assert event["source"]["kind"] == "fs"
        assert without_commit(event) == {"head": head, "branch": "feature"}, event
    _, snapshot = await client.subscribe("snap1", snapshot=True)
    assert {s["id"]: s for s in snapshot} == feature_state

    events = await _checkout(client, git_repo, "main", backward, events[-1]["seq"])
    head = git(git_repo, "rev-parse", "HEAD")
    compare(events, backward)
    for event in events:
        assert without_commit(event) == {"head": head, "branch": "main"}, event
    _, snapshot = await client.subscribe("snap2", snapshot=True)
    assert {s["id"]: s for s in snapshot} == main_state


async def test_checkout_detached_head(
    git_repo: Path, daemon_factory: type[Daemon], clients: Clients
) -> None:
    make_feature_branch(git_repo)
    feature_sha = git(git_repo, "rev-parse", "feature")
    blobs = Blobs(git_repo)
    main_tree, feature_tree = tree_files(git_repo, "main"), tree_files(git_repo, "feature")
    drafts = diff_trees(index_of(main_tree, blobs), main_tree, feature_tree, blobs)
    daemon = daemon_factory(git_repo).start()
    daemon.wait_healthy()
    client, _subscribed = await clients.subscribed(daemon, filter={"events": ["story.deleted"]})
    git(git_repo, "checkout", "-q", "--detach", feature_sha)
    deleted = [d for d in drafts if d.type == "story.deleted"]
    events = await client.events(len(deleted), timeout=5)
    await client.no_event()
    assert kinds(events) == kinds(deleted)
    for event in events:
        assert without_commit(event) == {"head": feature_sha, "branch": None}


async def test_batch_size_counts_the_events_of_the_batch(
    git_repo: Path, daemon_factory: type[Daemon], clients: Clients
) -> None:
    """Events sharing a ``source.batch`` are ``batch_size`` many (deletes included)."""
    make_feature_branch(git_repo)
    blobs = Blobs(git_repo)
    main_tree, feature_tree = tree_files(git_repo, "main"), tree_files(git_repo, "feature")
    drafts = diff_trees(index_of(main_tree, blobs), main_tree, feature_tree, blobs)
    daemon = daemon_factory(git_repo).start()
    daemon.wait_healthy()
    client, subscribed = await clients.subscribed(daemon)
    events = await _checkout(client, git_repo, "feature", drafts, subscribed["seq"])
    batches: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for event in events:
        batches[event["source"]["batch"]].append(event)
    for batch, members in batches.items():
        sizes = {e["source"]["batch_size"] for e in members}
        assert sizes == {len(members)}, (
            batch,
            sizes,
            len(members),
            sorted(e["type"] for e in members),
        )


async def test_edit_after_commit_has_no_git_source(
    git_live: tuple[Daemon, Client, dict[str, Any]], git_repo: Path
) -> None:
    """``source.git`` marks batches during which HEAD moved, not a later plain edit."""
    _daemon, client, _ = git_live
    path = git_repo / "ui" / "UI-005-dark-mode.md"
    path.write_text(path.read_text().replace("priority: low", "priority: high", 1))
    (first,) = await client.events(1)
    assert "git" not in first["source"]
    git(git_repo, "commit", "-q", "-am", "priority")  # HEAD moves, no story file changes
    await client.no_event()
    path.write_text(path.read_text().replace("priority: high", "priority: medium", 1))
    (second,) = await client.events(1)
    assert second["type"] == "story.updated"
    assert "git" not in second["source"], second["source"]
