"""The story index and the diff that turns changed files into events — pure.

The index is a snapshot of the repo: for each story id, its last good state and the path
that owns it; for each path, the id it claims. ``apply`` takes the new parse results of a
set of paths (``None`` = the file is gone), updates the snapshot and returns the drafts of
the events that describe the difference. Events come from comparing snapshots, never from
raw file-system events, which is what makes editor saves, checkouts and renames come out
right.

Identity rules (SPEC §2/§3):
- the path that owns an id keeps it while it exists, even while its content is broken
  (the last good state is kept; ``story.invalid`` is reported);
- a second valid file with an owned id is a duplicate (``story.invalid``/``duplicate_id``);
  when the owner goes away the smallest duplicate path takes over;
- a file that never was a story and fails to parse is not a story: no event.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from storywatch.changes import change_type, field_changes
from storywatch.events import Draft
from storywatch.story import ParseError, ParseResult, Story

Changes = Mapping[str, ParseResult | None]


@dataclass
class Index:
    stories: dict[str, Story] = field(default_factory=dict)  # id → last good state
    owner: dict[str, str] = field(default_factory=dict)  # id → owning path
    claims: dict[str, str] = field(default_factory=dict)  # path → id it owns or duplicates
    broken: dict[str, ParseError] = field(default_factory=dict)  # owning path → its error
    dupes: dict[str, Story] = field(default_factory=dict)  # path → valid duplicate

    def __len__(self) -> int:
        return len(self.stories)

    def get(self, story_id: str) -> Story | None:
        return self.stories.get(story_id)

    def owns(self, path: str) -> str | None:
        """The id ``path`` owns, if any."""
        story_id = self.claims.get(path)
        if story_id is not None and self.owner.get(story_id) == path:
            return story_id
        return None

    def paths(self) -> Iterator[str]:
        return iter(self.claims)

    def problems(self) -> Iterator[tuple[str, str, ParseError]]:
        """(path, id, error) for every broken owner and duplicate."""
        for path, error in self.broken.items():
            yield path, self.claims[path], error
        for path, story in self.dupes.items():
            yield path, story.id, _duplicate_error(story.id, self.owner[story.id])

    def records(self, paths: Iterable[str]) -> dict[str, dict[str, Any] | None]:
        """What a backend persists of these paths (None: the path holds nothing)."""
        out: dict[str, dict[str, Any] | None] = {}
        for path in paths:
            story_id = self.claims.get(path)
            if story_id is None:
                out[path] = None
            elif path in self.dupes:
                out[path] = _story_record("dupe", self.dupes[path])
            else:
                record = _story_record("owner", self.stories[story_id])
                error = self.broken.get(path)
                if error is not None:
                    record["error"] = {
                        **error.as_json(),
                        "has_front_matter": error.has_front_matter,
                    }
                out[path] = record
        return out

    @classmethod
    def from_records(cls, records: Mapping[str, Mapping[str, Any]]) -> Index:
        index = cls()
        for path, record in records.items():
            story = Story(
                id=record["id"],
                path=record["story"]["path"],
                fields=record["story"],
                body=record["body"],
            )
            index.claims[path] = story.id
            if record["role"] == "dupe":
                index.dupes[path] = story
                continue
            index.owner[story.id] = path
            index.stories[story.id] = story
            error = record.get("error")
            if error:
                index.broken[path] = ParseError(
                    error["reason"],
                    error["message"],
                    error["line"],
                    has_front_matter=error.get("has_front_matter", True),
                )
        return index

    def apply(self, changes: Changes, *, emit: bool = True) -> list[Draft]:
        """Take the new state of the changed paths; return the resulting events.

        With ``emit=False`` the state is the same but no event is described (none is
        returned): a silent startup scan would throw away one diff per story."""
        affected: set[str] = set()
        valid: dict[str, Story] = {}
        for path, result in changes.items():
            old_id = self.claims.get(path)
            if old_id is not None:
                affected.add(old_id)
            if isinstance(result, Story):
                valid[path] = result
                affected.add(result.id)
        was_dupe = {path: self.dupes[path].id for path in changes if path in self.dupes}
        was_broken = {path: self.broken[path] for path in changes if path in self.broken}
        # Forget what the changed paths claimed; _settle_id records what they claim now.
        for path in changes:
            self.claims.pop(path, None)
            self.broken.pop(path, None)
            self.dupes.pop(path, None)
        # Who claims each id, gathered once: scanning every file per id is quadratic.
        claimed: dict[str, list[str]] = {}
        for path, story in [*valid.items(), *self.dupes.items()]:
            claimed.setdefault(story.id, []).append(path)
        drafts: list[Draft] = []
        for story_id in sorted(affected):
            claimants = claimed.get(story_id, [])
            drafts.extend(
                self._settle_id(story_id, changes, valid, was_dupe, was_broken, claimants, emit)
            )
        return drafts

    # -- internals ----------------------------------------------------------------------

    def _settle_id(
        self,
        story_id: str,
        changes: Changes,
        valid: dict[str, Story],
        was_dupe: dict[str, str],
        was_broken: dict[str, ParseError],
        claimants: list[str],
        emit: bool,
    ) -> Iterator[Draft]:
        # Every state change happens whether or not ``emit``; only the drafts are skipped.
        old = self.stories.get(story_id)
        old_owner = self.owner.get(story_id)

        owner: str | None = None
        if old_owner is not None and old_owner not in changes:
            owner = old_owner  # untouched: keeps its id, good or broken
            self.claims[owner] = story_id
        elif old_owner is not None and old is not None:
            result = changes[old_owner]
            if isinstance(result, ParseError):
                owner = old_owner
                self.claims[owner] = story_id
                self.broken[owner] = result
                if emit and was_broken.get(owner) != result:
                    yield _invalid(old, owner, result)
            elif isinstance(result, Story) and result.id == story_id:
                owner = old_owner
        if owner is None and claimants:
            # The owner went away in this batch: a file that appears in the same batch with
            # its id is the owner renamed (git mv, editor rename), before any older duplicate.
            renamed = [p for p in claimants if p in valid] if old_owner in changes else []
            owner = min(renamed or claimants)

        if owner is None:
            self.owner.pop(story_id, None)
            self.stories.pop(story_id, None)
            if emit and old is not None:
                yield _deleted(old)
            return

        self.owner[story_id] = owner
        new = valid.get(owner) or self.dupes.pop(owner, None)
        if new is not None:  # the owner has a new good state
            self.claims[owner] = story_id
            self.stories[story_id] = new
            draft = diff_story(old, new) if emit else None
            if draft is not None:
                yield draft

        for path in sorted(claimants):
            if path == owner:
                continue
            story = valid.get(path) or self.dupes[path]
            self.claims[path] = story_id
            self.dupes[path] = story
            if emit and path in valid and was_dupe.get(path) != story_id:
                yield _invalid(self.stories[story_id], path, _duplicate_error(story_id, owner))


def diff_story(old: Story | None, new: Story) -> Draft | None:
    """The event that takes ``old`` to ``new`` (None when nothing changed)."""
    if old is None:
        return Draft(
            type="story.created",
            story_id=new.id,
            path=new.path,
            story=new.fields,
            changes=field_changes({}, new.fields),
        )
    changes = field_changes(old.fields, new.fields)
    body_changed = old.body != new.body
    moved = old.path != new.path
    kind = change_type(changes, moved=moved, body_changed=body_changed)
    if kind is None:
        return None
    return Draft(
        type=kind,
        story_id=new.id,
        path=new.path,
        story=new.fields,
        changes=changes,
        body_changed=body_changed,
        old_path=old.path if moved else None,
    )


def _story_record(role: str, story: Story) -> dict[str, Any]:
    return {"role": role, "id": story.id, "story": story.fields, "body": story.body}


def _deleted(old: Story) -> Draft:
    return Draft(
        type="story.deleted",
        story_id=old.id,
        path=old.path,
        story=old.fields,
        changes=field_changes(old.fields, {}),
    )


def _invalid(last_good: Story, path: str, error: ParseError) -> Draft:
    return Draft(
        type="story.invalid",
        story_id=last_good.id,
        path=path,
        story=last_good.fields,
        changes={},
        error=error,
    )


def _duplicate_error(story_id: str, owner_path: str) -> ParseError:
    return ParseError("duplicate_id", f"id {story_id!r} is already used by {owner_path}")
