"""Real data: replay 60 consecutive commits of a public backlog in a watched checkout.

``../shared/data/backlog-md-history.bundle`` (MrLesk/Backlog.md's ``backlog/`` folder, MIT)
is cloned, checked out at its first commit, and watched by the real daemon. Then each next
commit is checked out with ``git checkout``; after each, the events are checked against the
diff of the two trees, computed by the pure code (``parse_story`` + ``Index.apply``).

The window (commits 1-60) has story statuses with spaces (``To Do``, ``In Progress``),
quoted dates, files whose YAML does not parse (never stories: no event, also when git moves
them), repeated ids (``duplicate_id``), deletions, edits, and one commit that moves 80+
stories from ``tasks/`` to ``completed/``.
"""

from __future__ import annotations

import collections
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from storywatch.story import ParseError, parse_story
from tests.integration.daemon import Daemon
from tests.integration.test_editors import Clients, assert_consecutive, assert_event
from tests.integration.test_git import Blobs, compare, diff_trees, git, index_of, tree_files

pytestmark = pytest.mark.integration

BUNDLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "backlog-md-history.bundle"
START = 0  # first-parent index of the commit the daemon starts on
STEPS = 60  # consecutive commits replayed after it


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    async with Clients() as pool:
        yield pool


@pytest.fixture
def backlog(tmp_path: Path) -> Path:
    if not BUNDLE.is_file():
        pytest.skip(f"no {BUNDLE}")
    checkout = tmp_path / "backlog"
    subprocess.run(
        ["git", "clone", "-q", "-b", "backlog-only", str(BUNDLE), str(checkout)],
        check=True,
        capture_output=True,
    )
    return checkout


async def test_replay_backlog_history(
    backlog: Path, daemon_factory: type[Daemon], clients: Clients
) -> None:
    commits = git(backlog, "rev-list", "--first-parent", "--reverse", "HEAD").split()
    window = commits[START : START + STEPS + 1]
    assert len(window) == STEPS + 1
    git(backlog, "checkout", "-q", "--detach", window[0])

    blobs = Blobs(backlog)
    tree = tree_files(backlog, window[0])
    index = index_of(tree, blobs)
    # the data is what the test claims it is
    broken_yaml = [
        p
        for p, sha in tree.items()
        if isinstance(r := parse_story(p, blobs.get(sha)), ParseError) and r.reason == "yaml"
    ]
    assert len(broken_yaml) >= 10
    assert any(" " in str(s.status) for s in index.stories.values())

    daemon = daemon_factory(
        backlog, config={"watch": {"settle_ms": 20, "delete_grace_ms": 100}}
    ).start()
    health = daemon.wait_healthy()
    assert health["stories"] == len(index.stories)
    client, subscribed = await clients.subscribed(daemon)
    epoch, seq = subscribed["epoch"], subscribed["seq"]

    totals: collections.Counter[str] = collections.Counter()
    problems: list[str] = []
    for n, sha in enumerate(window[1:], start=START + 1):
        new_tree = tree_files(backlog, sha)
        drafts = diff_trees(index, tree, new_tree, blobs)
        tree = new_tree
        git(backlog, "checkout", "-q", "--detach", sha)
        events = await client.events(len(drafts), timeout=10)
        await client.no_event(0.15)  # > delete_grace_ms: nothing held spills over
        totals.update(d.type for d in drafts)
        assert_consecutive(events, seq)
        seq += len(events)
        for event in events:
            assert_event(event, epoch)
            git_source = event["source"].get("git")
            if git_source is not None:
                head = {k: v for k, v in git_source.items() if k != "commit"}
                assert head == {"head": sha, "branch": None}, (n, event["source"])
        if events and not any("git" in e["source"] for e in events):
            problems.append(f"commit {n} {sha[:8]}: no event carries source.git")
        try:
            compare(events, drafts)
        except AssertionError as exc:
            raise AssertionError(f"commit {n} {sha[:8]}: {exc}"[:4000]) from None

    assert not problems, problems
    # the window exercised every kind of change
    assert {
        "story.created",
        "story.deleted",
        "story.transitioned",
        "story.moved",
        "story.updated",
        "story.invalid",
    } <= set(totals), totals
    assert totals["story.moved"] >= 80
    # the final state matches the last tree, story by story
    _, snapshot = await client.subscribe("final", {}, snapshot=True)
    expected: dict[str, Any] = {sid: s.fields for sid, s in index.stories.items()}
    assert {s["id"]: s for s in snapshot} == expected
