"""Parse one story file into a JSON-safe story — pure, no I/O.

A story is a markdown file whose YAML front-matter has an ``id``. Parsing never raises:
it returns a :class:`Story` or a :class:`ParseError` saying why not. Whether a parse error
matters (a former story that broke) or not (a README) is the index's decision.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import yaml
from frontmatter.default_handlers import YAMLHandler

Reason = Literal["yaml", "missing_id", "duplicate_id", "too_large", "unreadable"]

# Front-matter boundaries are split here rather than with python-frontmatter's regex, whose
# ``\s*`` swallows blank lines and so shifts the line numbers reported for YAML errors.
# The YAML itself goes through python-frontmatter's handler (PyYAML's C safe loader).
_BOUNDARY: Final = re.compile(r"^-{3,}[ \t]*$", re.MULTILINE)
_YAML: Final = YAMLHandler()
_BOM: Final = "\ufeff"

# Guards against hostile YAML: alias bombs expand to huge trees only when walked, so the
# walk that makes the front-matter JSON-safe counts nodes and depth and gives up early.
MAX_NODES: Final = 100_000
MAX_DEPTH: Final = 64


@dataclass(frozen=True, slots=True)
class Story:
    """The last parsed state of one story file."""

    id: str
    path: str
    fields: dict[str, Any]  # JSON-safe front-matter, plus "id" (a string) and "path"
    body: str = field(repr=False)

    @property
    def status(self) -> Any:
        return self.fields.get("status")


@dataclass(frozen=True, slots=True)
class ParseError:
    """Why a file is not a (valid) story. ``line`` is 1-based in the file, when known."""

    reason: Reason
    message: str
    line: int | None = None
    has_front_matter: bool = True

    def as_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "message": self.message, "line": self.line}


ParseResult = Story | ParseError


class _TooComplex(Exception):
    pass


def parse_story(path: str, raw: bytes, *, max_bytes: int = 1_048_576) -> ParseResult:
    """Parse the bytes of the file at ``path`` (POSIX, relative to the repo root)."""
    if len(raw) > max_bytes:
        return ParseError("too_large", f"file is {len(raw)} bytes, limit is {max_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return ParseError("unreadable", f"not valid UTF-8: {exc.reason}", line)
    return parse_text(path, text)


def parse_text(path: str, text: str) -> ParseResult:
    text = text.removeprefix(_BOM)
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    split = _split(text)
    if isinstance(split, ParseError):
        return split
    front, body = split
    try:
        meta = _YAML.load(front)
    except yaml.MarkedYAMLError as exc:
        return ParseError("yaml", _yaml_message(exc), _error_line(exc, front))
    except (yaml.YAMLError, RecursionError, ValueError, OverflowError) as exc:
        return ParseError("yaml", f"invalid YAML: {type(exc).__name__}: {exc}"[:300])
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        return ParseError("yaml", f"front-matter is a {type(meta).__name__}, not a mapping", 2)
    try:
        fields = _json_mapping(meta)
    except _TooComplex as exc:
        return ParseError("yaml", str(exc))
    story_id = _story_id(meta.get("id"))
    if story_id is None:
        return ParseError("missing_id", "front-matter has no usable `id`", 2)
    fields["id"] = story_id
    fields["path"] = path
    return Story(id=story_id, path=path, fields=fields, body=body)


def _split(text: str) -> tuple[str, str] | ParseError:
    opening = _BOUNDARY.match(text)
    if opening is None:
        return ParseError("missing_id", "no front-matter", None, has_front_matter=False)
    closing = _BOUNDARY.search(text, opening.end())
    if closing is None:
        return ParseError("yaml", "front-matter is not closed by a `---` line", 1)
    # The front-matter keeps its leading newline so YAML line numbers match the file's.
    front = text[opening.end() : closing.start()]
    body = text[closing.end() :].removeprefix("\n")
    return front, body


def _error_line(exc: yaml.MarkedYAMLError, front: str) -> int | None:
    """The 1-based file line of a YAML error. A construct left open (a quote, ``[``, ``{``)
    is only noticed at the end of the front-matter: name the line where it opened."""
    mark = exc.problem_mark or exc.context_mark
    if mark is None:
        return None
    at_end = mark.line >= front.count("\n") - (0 if front.endswith("\n") else -1)
    if at_end and exc.context_mark is not None:
        mark = exc.context_mark
    return mark.line + 1


def _yaml_message(exc: yaml.MarkedYAMLError) -> str:
    parts = [p for p in (exc.context, exc.problem) if p]
    return ("invalid YAML: " + ", ".join(parts))[:300] if parts else "invalid YAML"


def _story_id(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value) if not value.is_integer() else str(int(value))
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _json_mapping(meta: Mapping[Any, Any]) -> dict[str, Any]:
    budget = [MAX_NODES]
    return {_json_key(k): _jsonable(v, 1, budget) for k, v in meta.items()}


def _json_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bool) or key is None:
        return str(key).lower() if key is not None else "null"
    return _jsonable_scalar(key) if not isinstance(key, int | float) else str(key)


def _jsonable(value: Any, depth: int, budget: list[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise _TooComplex(f"front-matter expands to more than {MAX_NODES} values (alias bomb?)")
    if depth > MAX_DEPTH:
        raise _TooComplex(f"front-matter is nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {_json_key(k): _jsonable(v, depth + 1, budget) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, depth + 1, budget) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((_jsonable(v, depth + 1, budget) for v in value), key=str)
    return _jsonable_scalar(value)


def _jsonable_scalar(value: Any) -> str:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
