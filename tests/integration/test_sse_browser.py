"""A real ``EventSource`` in headless Chromium on ``GET /api/stream`` (SPEC §12).

The page holds the stories the way a user's script would (snapshot, catch-up, events) and
never reconnects by hand: the browser resumes with ``Last-Event-ID`` by itself. The daemon
(sqlite, a replay buffer of 3) is stopped and killed, files change while it is down, and
the page must end up holding exactly what ``GET /api/stories`` says — resumed by a
catch-up or a replay, never by a new snapshot, with nothing lost.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from tests.integration.daemon import Daemon
from tests.integration.helpers import edit, http_get, set_status, story_path
from tests.integration.test_board import _ms, browser, page  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser

NEW = "---\nid: UI-100\ntitle: Made while the daemon was down\nepic: ui\nstatus: review\n---\n"

# The page's client: what any script on top of EventSource does with the stream.
CLIENT = """
(url) => {
  window.held = {}; window.seen = []; window.opens = 0; window.errors = 0;
  const es = new EventSource(url);
  es.onopen = () => { window.opens += 1; };
  es.onerror = () => { window.errors += 1; };
  const note = (type, data, id) =>
    window.seen.push({type, id, seq: data.seq, story: data.story_id, replay: !!data.replay});
  es.addEventListener("snapshot", (e) => {
    const data = JSON.parse(e.data);
    window.held = {};
    for (const s of data.stories) window.held[s.id] = s;
    note("snapshot", data, e.lastEventId);
  });
  es.addEventListener("catchup", (e) => {
    const data = JSON.parse(e.data);
    for (const s of data.stories) window.held[s.id] = s;
    for (const id of data.removed) delete window.held[id];
    note("catchup", data, e.lastEventId);
  });
  es.addEventListener("resync", (e) => note("resync", JSON.parse(e.data), e.lastEventId));
  for (const type of ["story.created", "story.updated", "story.transitioned", "story.moved",
                      "story.deleted", "story.invalid"]) {
    es.addEventListener(type, (e) => {
      const data = JSON.parse(e.data);
      if (type === "story.deleted") delete window.held[data.story_id];
      else if (type !== "story.invalid") window.held[data.story_id] = data.story;
      note(type, data, e.lastEventId);
    });
  }
  window.es = es;
}
"""


def held(page: Any) -> dict[str, Any]:  # noqa: F811 (the fixture's name)
    result: dict[str, Any] = page.evaluate("window.held")
    return result


def seen(page: Any) -> list[dict[str, Any]]:  # noqa: F811
    result: list[dict[str, Any]] = page.evaluate("window.seen")
    return result


def truth(daemon: Daemon) -> dict[str, Any]:
    status, body = http_get(daemon, "/api/stories?epics=ui")
    assert status == 200
    return {s["id"]: s for s in body["stories"]}


def wait_for_seq(page: Any, seq: int) -> None:  # noqa: F811
    page.wait_for_function(
        "(seq) => window.seen.length && window.seen[window.seen.length - 1].seq >= seq",
        arg=seq,
        timeout=_ms(30),
    )


def test_event_source_resumes_by_itself_across_restarts_without_loss(
    page: Any,  # noqa: F811
    repo: Path,
    daemon_factory: type[Daemon],
) -> None:
    config = {"backend": {"buffer_size": 3}}
    daemon = daemon_factory(repo, backend="sqlite", config=config).start()
    daemon.wait_healthy()
    port = daemon.port
    # A same-origin page without a CSP of its own: the stream is the daemon's own origin.
    page.goto(f"{daemon.http}/healthz")
    page.evaluate(CLIENT, "/api/stream?epics=ui&token=tok-reader")
    page.wait_for_function("window.seen.length >= 1")
    assert seen(page)[0]["type"] == "snapshot" and held(page) == truth(daemon)

    ui5 = story_path(repo, "UI-005")
    set_status(ui5, "review")
    page.wait_for_function("window.seen.some((s) => s.story === 'UI-005')")
    assert held(page)["UI-005"]["status"] == "review"

    # 1. Stopped cleanly; more changes while down than the buffer holds: a catch-up.
    assert daemon.stop() == 0
    set_status(ui5, "done")
    edit(story_path(repo, "UI-003"), "epic: ui", "epic: integration")  # leaves the filter
    (repo / "ui" / "UI-100.md").write_text(NEW)
    story_path(repo, "UI-002").unlink()
    again = daemon_factory(
        repo, backend="sqlite", config=config, extra_args=["--port", str(port)]
    ).start()
    latest = again.wait_healthy()["seq"]
    wait_for_seq(page, latest)
    kinds = [s["type"] for s in seen(page)]
    assert kinds.count("snapshot") == 1 and "resync" not in kinds and "catchup" in kinds
    catchup = [s for s in seen(page) if s["type"] == "catchup"][-1]
    assert catchup["id"] == f"{again.wait_healthy()['epoch']}:{latest}"
    assert held(page) == truth(again)

    # 2. Killed; a change while down (within the buffer): replayed events.
    again.kill()
    set_status(repo / "ui" / "UI-100.md", "in-progress")
    third = daemon_factory(
        repo, backend="sqlite", config=config, extra_args=["--port", str(port)]
    ).start()
    latest = third.wait_healthy()["seq"]
    wait_for_seq(page, latest)
    last = seen(page)[-1]
    assert (last["type"], last["replay"], last["seq"]) == ("story.transitioned", True, latest)
    assert held(page) == truth(third)
    assert [s["type"] for s in seen(page)].count("snapshot") == 1  # never reloaded

    # ...and live again.
    set_status(repo / "ui" / "UI-100.md", "review")
    wait_for_seq(page, latest + 1)
    assert held(page) == truth(third)
    assert page.evaluate("window.opens") == 3 and page.evaluate("window.es.readyState") == 1
    third.signal(signal.SIGTERM)
