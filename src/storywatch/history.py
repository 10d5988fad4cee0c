"""A story's timeline (SPEC §11): its events from the log and its commits from git.

``GET /api/stories/{id}/history`` and ``storywatch history ID`` answer the same object::

    {"story_id": "INT-002",
     "events": [newest first, as on the wire, through the token's scope],
     "commits": [{"sha", "author", "email", "time", "subject", "path", "status"}, …]}

``commits`` is ``git log --follow`` of the story's path in HEAD, newest first: ``path`` is
the file's path in that commit, ``status`` the story's status there (null where the file
does not parse, or is gone). Two git processes per request (the log, then one
``cat-file --batch`` for every version of the file), run off the event loop under one time
limit; outside a git checkout, or past the limit, ``commits`` is ``[]``.

This module is the pure assembly (:func:`find_story`, :func:`parse_follow_log`,
:func:`status_changes`, :func:`timeline_lines`); git, sqlite and the command are the edges
in :mod:`storywatch.gitlog`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from storywatch.coalesce import transformed
from storywatch.events import Event, Json
from storywatch.filters import Scope
from storywatch.story import Story, parse_story

DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 500
TIMEOUT_S: Final = 10.0
MAX_FILE_BYTES: Final = 1_048_576

# The port the HTTP API reads commits through: (path, limit) → commits, newest first.
CommitSource = Callable[[str, int], Awaitable[list[Json]]]


# -- the request (pure) --------------------------------------------------------------------


def parse_limit(query: Mapping[str, list[str]]) -> int | None:
    """``limit`` (default 50, 1–500); None when it is not such a number."""
    values = query.get("limit")
    if not values:
        return DEFAULT_LIMIT
    text = values[0].strip()
    if not text.isdigit():
        return None
    limit = int(text)
    return limit if 1 <= limit <= MAX_LIMIT else None


@dataclass(frozen=True, slots=True)
class Found:
    """What the log knows of a story: where to follow it in git, and its events."""

    path: str | None
    events: list[Json]  # newest first, through the scope, at most ``limit``


def find_story(
    story_id: str, current: Json | None, events: Iterable[Event], scope: Scope, limit: int
) -> Found | None:
    """The story's events and path; None when it was never known or is out of scope.

    ``current`` is its state now (None once deleted); ``events`` the retained window,
    oldest first. A deleted story is judged by its last known state.
    """
    mine = [event for event in events if event.story_id == story_id]
    if current is None and not mine:
        return None
    state = current if current is not None else _last_state(mine[-1])
    if not scope.sees(state):
        return None
    views: list[Json] = []
    for event in reversed(mine):
        if len(views) >= limit:
            break
        view = transformed(event, scope)
        if view is not None:
            views.append(view.data if view.data is not None else event.data)
    path = (state or {}).get("path") or (mine[-1].data.get("path") if mine else None)
    return Found(str(path) if path else None, views)


def _last_state(event: Event) -> Json | None:
    return event.after() or event.before() or event.story


def answer(story_id: str, found: Found, commits: list[Json]) -> Json:
    return {"story_id": story_id, "events": found.events, "commits": commits}


async def story_history(
    story_id: str,
    current: Json | None,
    events: Iterable[Event],
    scope: Scope,
    query: Mapping[str, list[str]],
    commits_of: CommitSource | None,
) -> tuple[int, Json]:
    """The HTTP answer: (status, body) for ``GET /api/stories/{id}/history``."""
    limit = parse_limit(query)
    if limit is None:
        return 400, _error("bad_request", f"`limit` must be an integer from 1 to {MAX_LIMIT}")
    found = find_story(story_id, current, events, scope, limit)
    if found is None:
        return 404, _error("not_found", "no such story")
    commits: list[Json] = []
    if commits_of is not None and found.path:
        commits = await commits_of(found.path, limit)
    return 200, answer(story_id, found, commits)


def _error(code: str, message: str) -> Json:
    return {"error": {"code": code, "message": message}}


# -- git's answers (pure) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Version:
    """One commit of ``git log --follow``: the file's path then, and whether it is there."""

    commit: Json  # sha, author, email, time, subject
    path: str
    present: bool


def follow_args(path: str, limit: int) -> list[str]:
    return [
        "-c",
        "core.quotepath=off",
        "-c",
        "log.showSignature=false",
        "--no-pager",
        "log",
        "--follow",
        f"-n{limit}",
        "-z",
        "--format=%x01%H%x00%an%x00%ae%x00%aI%x00%s",
        "--name-status",
        "--relative",
        "--no-color",
        "HEAD",
        "--",
        path,
    ]


def parse_follow_log(raw: bytes, path: str) -> list[Version]:
    """``git log --follow -z --name-status`` records → each commit with the file's path in
    it (renames are followed back: older commits see the old path)."""
    versions: list[Version] = []
    current = path
    for record in raw.decode("utf-8", "surrogateescape").split("\x01"):
        if not record:
            continue
        fields = record.split("\0")
        if len(fields) < 5:
            continue
        sha, author, email, time, subject = fields[:5]
        commit = {"sha": sha, "author": author, "email": email, "time": time, "subject": subject}
        rest = [f.strip("\n") for f in fields[5:]]
        rest = [f for f in rest if f]
        status = rest[0] if rest else ""
        present = True
        if status[:1] in ("R", "C") and len(rest) >= 3:
            here, current = rest[2], rest[1]
        elif status and len(rest) >= 2:
            here = current = rest[1]
            present = status[:1] != "D"
        else:
            here = current  # a merge: no changes listed, the path is the newer one's
        versions.append(Version(commit, here, present))
    return versions


def parse_batch_answers(raw: bytes, count: int) -> list[bytes | None]:
    """``cat-file --batch`` answers, in the order asked: content, or None when missing."""
    out: list[bytes | None] = []
    pos = 0
    while len(out) < count and pos < len(raw):
        end = raw.find(b"\n", pos)
        if end < 0:
            break
        header = raw[pos:end].split(b" ")
        pos = end + 1
        if len(header) != 3 or header[1] != b"blob":
            out.append(None)
            if len(header) == 3:  # another kind of object: skip its content
                pos += int(header[2]) + 1
            continue
        size = int(header[2])
        out.append(raw[pos : pos + size])
        pos += size + 1
    return out + [None] * (count - len(out))


def status_in(path: str, content: bytes | None) -> Any:
    """The story's ``status`` in one version of its file (None when it does not parse)."""
    if content is None:
        return None
    result = parse_story(path, content, max_bytes=MAX_FILE_BYTES)
    return result.fields.get("status") if isinstance(result, Story) else None


def commit_entries(versions: Sequence[Version], contents: Sequence[bytes | None]) -> list[Json]:
    return [
        {**v.commit, "path": v.path, "status": status_in(v.path, c) if v.present else None}
        for v, c in zip(versions, contents, strict=True)
    ]


# -- running git -------------------------------------------------------------------------


# -- the readable timeline (pure) ------------------------------------------------------------


def status_changes(commits: Sequence[Json]) -> list[tuple[Json, Any, Any]]:
    """(commit, old status, new status) for each commit that changed the status, oldest
    first; the first commit counts as a change from nothing."""
    out: list[tuple[Json, Any, Any]] = []
    previous: Any = None
    first = True
    for commit in reversed(commits):
        status = commit.get("status")
        if first or status != previous:
            out.append((commit, None if first else previous, status))
        previous, first = status, False
    return out


def timeline_lines(payload: Json, path: str | None) -> list[str]:
    story_id = payload["story_id"]
    lines = [f"{story_id}  {path or ''}".rstrip()]
    commits = payload["commits"]
    if commits:
        lines.append("status changes in git (oldest first):")
        for n, (commit, old, new) in enumerate(status_changes(commits)):
            change = _show(new) if n == 0 else f"{_show(old)} → {_show(new)}"
            lines.append(
                f"  {_when(commit.get('time'))}  {change:<28}  {commit.get('author')}"
                f"  {str(commit.get('sha'))[:8]}  {commit.get('subject')}"
            )
    else:
        lines.append("no commits (not a git checkout, or the file was never committed)")
    events = payload["events"]
    if events:
        lines.append("events in the log (newest first):")
        for event in events:
            lines.append(f"  {_when(event.get('time'))}  {_event_line(event)}")
    return lines


def _event_line(event: Json) -> str:
    kind = str(event.get("type", "")).removeprefix("story.")
    what = kind
    if kind == "transitioned":
        what = f"{kind}  {_show(event.get('from'))} → {_show(event.get('to'))}"
    elif kind == "moved":
        what = f"{kind}  {event.get('old_path')} → {event.get('path')}"
    source = event.get("source") or {}
    commit = (source.get("git") or {}).get("commit") if isinstance(source, dict) else None
    if isinstance(commit, dict):
        who = f"by {commit.get('author')} ({str(commit.get('sha'))[:8]})"
    elif isinstance(source, dict) and source.get("token"):
        who = f"by token {source.get('token')}"
    else:
        who = f"({source.get('kind', '?') if isinstance(source, dict) else '?'})"
    return f"{what}  {who}"


def _when(stamp: Any) -> str:
    """``2025-07-23T10:00:00+02:00`` → ``2025-07-23 10:00:00+02:00`` (no milliseconds)."""
    return re.sub(r"\.\d+", "", str(stamp or "").replace("T", " ", 1))


def _show(value: Any) -> str:
    return "(none)" if value is None else str(value)
