"""Which paths are stories — pure: built-in ignores plus include/exclude globs.

Globs are matched against POSIX paths relative to the repo root: ``*`` and ``?`` stay
inside one path segment, ``**/`` spans any number of folders (including none).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Final

IGNORED_DIRS: Final = frozenset({".git", ".storywatch", "node_modules", "__pycache__"})
# Editor and sync temp files (vim, emacs, JetBrains, Syncthing, …), beyond the *.md filter.
IGNORED_FILES: Final = (
    "*.swp",
    "*.swx",
    "*.swo",
    "*~",
    ".#*",
    "#*#",
    "4913",
    "*___jb_tmp___",
    "*___jb_old___",
    "*.tmp",
    ".syncthing.*",
    "~syncthing~*",
    ".~lock.*",
    "*.crdownload",
    "*.part",
    ".DS_Store",
    ".*.md.*",
    "*.md.*.tmp",
    ".goutputstream-*",
)
_IGNORED_FILE_RE: Final = re.compile("|".join(fnmatch.translate(p) for p in IGNORED_FILES))


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


class PathRules:
    def __init__(self, include: Iterable[str] = ("**/*.md",), exclude: Iterable[str] = ()) -> None:
        self._include = [glob_to_regex(p) for p in include]
        self._exclude = [glob_to_regex(p) for p in exclude]

    def ignored_dir(self, name: str) -> bool:
        return name in IGNORED_DIRS or name.startswith(".")

    def ignored_name(self, name: str) -> bool:
        return _ignored_name(name)

    def wanted(self, rel: str) -> bool:
        """Whether the file at ``rel`` (POSIX, relative to the root) may be a story."""
        parts = rel.split("/")
        if any(self.ignored_dir(part) for part in parts[:-1]):
            return False
        if _ignored_name(parts[-1]):
            return False
        if not any(p.match(rel) for p in self._include):
            return False
        return not any(p.match(rel) for p in self._exclude)

    def dir_wanted(self, rel: str) -> bool:
        """Whether a folder may hold stories (for walking and for directory events)."""
        return not any(self.ignored_dir(part) for part in rel.split("/") if part)


@lru_cache(maxsize=4096)
def _ignored_name(name: str) -> bool:
    return _IGNORED_FILE_RE.match(name) is not None
