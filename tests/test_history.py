"""history: the story timeline's pure parts, git log --follow on real repositories, and the
real backlog histories in shared/data (checked against git log parsed here)."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from storywatch.events import Draft, number
from storywatch.filters import Scope
from storywatch.gitlog import story_commits
from storywatch.history import (
    find_story,
    parse_batch_answers,
    parse_follow_log,
    parse_limit,
    status_changes,
    story_history,
    timeline_lines,
)
from tests.gitrepo import GitRepo

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.is_dir():  # a worktree under /work/wt/<name>: shared/ is two levels further up
    DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def test_parse_limit() -> None:
    assert parse_limit({}) == 50
    assert parse_limit({"limit": ["1"]}) == 1
    assert parse_limit({"limit": ["500"]}) == 500
    for bad in ("0", "501", "-3", "x", "", "1e2", "2.0"):
        assert parse_limit({"limit": [bad]}) is None, bad


def test_parse_follow_log_follows_renames_back() -> None:
    def record(sha: str, *changes: str) -> str:
        head = f"\x01{sha}\x00A\x00a@x\x002025-01-01T00:00:00+01:00\x00subject {sha}\x00"
        return head + ("\n" + "\0".join(changes) + "\0" if changes else "")

    raw = (
        record("4", "D", "new.md")
        + record("3", "M", "new.md")
        + record("m")  # a merge: nothing listed
        + record("2", "R087", "old.md", "new.md")
        + record("1", "A", "old.md")
    ).encode()
    versions = parse_follow_log(raw, "new.md")
    assert [(v.commit["sha"], v.path, v.present) for v in versions] == [
        ("4", "new.md", False),
        ("3", "new.md", True),
        ("m", "new.md", True),
        ("2", "new.md", True),
        ("1", "old.md", True),
    ]
    assert versions[0].commit["time"] == "2025-01-01T00:00:00+01:00"


def test_parse_batch_answers_keeps_the_order_asked() -> None:
    raw = b"aa blob 3\nabc\nx:./y missing\nbb blob 0\n\n"
    assert parse_batch_answers(raw, 3) == [b"abc", None, b""]
    assert parse_batch_answers(b"", 2) == [None, None]


def commit(status: Any, sha: str = "s") -> dict[str, Any]:
    return {
        "sha": sha,
        "author": "A",
        "time": "2025-01-01T00:00:00+00:00",
        "status": status,
        "subject": "x",
        "path": "p.md",
    }


def test_status_changes_oldest_first() -> None:
    newest_first = [
        commit(None, "5"),
        commit("done", "4"),
        commit("done", "3"),
        commit("doing", "2"),
        commit("todo", "1"),
    ]
    changes = [(c["sha"], old, new) for c, old, new in status_changes(newest_first)]
    assert changes == [
        ("1", None, "todo"),
        ("2", "todo", "doing"),
        ("3", "doing", "done"),
        ("5", "done", None),
    ]
    lines = timeline_lines({"story_id": "X", "commits": newest_first, "events": []}, "p.md")
    assert lines[0] == "X  p.md"
    assert any("todo → doing" in line for line in lines)


def event(seq: int, kind: str, story: dict[str, Any], changes: dict[str, Any]) -> Any:
    draft = Draft(kind, story["id"], story["path"], story, changes)  # type: ignore[arg-type]
    return number(draft, seq, "e", "t", {"kind": "fs"})


def test_find_story_scope_deleted_unknown() -> None:
    a1 = {"id": "A", "path": "a.md", "epic": "x", "status": "todo"}
    a2 = {**a1, "status": "done"}
    events = [
        event(1, "story.created", a1, {}),
        event(2, "story.transitioned", a2, {"status": {"old": "todo", "new": "done"}}),
        event(3, "story.created", {"id": "B", "path": "b.md", "epic": "y"}, {}),
        event(4, "story.deleted", a2, {}),
    ]
    found = find_story("A", None, events, Scope(), 50)  # deleted: still has its history
    assert found is not None and found.path == "a.md"
    assert [e["seq"] for e in found.events] == [4, 2, 1]
    assert [e["seq"] for e in find_story("A", None, events, Scope(), 2).events] == [4, 2]  # type: ignore[union-attr]
    assert find_story("A", None, events, Scope(frozenset({"y"})), 50) is None  # out of scope
    assert find_story("C", None, events, Scope(), 50) is None  # never known
    live = find_story("B", {"id": "B", "path": "b2.md", "epic": "y"}, events, Scope(), 50)
    assert live is not None and live.path == "b2.md"


async def test_story_history_answers() -> None:
    story = {"id": "A", "path": "a.md"}
    events = [event(1, "story.created", story, {})]

    async def commits_of(path: str, limit: int) -> list[dict[str, Any]]:
        return [commit("todo")][:limit]

    status, body = await story_history("A", story, events, Scope(), {}, commits_of)
    assert status == 200 and body["story_id"] == "A" and len(body["commits"]) == 1
    status, body = await story_history("A", story, events, Scope(), {"limit": ["0"]}, None)
    assert (status, body["error"]["code"]) == (400, "bad_request")
    status, body = await story_history("Z", None, events, Scope(), {}, commits_of)
    assert (status, body["error"]["code"]) == (404, "not_found")
    status, body = await story_history("A", story, events, Scope(), {}, None)
    assert status == 200 and body["commits"] == []


async def test_story_commits_on_a_real_repo(tmp_path: Path) -> None:
    repo = GitRepo.init(tmp_path / "r")
    repo.story("sub/a.md", "A", "todo")
    repo.commit("add A", author="Ada")
    repo.story("sub/a.md", "A", "doing")
    repo.commit("start A", author="Bo Li", zone="+0200")
    repo.git("mv", "sub/a.md", "sub/renamed.md")
    repo.commit("rename A", author="Cy")
    repo.write("sub/renamed.md", "---\nid: A\nstatus: [broken\n---\n")
    repo.commit("break A", author="Cy")
    # The story root is a sub-folder of the checkout: paths are relative to it.
    commits = await story_commits(repo.root / "sub", "renamed.md", 50)
    assert [(c["subject"], c["path"], c["status"], c["author"]) for c in commits] == [
        ("break A", "renamed.md", None, "Cy"),
        ("rename A", "renamed.md", "doing", "Cy"),
        ("start A", "a.md", "doing", "Bo Li"),
        ("add A", "a.md", "todo", "Ada"),
    ]
    assert commits[2]["time"].endswith("+02:00") and commits[2]["email"] == "bo@example.com"
    assert len(await story_commits(repo.root / "sub", "renamed.md", 2)) == 2
    assert await story_commits(tmp_path, "renamed.md", 50) == []  # not a checkout
    assert await story_commits(repo.root / "sub", "renamed.md", 50, timeout=0) == []


# -- the real backlogs -------------------------------------------------------------------

_STATUS = re.compile(rb"^status:\s*['\"]?(.*?)['\"]?\s*$", re.M)


def own_timeline(root: Path, path: str) -> list[tuple[str, str, str | None]]:
    """(sha, path then, status then) newest first, from git log parsed here."""
    out = subprocess.run(
        ["git", "log", "--follow", "--format=@%H", "--name-status", "HEAD", "--", path],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows: list[tuple[str, str, str | None]] = []
    sha = ""
    for line in out.splitlines():
        if line.startswith("@"):
            sha = line[1:]
            continue
        if not line.strip():
            continue
        parts = line.split("\t")
        here = parts[2] if parts[0].startswith("R") else parts[1]
        status = None
        if not parts[0].startswith("D"):
            blob = subprocess.run(
                ["git", "show", f"{sha}:{here}"], cwd=root, capture_output=True, check=True
            ).stdout
            front = blob.split(b"\n---", 1)[0]
            match = _STATUS.search(front)
            status = match.group(1).decode() if match else None
        rows.append((sha, here, status))
    return rows


@pytest.mark.parametrize(
    ("bundle", "story_id", "path"),
    [
        (
            "backlog-md-history.bundle",
            "BACK-215",
            "completed/back-215 - Implement-TUI-view-for-sequences.md",
        ),
        ("ariadne-backlog-history.bundle", None, None),
    ],
)
def test_status_timeline_of_a_real_story(
    tmp_path: Path, bundle: str, story_id: str | None, path: str | None
) -> None:
    source = DATA / bundle
    if not source.is_file():
        pytest.skip(f"{source} is not here")
    root = tmp_path / "clone"
    subprocess.run(
        ["git", "clone", "-q", "-b", "backlog-only", str(source), str(root)],
        check=True,
        capture_output=True,
    )
    if story_id is None:  # the story whose file has the longest history among a few
        candidates = subprocess.run(
            ["git", "log", "--format=", "--name-only", "-n", "40"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
        for rel in dict.fromkeys(c for c in candidates if c.endswith(".md")):
            if (root / rel).is_file():
                match = re.search(r"^id:\s*(\S+)", (root / rel).read_text(), re.M)
                if match:
                    story_id, path = match.group(1).strip("'\""), rel
                    break
    if story_id is None or path is None or not (root / path).is_file():
        pytest.skip("no story to follow in this bundle")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "storywatch",
            "history",
            story_id,
            "--repo",
            str(root),
            "--json",
            "--limit",
            "500",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["story_id"] == story_id and payload["events"] == []
    mine = own_timeline(root, path)
    assert [(c["sha"], c["path"], c["status"]) for c in payload["commits"]] == mine
    text = subprocess.run(
        [sys.executable, "-m", "storywatch", "history", story_id, "--repo", str(root)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    statuses = [s for _, _, s in reversed(mine)]
    changes = [(a, b) for a, b in itertools.pairwise(statuses) if a != b]
    for old, new in changes:
        assert f"{old or '(none)'} → {new or '(none)'}" in text, text
