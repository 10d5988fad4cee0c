"""git's side of a story's timeline (SPEC §11), and ``storywatch history ID``.

The edges of :mod:`storywatch.history`: git runs here (two processes per request, off the
event loop, under one time limit), the sqlite state is read here (read-only), and the
command prints the timeline. The app hands :func:`git_history` to the HTTP API as its
``commits_of`` port.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sqlite3
import sys
from pathlib import Path
from typing import Any

from storywatch.attribution import git_env
from storywatch.events import Event, Json
from storywatch.filters import Scope
from storywatch.history import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    TIMEOUT_S,
    CommitSource,
    answer,
    commit_entries,
    find_story,
    follow_args,
    parse_batch_answers,
    parse_follow_log,
    timeline_lines,
)
from storywatch.story import Story

logger = logging.getLogger(__name__)


async def story_commits(
    root: Path, path: str, limit: int, *, timeout: float = TIMEOUT_S
) -> list[Json]:
    """The commits of ``path`` (``git log --follow`` in HEAD), each with the story's status."""
    try:
        async with asyncio.timeout(timeout):
            raw = await _git(root, follow_args(path, limit))
            versions = parse_follow_log(raw, path)
            wanted = [v for v in versions if v.present]
            asked = "".join(f"{v.commit['sha']}:./{v.path}\n" for v in wanted).encode()
            answers = await _git(root, ["cat-file", "--batch"], asked) if wanted else b""
    except TimeoutError:
        logger.warning("history of %s: git did not answer within %.0f s", path, timeout)
        return []
    except OSError as exc:
        logger.warning("history of %s: cannot run git: %s", path, exc)
        return []
    found = iter(parse_batch_answers(answers, len(wanted)))
    contents = [next(found) if v.present else None for v in versions]
    return await asyncio.to_thread(commit_entries, versions, contents)


async def _git(root: Path, args: list[str], stdin: bytes | None = None) -> bytes:
    """git's output; empty when git fails (not a checkout, no HEAD yet)."""
    proc = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=root,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=git_env(),
    )
    try:
        out, _ = await proc.communicate(stdin)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
    return out if proc.returncode == 0 else b""


def git_history(root: Path) -> CommitSource:
    """The app's port for the API: commits of a path below ``root``."""

    async def commits(path: str, limit: int) -> list[Json]:
        return await story_commits(root, path, limit)

    return commits


# -- storywatch history ID -----------------------------------------------------------------


def add_command(sub: Any) -> None:
    history = sub.add_parser("history", help="a story's status timeline from git and the log")
    history.add_argument("story_id", metavar="ID", help="the story's id")
    history.add_argument("--repo", help="the story root (default: config `repo` or .)")
    history.add_argument("--json", action="store_true", help="print the API's JSON object")
    history.add_argument(
        "--limit", type=int, default=DEFAULT_LIMIT, help="at most this many of each (50)"
    )
    history.add_argument("--config", help="YAML config file (env STORYWATCH_CONFIG)")


def cmd_history(args: argparse.Namespace) -> int:
    from storywatch.config import load_settings
    from storywatch.paths import PathRules
    from storywatch.repo import Repo

    settings = load_settings(args.config, overrides={"repo": args.repo})
    limit = args.limit
    if not 1 <= limit <= MAX_LIMIT:
        print(f"storywatch: --limit must be from 1 to {MAX_LIMIT}", file=sys.stderr)
        return 2
    root = settings.repo
    rules = PathRules(settings.watch.include, settings.watch.exclude)
    repo = Repo(root, rules, max_file_bytes=settings.watch.max_file_bytes)
    current = find_in_tree(repo, args.story_id)
    events = logged_events(settings.state_path, args.story_id)
    found = find_story(args.story_id, current, events, Scope(), limit)
    commits: list[Json] = []
    if found is not None and found.path:
        commits = asyncio.run(story_commits(root, found.path, limit, timeout=120.0))
    if found is None or (not commits and not found.events):
        print(
            f"storywatch: unknown story {args.story_id!r}: no commit and no event",
            file=sys.stderr,
        )
        return 1
    payload = answer(args.story_id, found, commits)
    if args.json:
        print(json.dumps(payload, ensure_ascii=False))
    else:
        print("\n".join(timeline_lines(payload, found.path)))
    return 0


def find_in_tree(repo: Any, story_id: str) -> Json | None:
    """The story's state in the working tree (files mentioning the id are parsed)."""
    needle = story_id.encode()
    for rel in repo.walk():
        try:
            raw = (repo.root / rel).read_bytes()
        except OSError:
            continue
        if needle not in raw:
            continue
        result = repo.read(rel)
        if isinstance(result, Story) and result.id == story_id:
            fields: Json = result.fields
            return fields
    return None


def logged_events(state_path: Path, story_id: str) -> list[Event]:
    """The story's events in the sqlite state (read-only), oldest first; [] without one."""
    if not state_path.is_file():
        return []
    try:
        conn = sqlite3.connect(f"{state_path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return []
    events: list[Event] = []
    try:
        for seq, text in conn.execute("SELECT seq, data FROM events ORDER BY seq"):
            with contextlib.suppress(ValueError, TypeError):
                data = json.loads(text)
                if isinstance(data, dict) and data.get("story_id") == story_id:
                    events.append(Event(seq=int(seq), epoch=str(data.get("epoch")), data=data))
    except sqlite3.Error:
        return []
    finally:
        conn.close()
    return events
