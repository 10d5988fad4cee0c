"""Subscription filters and token scopes — pure.

A filter has up to six keys, each a list: values inside a key are OR-ed, keys are AND-ed,
``{}`` matches everything. A story matches when its state before *or* after the event does,
so a board column sees stories leave it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from storywatch.events import EVENT_TYPES, Json

FILTER_KEYS: Final = ("epics", "stories", "events", "statuses", "labels", "owners")
# Front-matter fields a story's owners are read from, in this order.
OWNER_FIELDS: Final = ("owner", "owners", "assignee", "assignees")


class FilterError(ValueError):
    """The client's filter is malformed (→ ``invalid_filter``)."""


@dataclass(frozen=True, slots=True)
class Filter:
    epics: frozenset[str] | None = None
    stories: frozenset[str] | None = None
    events: frozenset[str] | None = None
    statuses: frozenset[str] | None = None
    labels: frozenset[str] | None = None
    owners: frozenset[str] | None = None

    @classmethod
    def parse(cls, raw: Any) -> Filter:
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise FilterError("filter must be an object")
        unknown = sorted(set(raw) - set(FILTER_KEYS))
        if unknown:
            raise FilterError(f"unknown filter key {unknown[0]!r}; known: {', '.join(FILTER_KEYS)}")
        values: dict[str, frozenset[str]] = {}
        for key, items in raw.items():
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise FilterError(f"filter key {key!r} must be a list of strings")
            values[key] = frozenset(items)
        bad_events = sorted(values.get("events", frozenset()) - set(EVENT_TYPES))
        if bad_events:
            raise FilterError(f"unknown event type {bad_events[0]!r} in filter")
        return cls(**values)

    def to_json(self) -> Json:
        return {
            key: sorted(value) for key in FILTER_KEYS if (value := getattr(self, key)) is not None
        }

    def matches_story(self, story: Json | None) -> bool:
        """Whether one state of a story passes every story-related key."""
        if story is None:
            return False
        if self.stories is not None and str(story.get("id")) not in self.stories:
            return False
        if self.epics is not None and not _scalar_in(story.get("epic"), self.epics):
            return False
        if self.statuses is not None and not _scalar_in(story.get("status"), self.statuses):
            return False
        if self.labels is not None and not _any_in(story.get("labels"), self.labels):
            return False
        return self.owners is None or any(
            _any_in(story.get(name), self.owners) for name in OWNER_FIELDS
        )

    def matches(self, event_type: str, before: Json | None, after: Json | None) -> bool:
        if self.events is not None and event_type not in self.events:
            return False
        return self.matches_story(after) or self.matches_story(before)


def _scalar_in(value: Any, allowed: frozenset[str]) -> bool:
    return value is not None and str(value) in allowed


def _any_in(value: Any, allowed: frozenset[str]) -> bool:
    if isinstance(value, list):
        return any(_scalar_in(v, allowed) for v in value)
    return _scalar_in(value, allowed)


@dataclass(frozen=True, slots=True)
class Scope:
    """What a token may see: every story, or only those of some epics."""

    epics: frozenset[str] | None = None

    def sees(self, story: Json | None) -> bool:
        if story is None:
            return False
        return self.epics is None or _scalar_in(story.get("epic"), self.epics)
