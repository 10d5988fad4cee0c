"""What the read side (server, HTTP API) needs from the write side, as small Protocols.

They are handed in at wiring time (``app.py``): the server and the API import these, never
the ingest, the index, the watcher or the repo.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from storywatch.inbound import Publish
from storywatch.values import Principal


@dataclass(frozen=True, slots=True)
class Published:
    """What a ``publish`` did: events emitted and the last seq (or the current one)."""

    count: int
    seq: int


class Publisher(Protocol):
    async def publish(self, request: Publish, principal: Principal) -> Published:
        """Apply a client's publish to the index and log what changed. Raises
        :class:`~storywatch.errors.PublishRejected` when it is not applied at all."""
        ...


class StoryBodies(Protocol):
    def body_of(self, story_id: str) -> str | None:
        """The markdown body of a story, if it is known."""
        ...
