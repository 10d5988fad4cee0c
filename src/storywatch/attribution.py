"""Who made a file what it is: the commit of ``git log -1 NEW -- PATH`` for many paths at once.

SPEC §11: when ``.git/HEAD`` moved during a batch, each event whose file in the working tree
matches NEW carries ``source.git.commit``. Asking git once per path would start one process
per event; instead ONE ``git log`` covers every path of a batch, and the per-path answer is
worked out here from its output:

    git log -z --pretty=raw --raw -m --full-history --parents --no-renames NEW -- P1 P2 …

``--full-history --parents`` lists every commit that touches any of the paths plus every
merge, with parents rewritten to listed commits (a commit left out touches none of the
paths, so stepping over it changes nothing for any one path); ``-m --raw`` gives each merge's
changes against each parent (``(from P)`` names the parent). From that, :class:`Resolver`
replays git's default history simplification for each path on its own: from NEW, step to
the (first) parent the commit is TREESAME to for that path; the first commit that is not
TREESAME to any parent is the answer. That is exactly what ``git log -1 NEW -- PATH`` shows
(for a merge that took one side's version, that side's commit; the merge itself when no
parent had the file as the merge has it), without git's walk over the union of paths
deciding for a single path.

The output is read as it comes and git is stopped as soon as every path has its answer, so
a pull costs a few commits of walking, not the whole history; a time limit bounds the rest.

Parsing (:class:`LogParser`, :class:`Resolver`, :func:`blob_id`) is pure. The edges are
:func:`attribute` (the watcher: asyncio subprocess, time limit, kill on expiry, then the
working-tree check in a thread) and :func:`commits_at` (``storywatch publish``: blocking).
The library alternative, pygit2, was not clearly better: it would need a compiled
dependency and a Python loop over commits without git's commit-graph and changed-path Bloom
filters, and a thread cannot be killed at the time limit, where a process can.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import subprocess
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from storywatch.events import Json, with_commit

logger = logging.getLogger(__name__)

# An event is never held back longer than this waiting for its commit (SPEC §11).
TIMEOUT_S: Final = 0.5
# A batch with more paths than this (a checkout of a huge tree) is not attributed.
MAX_PATHS: Final = 5000
# What `publish` may send as `source` (SPEC §13): a long subject is shortened to fit.
MAX_SOURCE_BYTES: Final = 1024

Entry = tuple[str, str]  # (mode, object id) of a path in a commit
_ZERO: Final = frozenset({"0" * 40, "0" * 64})


@dataclass(frozen=True, slots=True)
class Commit:
    sha: str
    author: str  # the name only
    email: str
    time: str  # the author date, ISO-8601 with its zone
    subject: str

    def as_json(self) -> Json:
        return {
            "sha": self.sha,
            "author": self.author,
            "email": self.email,
            "time": self.time,
            "subject": self.subject,
        }


@dataclass(slots=True)
class Block:
    """One commit record of the log; a merge comes once per parent it differs from."""

    commit: Commit
    parents: list[str]  # rewritten to listed commits (``--parents``)
    from_parent: str | None  # ``(from P)`` on a merge's record
    changes: dict[str, Entry | None] = field(default_factory=dict)  # path → new entry


# -- parsing git's output (pure) ---------------------------------------------------------


def log_args(rev: str, paths: Iterable[str]) -> list[str]:
    """The ``git`` arguments of the one log that attributes every path in ``paths``."""
    return [
        "-c",
        "core.quotepath=off",
        "-c",
        "log.showRoot=true",
        "-c",
        "log.showSignature=false",
        "-c",
        "log.follow=false",
        "--no-pager",
        "log",
        "-z",
        "--pretty=raw",
        "--raw",
        "--no-abbrev",
        "-m",
        "--full-history",
        "--parents",
        "--no-renames",
        "--relative",
        "--no-color",
        "--no-ext-diff",
        "--no-textconv",
        "--end-of-options",
        rev,
        "--",
        *paths,
    ]


def git_env() -> dict[str, str]:
    # Literal pathspecs: a story named `[draft].md` is a file name, not a glob.
    return {**os.environ, "LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0", "GIT_LITERAL_PATHSPECS": "1"}


class LogParser:
    """Incremental parser of ``git log -z --pretty=raw --raw`` output: bytes in, blocks out."""

    def __init__(self) -> None:
        self._rest = b""
        self._block: Block | None = None
        self._meta: str | None = None  # a raw record whose path comes next

    def feed(self, data: bytes) -> list[Block]:
        tokens = (self._rest + data).split(b"\0")
        self._rest = tokens.pop()
        return self._tokens(tokens)

    def close(self) -> list[Block]:
        tokens, self._rest = [self._rest], b""
        done = self._tokens(tokens)
        if self._block is not None:
            done.append(self._block)
            self._block = None
        return done

    def _tokens(self, tokens: list[bytes]) -> list[Block]:
        done: list[Block] = []
        for token in tokens:
            if self._meta is not None:
                self._record(self._meta, token.decode("utf-8", "surrogateescape"))
                self._meta = None
            elif token.startswith(b"commit "):
                if self._block is not None:
                    done.append(self._block)
                self._block, self._meta = _header(token)
            elif token.startswith(b":"):
                self._meta = token.decode()
        return done

    def _record(self, meta: str, path: str) -> None:
        if self._block is None:
            return
        fields = meta.lstrip(":").split(" ")
        if len(fields) < 5:
            return
        _src_mode, dst_mode, _src_oid, dst_oid, status = fields[:5]
        gone = status.startswith("D") or dst_oid in _ZERO
        self._block.changes[path] = None if gone else (dst_mode, dst_oid)


def _header(token: bytes) -> tuple[Block, str | None]:
    """A commit record's text, and the first raw record glued to its end, if any."""
    text = token.decode("utf-8", "replace")
    head, _, rest = text.partition("\n\n")
    lines = head.split("\n")
    first = lines[0].removeprefix("commit ").split(" ")
    from_parent = None
    if "(from" in first:
        at = first.index("(from")
        from_parent = first[at + 1].rstrip(")")
        first = first[:at]
    sha, parents = first[0], [p for p in first[1:] if p]
    author = email = when = ""
    for line in lines[1:]:
        if line.startswith("author "):
            author, email, when = _person(line.removeprefix("author "))
    message: list[str] = []
    meta = None
    for line in rest.split("\n"):
        if line.startswith("    "):
            message.append(line[4:])
        elif line.startswith(":"):
            meta = line
    commit = Commit(sha, author, email, when, subject_of(message))
    return Block(commit, parents, from_parent), meta


def _person(value: str) -> tuple[str, str, str]:
    """``Name <email> 1700000000 +0200`` → (name, email, ISO-8601 time with the zone)."""
    name, _, rest = value.partition(" <")
    email, _, stamp = rest.rpartition("> ")
    return name.strip(), email, iso_time(stamp)


def iso_time(stamp: str) -> str:
    """``1700000000 +0200`` (git's raw date) → ``2023-11-15T00:13:20+02:00`` (like ``%aI``)."""
    try:
        seconds, zone = stamp.split(" ")
        sign = -1 if zone.startswith("-") else 1
        offset = dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[3:5])) * sign
        return dt.datetime.fromtimestamp(int(seconds), dt.timezone(offset)).isoformat()
    except (ValueError, IndexError, OverflowError):
        return ""


def subject_of(message: Sequence[str]) -> str:
    """The first paragraph of a commit message on one line (git's ``%s``)."""
    lines: list[str] = []
    for line in message:
        if not line.strip():
            if lines:
                break
            continue
        lines.append(line.strip())
    return " ".join(lines)


class Resolver:
    """Per-path ``git log -1 NEW -- PATH`` from the blocks of one combined log (pure).

    Each path waits on one commit at a time (NEW's first listed commit at the start). When
    a commit's blocks are all in, every path waiting on it either has its answer or moves to
    the parent it is TREESAME to.
    """

    def __init__(self, paths: Iterable[str]) -> None:
        self.unplaced: set[str] = set(paths)  # waiting for the first listed commit
        self.found: dict[str, tuple[Commit, Entry | None] | None] = {}
        self._waiting: dict[str, list[str]] = {}
        self._complete: dict[str, list[Block]] = {}
        self._current: list[Block] = []

    @property
    def done(self) -> bool:
        return not self.unplaced and not self._waiting

    def add(self, block: Block) -> None:
        if self._current and self._current[0].commit.sha != block.commit.sha:
            self._finish_current()
        if self.unplaced:
            self._waiting.setdefault(block.commit.sha, []).extend(sorted(self.unplaced))
            self.unplaced.clear()
        self._current.append(block)
        # A commit's record is whole once it came for every parent (a merge's record for a
        # parent it is TREESAME to never comes: then the next commit's record tells).
        if len(self._current) >= max(1, len(block.parents)):
            self._finish_current()

    def finish(self) -> None:
        """The log ended: paths still waiting have no commit (never in NEW's history)."""
        if self._current:
            self._finish_current()
        for paths in self._waiting.values():
            for path in paths:
                self.found.setdefault(path, None)
        for path in self.unplaced:
            self.found.setdefault(path, None)
        self._waiting.clear()
        self.unplaced.clear()

    def commits(self) -> dict[str, tuple[Commit, Entry | None]]:
        return {path: hit for path, hit in self.found.items() if hit is not None}

    def _finish_current(self) -> None:
        blocks, self._current = self._current, []
        sha = blocks[0].commit.sha
        self._complete[sha] = blocks
        queue = [sha]
        while queue:
            at = queue.pop()
            for path in self._waiting.pop(at, []):
                step = _step(self._complete[at], path)
                if isinstance(step, str):
                    if step in self._complete:
                        queue.append(step)
                    self._waiting.setdefault(step, []).append(path)
                else:
                    self.found[path] = step


def _step(blocks: list[Block], path: str) -> str | tuple[Commit, Entry | None] | None:
    """For ``path`` at this commit: the parent to follow, the answer, or None (no commit)."""
    first = blocks[0]
    if len(first.parents) <= 1:
        changed = [b.changes for b in blocks if path in b.changes]
        if changed:
            return first.commit, changed[0][path]
        return first.parents[0] if first.parents else None
    by_parent = {b.from_parent: b.changes for b in blocks}
    for parent in first.parents:
        if path not in by_parent.get(parent, {}):
            return parent  # TREESAME to this parent: follow it alone
    return first.commit, by_parent[first.parents[0]][path]


# -- the working tree (pure but for reading the file) ---------------------------------------


def blob_id(content: bytes, oid_length: int = 40) -> str:
    """The id git gives ``content`` as a blob (SHA-1, or SHA-256 for 64-digit ids)."""
    algo = hashlib.sha256 if oid_length == 64 else hashlib.sha1
    return algo(b"blob %d\0" % len(content) + content).hexdigest()


def matches_worktree(root: Path, path: str, entry: Entry | None) -> bool:
    """Whether the file at ``path`` is what NEW has there (``git diff --quiet NEW -- PATH``):
    both absent, or the same content (a CRLF checkout of LF content counts as the same)."""
    try:
        content: bytes | None = (root / path).read_bytes()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        content = None
    except OSError:
        return False
    if entry is None or content is None:
        return entry is None and content is None
    mode, oid = entry
    if not mode.startswith("100"):
        return False
    if blob_id(content, len(oid)) == oid:
        return True
    return b"\r\n" in content and blob_id(content.replace(b"\r\n", b"\n"), len(oid)) == oid


# -- attaching commits to events (pure) ----------------------------------------------------


def fit_source(source: Json, limit: int = MAX_SOURCE_BYTES) -> Json:
    """``source`` shortened to ``limit`` bytes (encoded) by cutting the commit's subject."""

    def size(value: Json) -> int:
        return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())

    over = size(source) - limit
    commit = (source.get("git") or {}).get("commit")
    if over <= 0 or not isinstance(commit, dict):
        return source
    subject = str(commit.get("subject", ""))
    keep = max(0, len(subject.encode()) - over - 3)
    short = subject.encode()[:keep].decode("utf-8", "ignore") + "…"
    return with_commit(source, {**commit, "subject": short})


def split_by_commit(
    units: Sequence[list[Json]], paths: Mapping[str, str], commits: Mapping[str, Json]
) -> list[tuple[Json | None, list[list[Json]]]]:
    """Publish units grouped by the commit of their story's path, in first-seen order: one
    ``publish`` message carries one ``source``, so each group travels in its own messages."""
    groups: dict[str | None, tuple[Json | None, list[list[Json]]]] = {}
    for unit in units:
        last = unit[-1]
        story_id = str(last["id"] if last.get("op") == "delete" else last["story"]["id"])
        commit = commits.get(paths.get(story_id, ""))
        key = None if commit is None else str(commit.get("sha"))
        groups.setdefault(key, (commit, []))[1].append(unit)
    return list(groups.values())


# -- running git -------------------------------------------------------------------------


async def attribute(
    root: Path, rev: str, paths: Collection[str], *, timeout: float = TIMEOUT_S
) -> dict[str, Json]:
    """path → commit JSON for the paths whose working-tree file matches ``rev`` there.

    One ``git`` process, read as it writes and killed once every path is answered or the
    time limit passes; then the working-tree files are compared in a thread. On time out
    the paths answered so far keep their commit and one warning is logged.
    """
    if not paths or len(paths) > MAX_PATHS:
        if paths:
            logger.warning("attribution skipped: %d paths in one batch", len(paths))
        return {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    resolver = Resolver(paths)
    try:
        async with asyncio.timeout_at(deadline):
            await _stream_log(root, rev, sorted(paths), resolver)
            found = resolver.commits()
            matched = await asyncio.to_thread(_matching, root, found)
    except TimeoutError:
        logger.warning(
            "attribution: git did not answer within %.2f s; the %d paths of this batch go "
            "without commit",
            timeout,
            len(paths),
        )
        return {}
    except OSError as exc:
        logger.warning("attribution: cannot run git: %s", exc)
        return {}
    return matched


def _matching(root: Path, found: Mapping[str, tuple[Commit, Entry | None]]) -> dict[str, Json]:
    return {
        path: commit.as_json()
        for path, (commit, entry) in found.items()
        if matches_worktree(root, path, entry)
    }


async def _stream_log(root: Path, rev: str, paths: list[str], resolver: Resolver) -> None:
    proc = await asyncio.create_subprocess_exec(
        "git",
        *log_args(rev, paths),
        cwd=root,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=git_env(),
    )
    parser = LogParser()
    try:
        if proc.stdout is None:  # pragma: no cover - PIPE was asked for
            return
        while not resolver.done and _take(await proc.stdout.read(65536), parser, resolver):
            pass
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()  # done early, timed out or cancelled: git need not walk on
            await asyncio.shield(proc.wait())


def commits_at(
    folder: Path, rev: str, paths: Collection[str], *, timeout: float = 120.0
) -> dict[str, Json]:
    """path → commit JSON of ``git log -1 REV -- PATH`` for every path (``publish``: the
    files are REV's own, so there is no working tree to compare). Blocking."""
    if not paths:
        return {}
    resolver = Resolver(paths)
    parser = LogParser()
    with subprocess.Popen(
        ["git", *log_args(rev, sorted(paths))],
        cwd=folder,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=git_env(),
    ) as proc:
        try:
            _read_all(proc, parser, resolver, timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
    return {path: commit.as_json() for path, (commit, _entry) in resolver.commits().items()}


def _take(chunk: bytes, parser: LogParser, resolver: Resolver) -> bool:
    """Feed one chunk of git's output (``b""``: the end) to the resolver; False at the end."""
    for block in parser.feed(chunk) if chunk else parser.close():
        resolver.add(block)
    if not chunk:
        resolver.finish()
    return bool(chunk)


def _read_all(
    proc: subprocess.Popen[bytes], parser: LogParser, resolver: Resolver, timeout: float
) -> None:
    stdout = proc.stdout
    if stdout is None:  # pragma: no cover
        return
    read: Callable[[int], bytes] = getattr(stdout, "read1", stdout.read)
    deadline = time.monotonic() + timeout
    while not resolver.done and time.monotonic() < deadline:
        if not _take(read(65536), parser, resolver):
            return
