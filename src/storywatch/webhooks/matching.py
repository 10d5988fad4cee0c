"""What one hook receives of an event — pure.

The scope rules of a token apply first (a story leaving the hook's epics arrives as
``story.deleted`` with ``reason: out_of_scope``), then the hook's filter, on the event *as the
hook receives it* — the same two steps, in the same order, as a WebSocket subscription.
"""

from __future__ import annotations

from storywatch.coalesce import transformed
from storywatch.events import Event, Json
from storywatch.webhooks.bodies import slack_body, standard_body
from storywatch.webhooks.config import HookConfig


def hook_view(event: Event, hook: HookConfig) -> Json | None:
    """The event's wire form as the hook gets it, or None when it does not get it."""
    view = transformed(event, hook.scope)
    if view is None:
        return None
    if not hook.filter.matches(view.type, view.before, view.after):
        return None
    return view.data if view.data is not None else event.data


def request_body(hook: HookConfig, event: Event, data: Json) -> bytes:
    """The POST body for ``data`` (from :func:`hook_view`) in the hook's format."""
    if hook.format == "slack":
        return slack_body(data)
    if data is event.data:  # not rewritten: the log's own encoding, made once per event
        return event.encoded().encode()
    return standard_body(data)
