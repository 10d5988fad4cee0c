from __future__ import annotations

from pathlib import Path

from tests.integration.daemon import Client, Daemon


async def test_status_edit_is_one_transition(daemon: Daemon, repo: Path) -> None:
    client = await Client.connect(daemon.ws_url())
    subscribed, stories = await client.subscribe(snapshot=True)
    assert len(stories) == 50
    path = repo / "ui" / "UI-005-dark-mode.md"
    text = path.read_text()
    path.write_text(text.replace("status: ready", "status: in-progress", 1))
    (event,) = await client.events(1)
    assert event["type"] == "story.transitioned"
    assert event["from"] == "ready" and event["to"] == "in-progress"
    assert event["seq"] == subscribed["seq"] + 1
    assert event["subs"] == ["s1"]
    await client.no_event()
    await client.close()
