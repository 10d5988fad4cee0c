"""Client messages parsed into typed requests — pure, the one gate every client value passes.

Nothing a client sends reaches a session's state, the index, the log or another client
unless it came through :func:`parse_request`. The rules (SPEC §4, §13):

- every string, and every object key, at any depth is valid Unicode (a lone UTF-16
  surrogate, which JSON can spell as ``"\\ud800"``, can be neither stored nor sent);
- numbers are finite; values nest at most 64 levels;
- ``sub`` is 1–64 characters; a filter has at most 256 values per key and 4 KiB encoded;
- ``publish``: at most 1000 items; ``source`` an object of at most 16 top-level keys and
  1 KiB encoded; every path a published story lands on obeys the repo's path rules.

A message that breaks a rule raises :class:`RequestError` with the code the client gets
(``bad_request`` or ``invalid_filter``) and the ``ref`` to echo — only when that ref is
itself safe to send back.
"""

from __future__ import annotations

import json
import math
import posixpath
from dataclasses import dataclass
from typing import Any, Final

from storywatch.events import Json
from storywatch.filters import Filter, FilterError
from storywatch.paths import PathRules

MAX_SUB_LENGTH: Final = 64
MAX_PUBLISH_ITEMS: Final = 1000
MAX_SOURCE_KEYS: Final = 16
MAX_SOURCE_BYTES: Final = 1024
MAX_FILTER_VALUES: Final = 256
MAX_FILTER_BYTES: Final = 4096
MAX_DEPTH: Final = 64
MAX_NODES: Final = 100_000
MAX_PATH_LENGTH: Final = 1024


class RequestError(ValueError):
    """The client's message is refused: ``code`` and ``message`` go back in an ``error``."""

    def __init__(self, code: str, message: str, ref: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref


@dataclass(frozen=True, slots=True)
class Since:
    """A resume cursor. ``epoch``/``seq`` are None when the client's value cannot name a
    position of any stream (then it simply cannot be recovered)."""

    epoch: str | None
    seq: int | None


@dataclass(frozen=True, slots=True)
class Subscribe:
    sub: str
    filter: Filter
    since: Since | None
    snapshot: bool


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    sub: str


@dataclass(frozen=True, slots=True)
class Ping:
    nonce: Any  # any JSON value, echoed


@dataclass(frozen=True, slots=True)
class Upsert:
    """A story to create or update. ``path`` is where the client put it, or None: then it
    stays where it is, and a new story lands on ``default_path``."""

    story_id: str
    fields: Json  # the story as sent, with ``id`` as a string
    path: str | None
    default_path: str


@dataclass(frozen=True, slots=True)
class Delete:
    story_id: str


PublishItem = Upsert | Delete


@dataclass(frozen=True, slots=True)
class Publish:
    ref: Any
    items: tuple[PublishItem, ...]
    source: Json


Request = Subscribe | Unsubscribe | Ping | Publish


def decode(message: str) -> Json:
    """The message as a JSON object, or :class:`RequestError` ``bad_request``."""
    try:
        msg = json.loads(message, parse_constant=_no_constant, parse_float=_finite_float)
    except (ValueError, RecursionError):
        raise RequestError("bad_request", "message is not valid JSON") from None
    if not isinstance(msg, dict):
        raise RequestError("bad_request", "message must be a JSON object")
    return msg


def parse_request(msg: Json, rules: PathRules) -> Request:
    """One decoded client message as a typed request."""
    ref = safe_ref(msg.get("sub", msg.get("ref")))
    kind = msg.get("type")
    if not isinstance(kind, str) or not valid_unicode(kind):
        raise RequestError("bad_request", "message needs a string `type`", ref)
    if kind == "subscribe":
        return _subscribe(msg)
    if kind == "unsubscribe":
        sub = msg.get("sub")
        if not isinstance(sub, str) or not valid_unicode(sub):
            raise RequestError("bad_request", "unsubscribe needs `sub`: a string", None)
        return Unsubscribe(sub)
    if kind == "ping":
        nonce = msg.get("nonce")
        problem = json_value_problem(nonce)
        if problem:
            raise RequestError("bad_request", f"`nonce`: {problem}", ref)
        return Ping(nonce)
    if kind == "publish":
        return _publish(msg, rules)
    raise RequestError("unknown_type", f"unknown message type {kind[:64]!r}", ref)


def safe_ref(value: Any) -> str | int | None:
    """A client's ``sub``/``ref`` if it can be echoed as is (a short valid string or an
    integer), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and len(value) <= 256 and valid_unicode(value):
        return value
    return None


def _subscribe(msg: Json) -> Subscribe:
    sub = msg.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > MAX_SUB_LENGTH or not valid_unicode(sub):
        raise RequestError("bad_request", "subscribe needs `sub`: a string of 1-64 chars")
    flt = parse_filter(msg.get("filter"), sub)
    since = _since(msg.get("since"), sub)
    snapshot = msg.get("snapshot", False)
    if not isinstance(snapshot, bool):
        raise RequestError("bad_request", "`snapshot` must be true or false", sub)
    return Subscribe(sub, flt, since, snapshot)


def parse_filter(raw: Any, ref: Any = None) -> Filter:
    """A client's filter, bounded (SPEC §13): ``invalid_filter`` on any problem."""
    if raw is not None:
        if not isinstance(raw, dict):
            raise RequestError("invalid_filter", "filter must be an object", ref)
        if json_value_problem(raw):
            raise RequestError("invalid_filter", "filter holds a value that is not valid", ref)
        for key, values in raw.items():
            if isinstance(values, list) and len(values) > MAX_FILTER_VALUES:
                raise RequestError(
                    "invalid_filter",
                    f"filter key {key[:64]!r} has more than {MAX_FILTER_VALUES} values",
                    ref,
                )
        if len(compact(raw).encode()) > MAX_FILTER_BYTES:
            raise RequestError("invalid_filter", f"filter is over {MAX_FILTER_BYTES} bytes", ref)
    try:
        return Filter.parse(raw)
    except FilterError as exc:
        raise RequestError("invalid_filter", str(exc), ref) from None


def _since(raw: Any, sub: str) -> Since | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or "epoch" not in raw or "seq" not in raw:
        raise RequestError("bad_request", '`since` must be {"epoch": …, "seq": …}', sub)
    epoch, seq = raw["epoch"], raw["seq"]
    if json_value_problem(epoch) or json_value_problem(seq):
        raise RequestError("bad_request", "`since` holds a value that is not valid", sub)
    return Since(
        epoch if isinstance(epoch, str) else None,
        seq if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0 else None,
    )


def _publish(msg: Json, rules: PathRules) -> Publish:
    ref = msg.get("ref")
    problem = json_value_problem(ref)
    if problem:
        raise RequestError("bad_request", f"`ref`: {problem}")
    if isinstance(ref, str) and len(ref) > 256:
        raise RequestError("bad_request", "`ref`: at most 256 characters")
    items = msg.get("items")
    if not isinstance(items, list) or len(items) > MAX_PUBLISH_ITEMS:
        raise RequestError(
            "bad_request", f"`items` must be a list of at most {MAX_PUBLISH_ITEMS}", ref
        )
    parsed = []
    for n, item in enumerate(items):
        try:
            parsed.append(_publish_item(item, rules))
        except RequestError as exc:
            raise RequestError("bad_request", f"items[{n}]: {exc.message}", ref) from None
    return Publish(ref, tuple(parsed), _source(msg.get("source"), ref))


def _source(raw: Any, ref: Any) -> Json:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise RequestError("bad_request", "`source` must be an object", ref)
    if len(raw) > MAX_SOURCE_KEYS:
        raise RequestError("bad_request", f"`source`: at most {MAX_SOURCE_KEYS} keys", ref)
    problem = json_value_problem(raw)
    if problem:
        raise RequestError("bad_request", f"`source` {problem}", ref)
    if len(compact(raw).encode()) > MAX_SOURCE_BYTES:
        raise RequestError("bad_request", f"`source`: at most {MAX_SOURCE_BYTES} bytes", ref)
    return dict(raw)


def _publish_item(item: Any, rules: PathRules) -> PublishItem:
    if not isinstance(item, dict):
        raise RequestError("bad_request", "must be an object")
    op = item.get("op")
    if op == "delete":
        story_id = _story_id(item.get("id"))
        if story_id is None:
            raise RequestError("bad_request", "delete needs an `id` (string or number)")
        return Delete(story_id)
    if op != "upsert":
        raise RequestError("bad_request", "`op` must be upsert or delete")
    story = item.get("story")
    if not isinstance(story, dict):
        raise RequestError("bad_request", "upsert needs a `story` object")
    story_id = _story_id(story.get("id"))
    if story_id is None:
        raise RequestError("bad_request", "story needs an `id` (string or number)")
    problem = json_value_problem(story)
    if problem:
        raise RequestError("bad_request", f"story {problem}")
    path = story.get("path")
    if "path" in story and not published_path_ok(path, rules):
        raise RequestError(
            "bad_request",
            "story `path` must be a *.md file inside the repo that is not ignored "
            "(no `..`, no part starting with `.`)",
        )
    default_path = f"{story_id}.md"
    if path is None and not published_path_ok(default_path, rules):
        raise RequestError("bad_request", "story needs a `path` (its id cannot be used as one)")
    fields = {**story, "id": story_id}
    return Upsert(story_id, fields, path, default_path)


def _story_id(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value)
    if not text or len(text) > MAX_PATH_LENGTH or not valid_unicode(text):
        return None
    return text


def published_path_ok(path: Any, rules: PathRules) -> bool:
    """A path a published story may land on: the same rule as a file on disk (SPEC §2)."""
    if not isinstance(path, str) or not path or len(path) > MAX_PATH_LENGTH:
        return False
    if path.startswith("/") or "\\" in path or "\x00" in path or not valid_unicode(path):
        return False
    if posixpath.normpath(path) != path:
        return False
    parts = path.split("/")
    if any(part.startswith(".") or part == "" for part in parts):
        return False
    return path.endswith(".md") and rules.wanted(path)


def valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_value_problem(value: Any) -> str | None:
    """Why a client's value could not be stored and sent back as it is, if it could not."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    nodes = 0
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if depth > MAX_DEPTH or nodes > MAX_NODES:
            return "nested too deeply or too large"
        if isinstance(item, str):
            if not valid_unicode(item):
                return "holds a string that is not valid Unicode"
        elif isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str) or not valid_unicode(key):
                    return "holds a key that is not valid Unicode"
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, float) and not math.isfinite(item):
            return "holds a number out of range"
    return None


def compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value
