#!/usr/bin/env python3
"""Follow a storywatch server: keep every story in memory, print each change, and
reconnect with backoff, resuming from the last event seen so nothing is lost — after a
short absence the missed events are replayed; after a long one (past the server's replay
buffer) the server sends a catch-up: the current state of the stories that changed and
the ids that went away, applied here in place of a reload.

    pip install 'websockets>=14'
    STORYWATCH_TOKEN=… python examples/client.py [EPIC …]

STORYWATCH_URL defaults to ws://127.0.0.1:8765/ws.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

URL = os.environ.get("STORYWATCH_URL", "ws://127.0.0.1:8765/ws")
TOKEN = os.environ["STORYWATCH_TOKEN"]
SUB = "example"
FILTER = {"epics": sys.argv[1:]} if sys.argv[1:] else {}

stories: dict[str, dict[str, Any]] = {}  # story id -> latest state
cursor: dict[str, Any] | None = None  # {"epoch", "seq"} of the last event or snapshot applied
need_snapshot = True  # our state is not continuous with the stream
loading: list[dict[str, Any]] = []  # snapshot chunks being received


def subscribe() -> str:
    message: dict[str, Any] = {"type": "subscribe", "sub": SUB, "filter": FILTER}
    if need_snapshot or cursor is None:
        message["snapshot"] = True
    else:
        message["since"] = cursor  # the server replays what we missed
    return json.dumps(message)


async def follow() -> None:
    global cursor, need_snapshot, stories
    unsubscribe = json.dumps({"type": "unsubscribe", "sub": SUB})
    # The iterator reconnects with exponential backoff on network errors and HTTP 5xx;
    # it raises on 401/403 (a wrong token will not get better by retrying).
    async for ws in connect(URL, subprotocols=["storywatch.v1"], max_size=None,
                            additional_headers={"Authorization": f"Bearer {TOKEN}"}):
        silence = 30.0  # until welcome says: no message for 2 × heartbeat_s = a dead link
        try:
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), silence))
                kind = msg["type"]
                if kind == "welcome":
                    silence = 2 * msg["heartbeat_s"]
                    if cursor is not None and cursor["epoch"] != msg["epoch"]:
                        need_snapshot = True  # history was lost: replay cannot bridge it
                    loading.clear()
                    await ws.send(subscribe())
                elif kind == "subscribed" and msg["recovered"] is False:
                    need_snapshot = True  # missed events are gone: start over
                    await ws.send(unsubscribe)
                elif kind == "subscribed" and msg["recovered"]:
                    if msg.get("compacted"):
                        print("resumed: a catch-up of the stories that changed follows")
                    else:
                        print(f"resumed: {msg['replayed']} missed events follow")
                elif kind == "catchup" and not need_snapshot:
                    # Apply in place: the state now of what changed, and what went away.
                    for story in msg["stories"]:
                        stories[str(story["id"])] = story
                    for story_id in msg["removed"]:
                        stories.pop(story_id, None)
                    if msg["done"]:
                        cursor = {"epoch": msg["epoch"], "seq": msg["seq"]}
                        print(f"caught up: {len(stories)} stories at seq {msg['seq']}")
                elif kind == "unsubscribed":
                    await ws.send(subscribe())
                elif kind == "resync":  # overflow ended the sub; epoch_changed kept it
                    need_snapshot = True
                    await ws.send(subscribe() if msg["reason"] == "overflow" else unsubscribe)
                elif kind == "snapshot" and need_snapshot:
                    loading.extend(msg["stories"])
                    if msg["done"]:
                        stories = {str(s["id"]): s for s in loading}
                        loading.clear()
                        cursor, need_snapshot = {"epoch": msg["epoch"], "seq": msg["seq"]}, False
                        print(f"snapshot: {len(stories)} stories at seq {msg['seq']}")
                elif kind.startswith("story.") and not need_snapshot:
                    if kind == "story.deleted":
                        stories.pop(msg["story_id"], None)
                    elif kind != "story.invalid":  # invalid: the last good state stays
                        stories[msg["story_id"]] = msg["story"]
                    cursor = {"epoch": msg["epoch"], "seq": msg["seq"]}
                    extra = f"{msg['from']} -> {msg['to']}" if "to" in msg else ""
                    print(msg["seq"], kind, msg["story_id"], extra)
                elif kind == "error":
                    print("error:", msg["code"], msg["message"], file=sys.stderr)
        except (ConnectionClosed, TimeoutError):
            pass
        print(f"disconnected ({ws.close_code or 'silent'}); reconnecting", file=sys.stderr)
        await asyncio.sleep(1)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(follow())
