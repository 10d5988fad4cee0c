"""What changed between two states of a story — pure: the ``changes`` of an event and its
type by SPEC §3's precedence. Used by the diff (index) and by coalescing (several pending
events merged into one)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from storywatch.events import EventType


def change_type(changes: Mapping[str, Any], *, moved: bool, body_changed: bool) -> EventType | None:
    """The type of a change to an existing story, by SPEC §3's precedence (None: no change)."""
    if "status" in changes:
        return "story.transitioned"
    if moved:
        return "story.moved"
    if changes or body_changed:
        return "story.updated"
    return None


def field_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each changed front-matter key → {old, new}; ``path`` is not front-matter."""
    out: dict[str, dict[str, Any]] = {}
    for key in _ordered_union(old, new):
        if key == "path":
            continue
        before, after = old.get(key), new.get(key)
        if before != after:  # a key set to null is the same as an absent key
            out[key] = {"old": before, "new": after}
    return out


def _ordered_union(a: Iterable[str], b: Iterable[str]) -> list[str]:
    seen = dict.fromkeys(a)
    seen.update(dict.fromkeys(b))
    return list(seen)
