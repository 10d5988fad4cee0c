"""gitdiff: the events between two revisions, read from a real temp git repo."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from storywatch.errors import GitError
from storywatch.gitdiff import (
    Git,
    diff_revisions,
    index_of,
    is_zero_sha,
    parse_batch,
    parse_ls_tree,
    parse_raw_diff,
)
from storywatch.index import Index
from storywatch.paths import PathRules
from storywatch.story import parse_story

ZERO = "0" * 40
AUTHOR = "Ada Lovelace <ada@example.com>"
# A fixed author and date, and no user or system git config (signing, hooks, templates).
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Ada Lovelace",
    "GIT_AUTHOR_EMAIL": "ada@example.com",
    "GIT_AUTHOR_DATE": "2026-01-02T03:04:05Z",
    "GIT_COMMITTER_NAME": "Ada Lovelace",
    "GIT_COMMITTER_EMAIL": "ada@example.com",
    "GIT_COMMITTER_DATE": "2026-01-02T03:04:05Z",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}
BUNDLES = Path(__file__).resolve().parents[2] / "shared" / "data"


def story_text(
    story_id: str,
    status: str = "draft",
    title: str | None = None,
    epic: str = "core",
    body: str = "Some body.\n",
) -> str:
    title = title or f"Story {story_id}"
    return f"---\nid: {story_id}\ntitle: {title}\nstatus: {status}\nepic: {epic}\n---\n\n{body}"


class GitRepo:
    """A real git checkout in a temp folder, committed with a fixed author."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str, cwd: Path | None = None) -> str:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd or self.root,
            capture_output=True,
            text=True,
            env={**os.environ, **GIT_ENV},
            check=True,
        )
        return done.stdout.strip()

    def write(self, rel: str, text: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def story(self, rel: str, story_id: str, **fields: str) -> Path:
        return self.write(rel, story_text(story_id, **fields))

    def commit(self, message: str = "change") -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")


def branch_fixture(root: Path) -> tuple[GitRepo, str, str]:
    """main: five stories; the next commit changes one of each kind.

    S-1 status draft → ready (transitioned), S-2 title (updated), S-3 deleted, S-4 renamed
    (moved), S-6 new (created); S-5 untouched.
    """
    repo = GitRepo(root)
    for n in range(1, 6):
        repo.story(f"stories/S-{n}.md", f"S-{n}")
    repo.write("README.md", "# Not a story\n")
    base = repo.commit("base")
    repo.story("stories/S-1.md", "S-1", status="ready")
    repo.story("stories/S-2.md", "S-2", title="A better title")
    (repo.root / "stories/S-3.md").unlink()
    (repo.root / "stories/done").mkdir()
    repo.git("mv", "stories/S-4.md", "stories/done/S-4.md")
    repo.story("stories/S-6.md", "S-6")
    head = repo.commit("branch")
    return repo, base, head


def types_of(result: object) -> dict[str, str]:
    drafts = getattr(result, "drafts")  # noqa: B009 - keeps the helper typed loosely
    return {d.story_id: d.type for d in drafts}


# -- parsing git output ----------------------------------------------------------------


def test_parse_raw_diff_with_rename_and_delete() -> None:
    oid = "a" * 40
    raw = (
        f":100644 100644 {oid} {oid} M\0a.md\0"
        f":100644 100644 {oid} {oid} R087\0old.md\0new.md\0"
        f":100644 000000 {oid} {ZERO} D\0gone.md\0"
    ).encode()
    changes = parse_raw_diff(raw)
    assert [(c.status, c.path, c.old_path) for c in changes] == [
        ("M", "a.md", None),
        ("R", "new.md", "old.md"),
        ("D", "gone.md", None),
    ]


def test_parse_batch_reads_sizes_not_lines() -> None:
    raw = b"aaa blob 6\nx\ny\nz\n\nbbb missing\nccc blob 0\n\n"
    assert parse_batch(raw) == {"aaa": b"x\ny\nz\n", "ccc": b""}


def test_parse_ls_tree_keeps_regular_files_under_the_prefix() -> None:
    raw = (
        b"100644 blob 111\tdocs/a.md\x00120000 blob 222\tdocs/link.md\x00"
        b"160000 commit 333\tdocs/sub\x00100644 blob 444\tother/b.md\x00"
    )
    files = parse_ls_tree(raw, "docs/")
    assert [(f.path, f.oid) for f in files] == [("a.md", "111")]


def test_zero_sha() -> None:
    assert is_zero_sha(ZERO) and is_zero_sha("0" * 64)
    assert not is_zero_sha("0" * 39) and not is_zero_sha("HEAD")


def test_index_of_matches_one_big_apply() -> None:
    results = {
        "b.md": parse_story("b.md", b"---\nid: X\n---\n"),
        "a.md": parse_story("a.md", b"---\nid: X\n---\n"),
        "c.md": parse_story("c.md", b"---\nid: [\n---\n"),
        "d.md": parse_story("d.md", b"---\nid: Y\n---\n"),
    }
    one = Index()
    one.apply(results)
    built = index_of(results)
    assert built.owner == one.owner == {"X": "a.md", "Y": "d.md"}
    assert set(built.dupes) == set(one.dupes) == {"b.md"}


# -- diffs between revisions -----------------------------------------------------------


def test_branch_gives_one_event_of_each_kind(tmp_path: Path) -> None:
    repo, base, head = branch_fixture(tmp_path / "repo")
    result = diff_revisions(repo.root, base, head)
    assert types_of(result) == {
        "S-1": "story.transitioned",
        "S-2": "story.updated",
        "S-3": "story.deleted",
        "S-4": "story.moved",
        "S-6": "story.created",
    }
    by_id = {d.story_id: result.event_json(d) for d in result.drafts}
    assert by_id["S-1"]["from"] == "draft" and by_id["S-1"]["to"] == "ready"
    assert by_id["S-4"]["old_path"] == "stories/S-4.md"
    assert by_id["S-4"]["path"] == "stories/done/S-4.md"
    assert by_id["S-2"]["changes"] == {"title": {"old": "Story S-2", "new": "A better title"}}
    assert by_id["S-3"]["story"]["title"] == "Story S-3"  # the last known state
    assert result.source == {"kind": "git", "from": base, "to": head, "author": AUTHOR}
    assert result.time == "2026-01-02T03:04:05.000Z"
    event = by_id["S-6"]
    assert list(event)[:2] == ["type", "time"] and "seq" not in event and "epoch" not in event


def test_rename_with_a_status_change_is_a_transition_with_old_path(tmp_path: Path) -> None:
    repo = GitRepo(tmp_path / "repo")
    repo.story("todo/S-1.md", "S-1")
    base = repo.commit()
    repo.git("mv", "todo/S-1.md", "S-1.md")
    repo.story("S-1.md", "S-1", status="done")
    head = repo.commit()
    (draft,) = diff_revisions(repo.root, base, head).drafts
    assert draft.type == "story.transitioned" and draft.old_path == "todo/S-1.md"


def test_working_tree_includes_untracked_files(tmp_path: Path) -> None:
    repo, _base, head = branch_fixture(tmp_path / "repo")
    repo.story("stories/S-5.md", "S-5", status="done")  # uncommitted edit
    repo.story("stories/new/S-7.md", "S-7")  # untracked
    (repo.root / "stories/S-6.md").unlink()  # uncommitted delete
    repo.write(".gitignore", "ignored/\n")
    repo.story("ignored/S-8.md", "S-8")  # ignored by git: not part of the diff
    result = diff_revisions(repo.root, head)
    assert types_of(result) == {
        "S-5": "story.transitioned",
        "S-7": "story.created",
        "S-6": "story.deleted",
    }
    assert result.source == {"kind": "git", "from": head, "to": None, "author": None}


def test_zero_sha_is_the_empty_tree(tmp_path: Path) -> None:
    repo, base, _head = branch_fixture(tmp_path / "repo")
    created = diff_revisions(repo.root, ZERO, base)
    assert Counter(types_of(created).values()) == {"story.created": 5}
    assert created.source["from"] == ZERO
    deleted = diff_revisions(repo.root, base, ZERO)
    assert Counter(types_of(deleted).values()) == {"story.deleted": 5}
    assert deleted.source["to"] == ZERO and deleted.source["author"] is None


def test_invalid_and_duplicate_stories(tmp_path: Path) -> None:
    repo = GitRepo(tmp_path / "repo")
    repo.story("a.md", "A")
    repo.story("b.md", "B")
    base = repo.commit()
    repo.write("a.md", "---\nid: A\ntitle: [unclosed\n---\n")
    repo.story("c.md", "B")  # a second file with B's id
    head = repo.commit()
    result = diff_revisions(repo.root, base, head)
    errors = {d.path: d.error.reason for d in result.drafts if d.error is not None}
    assert errors == {"a.md": "yaml", "c.md": "duplicate_id"}
    assert result.index.get("A") is not None  # the last good state is kept


def test_story_root_in_a_sub_folder_and_path_rules(tmp_path: Path) -> None:
    repo = GitRepo(tmp_path / "repo")
    repo.story("backlog/tasks/T-1.md", "T-1")
    repo.story("backlog/drafts/T-2.md", "T-2")
    repo.story("elsewhere/X-1.md", "X-1")
    base = repo.commit()
    repo.story("backlog/tasks/T-1.md", "T-1", status="done")
    repo.story("backlog/drafts/T-2.md", "T-2", status="done")
    repo.story("elsewhere/X-1.md", "X-1", status="done")
    head = repo.commit()
    rules = PathRules(exclude=["drafts/**"])
    result = diff_revisions(repo.root / "backlog", base, head, rules=rules)
    assert [(d.story_id, d.path) for d in result.drafts] == [("T-1", "tasks/T-1.md")]
    worktree = diff_revisions(repo.root / "backlog", ZERO, rules=rules)
    assert {d.path for d in worktree.drafts} == {"tasks/T-1.md"}


def test_unknown_revision_and_not_a_repo(tmp_path: Path) -> None:
    repo, _base, _head = branch_fixture(tmp_path / "repo")
    with pytest.raises(GitError, match="unknown revision 'nope'"):
        diff_revisions(repo.root, "nope")
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(GitError, match="git"):
        Git(plain)


def test_shallow_clone_missing_rev_a_says_how_to_fix(tmp_path: Path) -> None:
    repo, base, head = branch_fixture(tmp_path / "repo")
    clone = tmp_path / "clone"
    repo.git("clone", "-q", "--depth", "1", f"file://{repo.root}", str(clone))
    with pytest.raises(GitError, match=r"shallow.*fetch-depth: 0"):
        diff_revisions(clone, base, head)


@pytest.mark.skipif(
    not (BUNDLES / "ariadne-backlog-history.bundle").exists() or shutil.which("git") is None,
    reason="the shared history bundles are not here",
)
def test_real_history_diffs_agree_with_the_trees(tmp_path: Path) -> None:
    """Replay real commits: the index the diffs build must be the index of each tree."""
    root = tmp_path / "ariadne"
    subprocess.run(
        [
            "git",
            "clone",
            "-q",
            "-b",
            "backlog-only",
            str(BUNDLES / "ariadne-backlog-history.bundle"),
            str(root),
        ],
        check=True,
        env={**os.environ, **GIT_ENV},
    )
    revs = subprocess.run(
        ["git", "rev-list", "--reverse", "--first-parent", "HEAD"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[:12]
    git = Git(root)
    kinds: Counter[str] = Counter()
    for rev_a, rev_b in itertools.pairwise(revs):
        result = diff_revisions(root, rev_a, rev_b)
        kinds.update(d.type for d in result.drafts)
        files = [f for f in git.tree_files(rev_b) if f.path.endswith(".md")]
        blobs = git.blobs(f.oid for f in files)
        tree = index_of({f.path: parse_story(f.path, blobs[f.oid]) for f in files})
        assert set(result.index.stories) == set(tree.stories), rev_b
        broken = {story_id for _path, story_id, _error in result.index.problems()}
        for story_id, story in tree.stories.items():
            if story_id not in broken:
                assert result.index.stories[story_id].fields == story.fields, story_id
    assert kinds["story.created"] > 0
