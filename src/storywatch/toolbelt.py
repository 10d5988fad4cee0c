"""The command-line toolbelt: scan, diff, publish, tail, token (SPEC §7).

Each command returns an exit code (only ``cli.py`` exits): 0 ok, 1 failure (problems found,
connection or auth refused, git errors), 2 usage (bad config, missing token or backend).
Output meant for people goes to stdout; notes about progress and connections go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from storywatch.auth import hash_token, new_token
from storywatch.config import BackendSettings, Settings, load_settings
from storywatch.errors import BackendError, ConfigError, PublishRejected, StorywatchError
from storywatch.events import EVENT_TYPES, Draft, Json, with_commit
from storywatch.gitdiff import GitDiff, diff_revisions, index_of, is_zero_sha
from storywatch.inbound import MAX_PUBLISH_ITEMS, Publish, RequestError, parse_request
from storywatch.paths import PathRules
from storywatch.repo import Repo, parse_tree
from storywatch.story import ParseError, ParseResult
from storywatch.values import SCOPES

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

Common = Callable[[argparse.ArgumentParser], None]
RedisPublish = Callable[
    [BackendSettings, list[Json], Json | None, dict[str, Json] | None],
    Coroutine[Any, Any, tuple[int, int]],
]


def add_commands(sub: Any, common: Common) -> None:
    """Add scan, diff, publish, tail and token to the ``storywatch`` parser."""
    scan = sub.add_parser("scan", help="parse every story; print a summary and every problem")
    scan.add_argument("repo", nargs="?", help="the story repo (default: config `repo` or .)")
    scan.add_argument("--json", action="store_true", help="print one JSON object")
    _config_option(scan)

    diff = sub.add_parser("diff", help="the events between two git revisions")
    diff.add_argument("rev_a", metavar="REV_A", help="the revision to diff from (zero SHA: none)")
    diff.add_argument("rev_b", metavar="REV_B", nargs="?", help="default: the working tree")
    diff.add_argument("--repo", help="the story root inside a git checkout (default: .)")
    diff.add_argument("--json", action="store_true", help="one event per line, as on the wire")
    _config_option(diff)

    publish = sub.add_parser("publish", help="publish the stories changed between revisions")
    publish.add_argument(
        "--from",
        dest="rev_from",
        required=True,
        metavar="REV",
        help="the revision already published (zero SHA: none)",
    )
    publish.add_argument(
        "--to", dest="rev_to", required=True, metavar="REV", help="the revision to publish"
    )
    publish.add_argument("--repo", help="the story root inside a git checkout (default: .)")
    _client_options(publish)
    publish.add_argument("--redis-url", help="publish straight into a Redis stream instead")
    publish.add_argument("--timeout", type=float, default=30, help="seconds per answer (30)")
    _config_option(publish)

    tail = sub.add_parser("tail", help="a live client: print events as they happen")
    _client_options(tail)
    tail.add_argument("--epic", action="append", default=[], help="only this epic (repeatable)")
    tail.add_argument("--story", action="append", default=[], help="only this story (repeatable)")
    tail.add_argument(
        "--event",
        action="append",
        default=[],
        type=_event_type,
        help="only this event type, e.g. transitioned or story.created (repeatable)",
    )
    tail.add_argument("--json", action="store_true", help="print each event's raw JSON")

    token = sub.add_parser("token", help="manage tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    new = token_sub.add_parser("new", help="print a new token and its config entry")
    new.add_argument("name", help="the token's name (shown as `user` to its clients)")
    new.add_argument(
        "--scope",
        action="append",
        default=[],
        choices=SCOPES,
        help="read (default), publish, admin (repeatable)",
    )
    new.add_argument("--epic", action="append", default=[], help="restrict to this epic")

    from storywatch import gitlog  # SPEC §11

    gitlog.add_command(sub)
    from storywatch.webhooks.commands import add_hooks_command  # SPEC §10

    add_hooks_command(sub, _client_options)


def dispatch(args: argparse.Namespace) -> int:
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "scan": cmd_scan,
        "diff": cmd_diff,
        "publish": cmd_publish,
        "tail": cmd_tail,
        "token": cmd_token,
        "history": _cmd_history,
        "hooks": _cmd_hooks,
    }
    handler = handlers.get(args.command)
    if handler is None:
        raise StorywatchError(f"unknown command {args.command!r}")
    try:
        return handler(args)
    except BrokenPipeError:
        # `storywatch tail | head`: the reader left; that is not an error of ours.
        # Point stdout at /dev/null so the interpreter's last flush does not fail again.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _cmd_history(args: argparse.Namespace) -> int:
    from storywatch.gitlog import cmd_history

    return cmd_history(args)


def _cmd_hooks(args: argparse.Namespace) -> int:
    from storywatch.webhooks.commands import cmd_hooks  # SPEC §10

    return cmd_hooks(args)


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (env STORYWATCH_CONFIG)")


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="ws://HOST:PORT/ws or http://HOST:PORT (env STORYWATCH_URL)")
    parser.add_argument("--token", help="the token (env STORYWATCH_TOKEN)")


def _event_type(value: str) -> str:
    kind = value if value.startswith("story.") else f"story.{value}"
    if kind not in EVENT_TYPES:
        raise argparse.ArgumentTypeError(
            f"unknown event type {value!r}; one of {', '.join(EVENT_TYPES)}"
        )
    return kind


def _settings(args: argparse.Namespace, repo: str | None) -> Settings:
    return load_settings(getattr(args, "config", None), overrides={"repo": repo})


def _rules(settings: Settings) -> PathRules:
    return PathRules(settings.watch.include, settings.watch.exclude)


def _err(message: str) -> None:
    print(f"storywatch: {message}", file=sys.stderr, flush=True)


# -- scan ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    reason: str
    message: str
    line: int | None

    def as_json(self) -> Json:
        return {
            "path": self.path,
            "reason": self.reason,
            "message": self.message,
            "line": self.line,
        }

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{where}: {self.reason}: {self.message}"


@dataclass(frozen=True, slots=True)
class ScanReport:
    files: int
    stories: int
    by_status: dict[str, int]
    by_epic: dict[str, int]
    problems: list[Problem]

    def as_json(self) -> Json:
        return {
            "stories": self.stories,
            "by_status": self.by_status,
            "by_epic": self.by_epic,
            "problems": [p.as_json() for p in self.problems],
        }


def scan_report(
    results: Mapping[str, ParseResult | None], id_line: Callable[[str], int | None]
) -> ScanReport:
    """Counts and problems of a whole tree, with the watcher's index rules.

    A problem is a file with front-matter that cannot be read as a story (bad YAML,
    unreadable, too large) or a second file with an id already taken. A file whose
    front-matter has no ``id`` is simply not a story (a README, a template).
    """
    index = index_of(results)
    problems = [
        Problem(path, r.reason, r.message, r.line)
        for path, r in results.items()
        if isinstance(r, ParseError) and r.has_front_matter and r.reason != "missing_id"
    ]
    for path, _story_id, error in index.problems():
        if error.reason == "duplicate_id":
            problems.append(Problem(path, error.reason, error.message, id_line(path)))
    problems.sort(key=lambda p: (p.path, p.line or 0))
    stories = index.stories.values()
    return ScanReport(
        files=len(results),
        stories=len(index),
        by_status=_counts(s.fields.get("status") for s in stories),
        by_epic=_counts(s.fields.get("epic") for s in stories),
        problems=problems,
    )


def _counts(values: Iterator[Any]) -> dict[str, int]:
    counts = Counter("(none)" if v is None else str(v) for v in values)
    return dict(sorted(counts.items()))


_ID_KEY = re.compile(r"^id[ \t]*:")


def id_line_in(root: Path) -> Callable[[str], int | None]:
    """The line of the ``id:`` key in a file's front-matter (for duplicate-id problems)."""

    def find(rel: str) -> int | None:
        try:
            lines = (root / rel).read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return None
        for number, line in enumerate(lines[1:], 2):
            if line.startswith("---"):
                return None
            if _ID_KEY.match(line):
                return number
        return None

    return find


class Progress:
    """``scanning: n/total`` on a terminal, only once the job has taken over a second."""

    def __init__(self, stream: TextIO, total: int, label: str, after_s: float = 1.0) -> None:
        self.stream = stream
        self.total = total
        self.label = label
        self.enabled = _isatty(stream)
        self.start = time.monotonic()
        self.after_s = after_s
        self.shown_at = 0.0

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.start >= self.after_s and now - self.shown_at >= 0.1:
            self.stream.write(f"\r{self.label}: {done}/{self.total} files")
            self.stream.flush()
            self.shown_at = now

    def finish(self) -> None:
        if self.shown_at:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def read_tree(
    repo: Repo, paths: Sequence[str], progress: Progress
) -> dict[str, ParseResult | None]:
    """Parse every file; in worker processes for big trees (YAML parsing is CPU-bound)."""
    return parse_tree(repo, paths, progress.update)


def cmd_scan(args: argparse.Namespace) -> int:
    settings = _settings(args, args.repo)
    root = settings.repo
    if not root.is_dir():
        raise ConfigError(f"repo: not a folder: {root}")
    repo = Repo(root, _rules(settings), max_file_bytes=settings.watch.max_file_bytes)
    started = time.monotonic()
    paths = repo.walk()
    progress = Progress(sys.stderr, len(paths), "scanning")
    results = read_tree(repo, paths, progress)
    progress.finish()
    report = scan_report(results, id_line_in(root))
    if args.json:
        print(json.dumps(report.as_json(), ensure_ascii=False))
    else:
        _print_scan(report, time.monotonic() - started)
    return EXIT_FAIL if report.problems else EXIT_OK


def _print_scan(report: ScanReport, seconds: float) -> None:
    n = len(report.problems)
    print(
        f"{report.files} files, {report.stories} stories, "
        f"{n} problem{'' if n == 1 else 's'} ({seconds:.2f} s)"
    )
    for label, counts in (("by status", report.by_status), ("by epic", report.by_epic)):
        if counts:
            print(f"{label}: " + ", ".join(f"{key} {count}" for key, count in counts.items()))
    for problem in report.problems:
        print(problem)


# -- diff ------------------------------------------------------------------------------


def cmd_diff(args: argparse.Namespace) -> int:
    settings = _settings(args, args.repo)
    result = diff_revisions(
        settings.repo,
        args.rev_a,
        args.rev_b,
        rules=_rules(settings),
        max_file_bytes=settings.watch.max_file_bytes,
    )
    for draft in result.drafts:
        event = result.event_json(draft)
        if args.json:
            print(json.dumps(event, ensure_ascii=False, separators=(",", ":")))
        else:
            print(describe_event(event))
    counts = Counter(d.type.removeprefix("story.") for d in result.drafts)
    summary = ", ".join(f"{count} {kind}" for kind, count in sorted(counts.items()))
    target = result.source["to"] or "the working tree"
    print(
        f"{_plural(len(result.drafts), 'event')} from {result.source['from']} to {target}"
        + (f" ({summary})" if summary else ""),
        file=sys.stderr,
    )
    return EXIT_OK


def describe_event(event: Json) -> str:
    """One line for people: type, id, what changed, title."""
    kind = str(event.get("type", "?"))
    parts = [f"{kind:<18}", str(event.get("story_id", "?"))]
    old_path = event.get("old_path")
    if kind == "story.transitioned":
        parts.append(f"{_show(event.get('from'))} → {_show(event.get('to'))}")
    elif kind == "story.moved":
        parts.append(f"{old_path} → {event.get('path')}")
    elif kind == "story.updated":
        changed = list(event.get("changes") or {})
        parts.append(
            "(" + ", ".join(changed + (["body"] if event.get("body_changed") else [])) + ")"
        )
    elif kind == "story.invalid":
        error = event.get("error") or {}
        line = f":{error['line']}" if error.get("line") else ""
        parts.append(f"{event.get('path')}{line}: {error.get('reason')}: {error.get('message')}")
    elif kind == "story.deleted" and event.get("reason"):
        parts.append(f"({event['reason']})")
    # An invalid event carries the id's last good state, maybe another file's: no title.
    title = (event.get("story") or {}).get("title")
    if title is not None and kind != "story.invalid":
        parts.append(str(title))
    if kind == "story.transitioned" and old_path:
        parts.append(f"(moved from {old_path})")
    if event.get("coalesced"):
        parts.append(f"(×{event['coalesced']})")
    return "  ".join(parts)


def _show(value: Any) -> str:
    return "(none)" if value is None else str(value)


# -- publish ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PublishPlan:
    units: list[list[Json]]  # items that must travel in the same message
    upserts: int
    deletes: int
    skipped: list[str]  # ids left alone: invalid at the `to` revision
    drafts: tuple[Draft, ...] = ()  # the diff's, for each story's path (SPEC §11)


def publish_plan(diff: GitDiff) -> PublishPlan:
    """The publish items that bring a server from REV_A's stories to REV_B's.

    A moved story is sent as ``delete`` + ``upsert`` in one message: the server's publish
    diff keys an upsert by its path, so an upsert alone at a new path would be taken for a
    second file claiming the id (a duplicate) instead of a move. Both orders are no-ops
    the second time, which keeps publishing idempotent.
    """
    units: list[list[Json]] = []
    upserts = deletes = 0
    moved = {d.story_id for d in diff.drafts if d.old_path is not None}
    changed = dict.fromkeys(d.story_id for d in diff.drafts if d.type != "story.invalid")
    skipped = sorted({d.story_id for d in diff.drafts} - set(changed))
    for story_id in changed:
        story = diff.index.get(story_id)
        if story is None:
            units.append([{"op": "delete", "id": story_id}])
            deletes += 1
            continue
        upsert = {"op": "upsert", "story": {**story.fields, "body": story.body}}
        head = [{"op": "delete", "id": story_id}] if story_id in moved else []
        units.append([*head, upsert])
        upserts += 1
    return PublishPlan(units, upserts, deletes, skipped, tuple(diff.drafts))


def cmd_publish(args: argparse.Namespace) -> int:
    settings = _settings(args, args.repo)
    url, token = _client_target(args)
    redis_publish = None
    if args.redis_url is not None:
        redis_publish = _redis_publisher()
        if redis_publish is None:
            _err("redis backend not available (storywatch.log.redis cannot be imported)")
            return EXIT_USAGE
    elif token is None:
        _err("no token: pass --token or set STORYWATCH_TOKEN (a token with scope publish)")
        return EXIT_USAGE
    diff = diff_revisions(
        settings.repo,
        args.rev_from,
        args.rev_to,
        rules=_rules(settings),
        max_file_bytes=settings.watch.max_file_bytes,
    )
    plan = publish_plan(diff)
    span = f"{_short(diff.source['from'])}..{_short(diff.source['to'])}"
    for story_id in plan.skipped:
        _err(f"skipping {story_id}: invalid at {_short(diff.source['to'])} (see `storywatch scan`)")
    if not plan.units:
        print(f"nothing to publish in {span}")
        return EXIT_OK
    commits = _commits(settings, diff)  # SPEC §11: source.git.commit per path, at --to
    if redis_publish is not None:
        return _publish_redis(
            redis_publish, args.redis_url, settings, diff.source, plan, span, commits
        )
    if token is None:  # unreachable: checked above (keeps the type checker informed)
        return EXIT_USAGE
    return _publish_ws(
        url, token, settings, diff.source, plan, span, timeout=args.timeout, commits=commits
    )


def _commits(settings: Settings, diff: GitDiff) -> dict[str, Json]:
    from storywatch.attribution import commits_at

    rev = diff.source.get("to")
    if not isinstance(rev, str) or is_zero_sha(rev):
        return {}
    return commits_at(settings.repo, rev, {d.path for d in diff.drafts})


def _publish_ws(
    url: str,
    token: str,
    settings: Settings,
    source: Json,
    plan: PublishPlan,
    span: str,
    *,
    timeout: float,
    commits: dict[str, Json] | None = None,
) -> int:
    from storywatch import client
    from storywatch.attribution import fit_source, split_by_commit

    # One message carries one source: stories of different commits travel apart.
    messages: list[list[Json]] = []
    sources: list[Json] = []
    paths = {d.story_id: d.path for d in plan.drafts}
    for commit, units in split_by_commit(plan.units, paths, commits or {}):
        message_source = fit_source(with_commit(source, commit))
        for batch in client.batches(units, message_source, settings.limits.max_message_bytes):
            messages.append(batch)
            sources.append(message_source)
    try:
        result = asyncio.run(
            client.publish(url, token, messages, source, timeout=timeout, sources=sources)
        )
    except client.ClientError as exc:
        _err(str(exc))
        return EXIT_FAIL
    print(
        f"published {span}: {_counted(plan)} in {_plural(result.messages, 'message')}; "
        f"{_plural(result.count, 'event')}, seq {result.seq}"
    )
    return EXIT_OK


def _redis_publisher() -> RedisPublish | None:
    """:func:`publish_to_redis`, or None when redis cannot be imported (only this path
    needs it)."""
    try:
        import storywatch.log.redis  # noqa: F401
    except ImportError:
        return None
    return publish_to_redis


async def publish_to_redis(
    settings: BackendSettings,
    items: list[Json],
    source: Json | None,
    attribution: dict[str, Json] | None = None,
) -> tuple[int, int]:
    """``publish --redis-url``: diff items against the shared index and append, with no
    server in between (every server following the stream delivers the events); each
    path's commit (``attribution``) rides on its event. Returns (events emitted, last
    seq)."""
    from storywatch.index import Index
    from storywatch.ingest import Ingest
    from storywatch.log.redis import RedisLog

    requests = []
    for start in range(0, max(1, len(items)), MAX_PUBLISH_ITEMS):
        chunk = items[start : start + MAX_PUBLISH_ITEMS]
        message = {"type": "publish", "ref": None, "items": chunk, "source": source}
        try:
            request = parse_request(message, PathRules())
        except RequestError as exc:
            raise BackendError(f"the stories cannot be published: {exc.message}") from None
        if isinstance(request, Publish):
            requests.append(request)
    log = RedisLog(settings)
    ingest: Ingest | None = None
    try:
        state = await log.open()
        ingest = Ingest(Index.from_records(state.index), log)
        ingest.last_seq = state.seq
        count, seq = 0, state.seq
        for request in requests:
            try:
                done = await ingest.publish(request, None, attribution)
            except PublishRejected as exc:
                raise BackendError(f"redis refused the publish: {exc.message}") from exc
            if ingest.backlog:
                raise BackendError("redis became unreachable while publishing")
            count, seq = count + done.count, done.seq
        return count, seq
    finally:
        if ingest is not None:
            await ingest.close()
        await log.close()


def _publish_redis(
    publish_items: RedisPublish,
    redis_url: str,
    settings: Settings,
    source: Json,
    plan: PublishPlan,
    span: str,
    commits: dict[str, Json] | None = None,
) -> int:
    """Publish straight into the shared Redis stream (no server in between)."""
    backend = dataclasses.replace(settings.backend, redis_url=redis_url)
    items = [item for unit in plan.units for item in unit]
    try:
        count, seq = asyncio.run(publish_items(backend, items, source, commits))
    except BackendError as exc:
        _err(f"redis: {exc}")
        return EXIT_FAIL
    print(f"published {span} to Redis: {_counted(plan)}; {_plural(count, 'event')}, seq {seq}")
    return EXIT_OK


def _counted(plan: PublishPlan) -> str:
    return f"{_plural(plan.upserts, 'upsert')}, {_plural(plan.deletes, 'delete')}"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _short(rev: Any) -> str:
    return str(rev)[:12] if rev else "worktree"


def _client_target(args: argparse.Namespace) -> tuple[str, str | None]:
    from storywatch.client import DEFAULT_URL, ws_url

    url = args.url or os.environ.get("STORYWATCH_URL") or DEFAULT_URL
    token = args.token or os.environ.get("STORYWATCH_TOKEN") or None
    return ws_url(url), token


# -- tail ------------------------------------------------------------------------------


def cmd_tail(args: argparse.Namespace) -> int:
    url, token = _client_target(args)
    if token is None:
        _err("no token: pass --token or set STORYWATCH_TOKEN")
        return EXIT_USAGE
    flt: Json = {}
    for key, values in (("epics", args.epic), ("stories", args.story), ("events", args.event)):
        if values:
            flt[key] = list(dict.fromkeys(values))
    return asyncio.run(_tail(url, token, flt, as_json=args.json))


async def _tail(url: str, token: str, flt: Json, *, as_json: bool) -> int:
    from storywatch.client import ClientError, Follower

    def on_event(event: Json, raw: str) -> None:
        print(
            raw if as_json else f"{_local_time(event.get('time'))}  {describe_event(event)}",
            flush=True,
        )

    def on_catchup(chunk: Json, raw: str) -> None:
        if as_json:
            print(raw, flush=True)
            return
        for line in describe_catchup(chunk):
            print(f"{'caught up':>8}  {line}", flush=True)

    follower = Follower(url, token, flt, on_event=on_event, note=_err, on_catchup=on_catchup)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    following = asyncio.create_task(follower.run())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({following, stopping}, return_when=asyncio.FIRST_COMPLETED)
    for task in (following, stopping):
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await stopping
    try:
        await following
    except asyncio.CancelledError:
        return EXIT_OK
    except ClientError as exc:
        _err(str(exc))
        return EXIT_FAIL
    return EXIT_OK


def describe_catchup(chunk: Json) -> list[str]:
    """One line per story a catch-up chunk brings (SPEC §9): its state now, or gone."""
    lines = []
    for story in chunk.get("stories") or []:
        if isinstance(story, dict):
            title = f" {story.get('title')}" if story.get("title") else ""
            lines.append(f"{story.get('id')}{title} — now {story.get('status') or 'no status'}")
    for entry in chunk.get("invalid") or []:
        if isinstance(entry, dict):
            error = entry.get("error") or {}
            lines.append(f"{entry.get('story_id')} — invalid now ({error.get('reason')})")
    for story_id in chunk.get("removed") or []:
        lines.append(f"{story_id} — removed (deleted, or no longer in this filter)")
    return lines


def _local_time(stamp: Any) -> str:
    try:
        when = dt.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return "--:--:--"
    return when.astimezone().strftime("%H:%M:%S")


# -- token -----------------------------------------------------------------------------


def cmd_token(args: argparse.Namespace) -> int:
    name = args.name.strip()
    if not name:
        _err("token name must not be empty")
        return EXIT_USAGE
    token = new_token()
    entry: Json = {
        "name": name,
        "sha256": hash_token(token),
        "scopes": list(dict.fromkeys(args.scope)) or ["read"],
    }
    if args.epic:
        entry["epics"] = list(dict.fromkeys(args.epic))
    print(f"token: {token}")
    print("# Keep the token now: storywatch stores only its SHA-256 and cannot show it again.")
    print("# Add this entry under auth.tokens in the config (then SIGHUP or restart):")
    print(yaml.safe_dump([entry], default_flow_style=None, sort_keys=False), end="")
    return EXIT_OK
