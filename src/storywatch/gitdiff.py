"""Stories straight from git objects: the events between two revisions.

Only this module runs ``git`` (as a subprocess: no library, and the user's own git decides
what a revision means). The diff itself is the watcher's: an :class:`Index` is built from
REV_A's story files, then REV_B's changed files are applied to it in one
:meth:`Index.apply`, so a rename (delete old + add new in one apply) comes out as
``story.moved`` and duplicate ids follow the same rules as on disk.

Paths are relative to the story root (``--repo DIR``), which may be a sub-folder of the
checkout; git is always run from that folder with ``--relative``-style options.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from storywatch.errors import GitError
from storywatch.events import Draft, Json, utc_now_iso
from storywatch.index import Index
from storywatch.paths import PathRules
from storywatch.repo import Repo
from storywatch.story import ParseResult, parse_story

# `github.event.before` on a new branch, `after` on a deleted one: "no commit", the empty tree.
_ZERO_SHA: Final = re.compile(r"^0{40}$|^0{64}$")
# Only regular files are stories: symlinks (120000) would be followed blindly and gitlinks
# (160000) are other repositories.
_FILE_MODES: Final = frozenset({"100644", "100755", "100664"})


def is_zero_sha(rev: str) -> bool:
    return _ZERO_SHA.match(rev) is not None


@dataclass(frozen=True, slots=True)
class TreeFile:
    path: str
    mode: str
    oid: str


@dataclass(frozen=True, slots=True)
class FileChange:
    """One record of ``git diff --raw``: ``old_path`` is set on renames and copies."""

    status: str  # A, M, D, R, C, T (the score of R/C is dropped)
    path: str  # the path on the B side (the only path unless renamed or copied)
    old_path: str | None
    new_mode: str
    new_oid: str  # all zeros when the B side is the working tree or the file is gone


@dataclass(frozen=True, slots=True)
class GitDiff:
    """The events between two revisions, and REV_B's index (publish reads bodies from it)."""

    drafts: list[Draft]
    index: Index
    source: Json  # {"kind": "git", "from", "to", "author"}
    time: str  # the `to` commit's date (UTC), or now for the working tree

    def event_json(self, draft: Draft) -> Json:
        """The event as on the wire, without seq, epoch and subs."""
        data = draft.to_json()
        return {"type": data.pop("type"), "time": self.time, **data, "source": self.source}


# -- the git subprocess ----------------------------------------------------------------


class Git:
    """``git`` run in one folder of a checkout; every failure becomes a :class:`GitError`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        if not folder.is_dir():
            raise GitError(f"not a folder: {folder}")
        inside = self.text("rev-parse", "--is-inside-work-tree", what="find the git checkout")
        if inside != "true":
            raise GitError(f"{folder} is not inside a git working tree")
        # Files are addressed as REV:<prefix><path>; paths we report are relative to folder.
        self.prefix = self.text("rev-parse", "--show-prefix", what="find the git checkout")

    def run(self, *args: str, input: bytes | None = None, what: str = "") -> bytes:
        # LC_ALL=C keeps git's messages parseable; no prompt may ever block a CI job.
        env = {**os.environ, "LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0"}
        try:
            done = subprocess.run(
                ["git", *args],
                cwd=self.folder,
                input=input,
                capture_output=True,
                env=env,
                check=False,
            )
        except FileNotFoundError:
            raise GitError("git is not installed (no `git` on PATH)") from None
        if done.returncode != 0:
            message = done.stderr.decode("utf-8", "replace").strip().splitlines()
            detail = message[-1] if message else f"exit code {done.returncode}"
            raise GitError(f"cannot {what or args[0]}: {detail.removeprefix('fatal: ')}")
        return done.stdout

    def text(self, *args: str, what: str = "") -> str:
        return self.run(*args, what=what).decode("utf-8", "replace").strip()

    def is_shallow(self) -> bool:
        return self.text("rev-parse", "--is-shallow-repository") == "true"

    def resolve(self, rev: str) -> str:
        """The full commit id of ``rev``; a clear error when this clone lacks it."""
        try:
            return self.text(
                "rev-parse",
                "--verify",
                "--quiet",
                "--end-of-options",
                f"{rev}^{{commit}}",
                what=f"resolve revision {rev!r}",
            )
        except GitError:
            pass
        if self.is_shallow():
            raise GitError(
                f"revision {rev!r} is not in this clone, which is shallow: fetch more history "
                "(actions/checkout with fetch-depth: 0, or `git fetch --deepen=50`)"
            ) from None
        raise GitError(f"unknown revision {rev!r}: not a commit in {self.folder}") from None

    def empty_tree(self) -> str:
        # Computed, not hard-coded: SHA-256 repositories have a different empty tree id.
        raw = self.run("hash-object", "-t", "tree", "--stdin", input=b"", what="hash a tree")
        return raw.decode().strip()

    def tree_files(self, commit: str) -> list[TreeFile]:
        """Every regular file below the story root at ``commit``."""
        raw = self.run(
            "ls-tree",
            "-r",
            "-z",
            "--full-name",
            commit,
            "--",
            ".",
            what=f"list the files of {commit}",
        )
        return parse_ls_tree(raw, self.prefix)

    def changes(self, rev_a: str, rev_b: str | None) -> list[FileChange]:
        """What changed below the story root from ``rev_a`` to ``rev_b`` (None: work tree)."""
        args = [
            "diff",
            "--raw",
            "-z",
            "-M",
            "--no-abbrev",
            "--relative",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            rev_a,
        ]
        if rev_b is not None:
            args.append(rev_b)
        return parse_raw_diff(self.run(*args, "--", ".", what="diff the revisions"))

    def untracked(self) -> list[str]:
        """New files git does not know yet (but does not ignore) below the story root."""
        raw = self.run(
            "ls-files",
            "-z",
            "--others",
            "--exclude-standard",
            "--",
            ".",
            what="list untracked files",
        )
        return [p for p in raw.decode("utf-8", "surrogateescape").split("\0") if p]

    def blobs(self, oids: Iterable[str]) -> dict[str, bytes]:
        """The contents of many blobs with one ``git cat-file --batch``."""
        wanted = list(dict.fromkeys(oids))
        if not wanted:
            return {}
        raw = self.run(
            "cat-file",
            "--batch",
            input=("\n".join(wanted) + "\n").encode(),
            what="read files from git",
        )
        return parse_batch(raw)

    def author(self, commit: str) -> str:
        return self.text("log", "-1", "--format=%an <%ae>", commit, what="read the commit author")

    def commit_time(self, commit: str) -> str:
        stamp = self.text("log", "-1", "--format=%ct", commit, what="read the commit date")
        when = dt.datetime.fromtimestamp(int(stamp), dt.UTC)
        return utc_now_iso(when)


# -- parsing git's output (pure) -------------------------------------------------------


def parse_ls_tree(raw: bytes, prefix: str = "") -> list[TreeFile]:
    """``ls-tree -r -z --full-name`` records, with paths made relative to ``prefix``."""
    files = []
    for record in raw.split(b"\0"):
        if not record:
            continue
        meta, _, path_bytes = record.partition(b"\t")
        mode, kind, oid = meta.decode().split(" ")
        path = path_bytes.decode("utf-8", "surrogateescape")
        if kind != "blob" or mode not in _FILE_MODES or not path.startswith(prefix):
            continue
        files.append(TreeFile(path=path[len(prefix) :], mode=mode, oid=oid))
    return files


def parse_raw_diff(raw: bytes) -> list[FileChange]:
    """``git diff --raw -z`` records: ``:old_mode new_mode old_oid new_oid STATUS\\0path\\0``
    (and a second path for renames and copies)."""
    fields = raw.split(b"\0")
    out: list[FileChange] = []
    i = 0
    while i < len(fields) and fields[i]:
        meta = fields[i].decode().lstrip(":").split(" ")
        _old_mode, new_mode, _old_oid, new_oid, status = meta[:5]
        kind = status[0]
        first = fields[i + 1].decode("utf-8", "surrogateescape")
        if kind in ("R", "C"):
            second = fields[i + 2].decode("utf-8", "surrogateescape")
            out.append(FileChange(kind, second, first, new_mode, new_oid))
            i += 3
        else:
            out.append(FileChange(kind, first, None, new_mode, new_oid))
            i += 2
    return out


def parse_batch(raw: bytes) -> dict[str, bytes]:
    """``cat-file --batch`` output: ``<oid> <type> <size>\\n<content>\\n`` per object."""
    out: dict[str, bytes] = {}
    pos = 0
    while pos < len(raw):
        end = raw.index(b"\n", pos)
        header = raw[pos:end].decode().split(" ")
        pos = end + 1
        if len(header) != 3:  # "<oid> missing" (or ambiguous): nothing to read
            continue
        size = int(header[2])
        out[header[0]] = raw[pos : pos + size]
        pos += size + 1
    return out


# -- the diff --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Side:
    """One end of the diff: a commit, the empty tree (zero SHA) or the working tree."""

    given: str | None
    commit: str | None  # None for the empty tree and the working tree
    tree: str | None  # what `git diff` compares; None for the working tree


def _side(git: Git, rev: str | None) -> _Side:
    if rev is None:
        return _Side(None, None, None)
    if is_zero_sha(rev):
        return _Side(rev, None, git.empty_tree())
    commit = git.resolve(rev)
    return _Side(rev, commit, commit)


def _tree(git: Git, side: _Side) -> str:
    """What ``git diff`` compares for the A side (never the working tree)."""
    return side.tree if side.tree is not None else git.empty_tree()


def diff_revisions(
    folder: Path,
    rev_a: str,
    rev_b: str | None = None,
    *,
    rules: PathRules | None = None,
    max_file_bytes: int = 1_048_576,
) -> GitDiff:
    """The events that take the stories of ``rev_a`` to those of ``rev_b``.

    ``rev_b`` None means the working tree (tracked changes plus untracked, not ignored,
    files). A zero SHA on either side is the empty tree.
    """
    rules = rules or PathRules()
    git = Git(folder)
    side_a, side_b = _side(git, rev_a), _side(git, rev_b)

    index = Index()
    if side_a.commit is not None:
        files = [f for f in git.tree_files(side_a.commit) if rules.wanted(f.path)]
        blobs = git.blobs(f.oid for f in files)
        index = index_of(
            {
                f.path: parse_story(f.path, blobs.get(f.oid, b""), max_bytes=max_file_bytes)
                for f in files
            }
        )

    changes = _changes_at_b(git, _tree(git, side_a), side_b, rules, max_file_bytes)
    if len(index):
        drafts = index.apply(changes)  # one apply: renames must meet their deletes
    else:
        drafts = []  # nothing to rename from: file by file is the same diff, and linear
        for path in sorted(changes):
            drafts.extend(index.apply({path: changes[path]}))
    source: Json = {
        "kind": "git",
        "from": side_a.commit or rev_a,
        "to": side_b.commit or side_b.given,
        "author": git.author(side_b.commit) if side_b.commit else None,
    }
    time = git.commit_time(side_b.commit) if side_b.commit else utc_now_iso()
    return GitDiff(drafts=drafts, index=index, source=source, time=time)


def index_of(results: Mapping[str, ParseResult | None]) -> Index:
    """The index of a whole tree, as the watcher's startup scan builds it.

    Applied one file at a time in path order, which gives what one big apply gives (the
    smallest path keeps a duplicated id) in linear time: ``Index.apply`` compares every
    changed file with every affected id, which is quadratic for a whole tree.
    """
    index = Index()
    for path in sorted(results):
        result = results[path]
        if result is not None:
            index.apply({path: result})
    return index


def _changes_at_b(
    git: Git, tree_a: str, side_b: _Side, rules: PathRules, max_file_bytes: int
) -> dict[str, ParseResult | None]:
    """The new state (None = gone) of every wanted path that changed, in one mapping, so
    that a rename is a delete and an add in the same :meth:`Index.apply`."""
    file_changes = git.changes(tree_a, side_b.tree)
    gone: list[str] = []
    present: list[FileChange] = []
    for change in file_changes:
        if change.old_path is not None and change.status == "R":
            gone.append(change.old_path)
        # An unmerged path (U, mid-conflict) has no mode: its state is the file on disk.
        unmerged = change.status == "U" and side_b.tree is None
        if change.status == "D" or (change.new_mode not in _FILE_MODES and not unmerged):
            gone.append(change.path)
        else:
            present.append(change)
    out: dict[str, ParseResult | None] = {p: None for p in gone if rules.wanted(p)}
    present = [c for c in present if rules.wanted(c.path)]
    if side_b.tree is None:  # the working tree: read the files from disk
        repo = Repo(git.folder, rules, max_file_bytes=max_file_bytes)
        paths = [c.path for c in present] + [p for p in git.untracked() if rules.wanted(p)]
        out.update(repo.read_many(paths))
    else:
        blobs = git.blobs(c.new_oid for c in present)
        for change in present:
            raw = blobs.get(change.new_oid, b"")
            out[change.path] = parse_story(change.path, raw, max_bytes=max_file_bytes)
    return out
