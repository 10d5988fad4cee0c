"""The request bodies of SPEC §10 — pure.

``standard``: the event JSON as on the wire, without ``subs`` (the hook is not a
subscription). ``slack``: ``{"text": …}`` for Slack-compatible incoming webhooks, naming
the story's id and title and what changed (``draft → in-progress``, ``created``,
``deleted``, ``updated: owner, labels``). Slack's mrkdwn treats ``&``, ``<`` and ``>`` as
markup, so every value taken from a story is escaped.
"""

from __future__ import annotations

import json
from typing import Any, Final

from storywatch.events import Json

TEST_EVENT: Final = "storywatch.test"


def encode(payload: Json) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def standard_body(data: Json) -> bytes:
    """The event as on the wire, minus the per-connection fields."""
    return encode({key: value for key, value in data.items() if key not in ("subs", "replay")})


def slack_body(data: Json) -> bytes:
    """``{"text"}``; a compacted event (a hook behind the log, SPEC §10) says so too."""
    if data.get("compacted"):
        return encode({"text": slack_text(data), "compacted": True})
    return encode({"text": slack_text(data)})


def probe_payload(hook: str, time: str) -> Json:
    return {"type": TEST_EVENT, "hook": hook, "time": time}


def probe_body(hook: str, time: str, fmt: str) -> bytes:
    """A ``storywatch.test`` body; a Slack hook also gets the ``text`` Slack needs."""
    payload = probe_payload(hook, time)
    if fmt == "slack":
        payload = {"text": f"storywatch: test delivery for hook {escape(hook)}", **payload}
    return encode(payload)


def slack_text(data: Json) -> str:
    """One line: ``*INT-002* Title: draft → in-progress``."""
    story = data.get("story") or {}
    head = f"*{escape(str(data.get('story_id', '?')))}*"
    title = story.get("title")
    if title is not None and data.get("type") != "story.invalid":
        head += f" {escape(_text(title))}"
    return f"{head}: {_what(data)}"


def escape(text: str) -> str:
    """Slack's three control characters (https://api.slack.com/reference/surfaces/formatting)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _what(data: Json) -> str:
    kind = data.get("type")
    if kind == "story.created":
        return "created"
    if kind == "story.deleted":
        return "deleted"
    if kind == "story.transitioned":
        return f"{escape(_text(data.get('from')))} → {escape(_text(data.get('to')))}"
    if kind == "story.moved":
        old, new = _text(data.get("old_path")), _text(data.get("path"))
        return f"moved: {escape(old)} → {escape(new)}"
    if kind == "story.invalid":
        error = data.get("error") or {}
        return f"invalid: {escape(_text(error.get('reason')))}"
    keys = [str(key) for key in data.get("changes") or {}]
    if data.get("body_changed"):
        keys.append("body")
    return "updated: " + escape(", ".join(keys) if keys else "(nothing visible)")


def _text(value: Any) -> str:
    return "(none)" if value is None else str(value)
