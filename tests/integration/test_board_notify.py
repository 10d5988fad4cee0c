"""The board's "Notify me" panel and its column order, in a real headless Chromium against
the real daemon (issue 16; the helpers and the skip rules are those of test_board.py).

The page's ``window.Notification`` is wrapped by an init script that records each
notification *after* the real constructor accepted it, and each permission request: the
page still goes through the real Notification API, with the permission granted to the
browser context.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import test_board as board
from tests.integration.daemon import Daemon
from tests.integration.helpers import edit

pytestmark = pytest.mark.browser

browser = board.browser  # the same module-scoped Chromium fixture as test_board.py

UI5 = Path("ui") / "UI-005-dark-mode.md"  # ready, ui
UI3 = Path("ui") / "UI-003-connection-status-indicator.md"  # in-progress, ui
UI6 = Path("ui") / "board" / "UI-006-filter-bar.md"  # in-progress, ui
UI4 = Path("ui") / "board" / "UI-004-keyboard-navigation.md"  # draft, ui
INF5 = Path("infra") / "INF-005-redis-event-log-backend.md"  # in-progress, infra
SOON = board._ms(5)  # how long an edit on disk may take to reach the page

RECORDER = """
(() => {
  window.__notifications = [];
  window.__permissionRequests = 0;
  const Real = window.Notification;
  if (!Real) return;
  class Recorded extends Real {
    constructor(title, options) {
      super(title, options);  // the real API: throws if the page may not notify
      const { body, tag } = options || {};
      window.__notifications.push({ title, body, tag });
    }
    static requestPermission(...args) {
      window.__permissionRequests += 1;
      return Real.requestPermission(...args);
    }
  }
  Object.defineProperty(Recorded, "permission", { get: () => Real.permission });
  window.Notification = Recorded;
})();
"""


@pytest.fixture
def notify_page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.add_init_script(RECORDER)
    page = context.new_page()
    page.set_default_timeout(board._ms(10))
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"errors in the page: {errors}"


def notifications(page: Any) -> list[dict[str, Any]]:
    shown: list[dict[str, Any]] = page.evaluate("window.__notifications")
    return shown


def entry(page: Any, story_id: str) -> Any:
    """The newest "Recent activity" entry of a story."""
    return page.locator(f'#activity [data-event-story="{story_id}"]').first


def open_board(page: Any, daemon: Daemon) -> None:
    from playwright.sync_api import expect

    page.goto(f"{daemon.http}/#token=tok-reader")
    expect(page.locator('[data-connection="live"]')).to_have_count(1)
    expect(board.card(page, "UI-005")).to_have_count(1)


def test_notify_me_shows_matching_live_changes_only(
    notify_page: Any, repo: Path, daemon_factory: type[Daemon]
) -> None:
    from playwright.sync_api import expect

    page = notify_page
    daemon = daemon_factory(repo, backend="sqlite").start()
    daemon.wait_healthy()
    page.context.grant_permissions(["notifications"], origin=daemon.http)
    open_board(page, daemon)

    # Pick "moved into review" AND "epic ui" in the panel; the options come from the board.
    page.click("[data-notify-toggle]")
    panel = page.locator("[data-notify-panel]")
    expect(panel).to_be_visible()
    expect(panel.locator("[data-notify-permission]")).to_have_attribute(
        "data-notify-permission", "granted"
    )
    for group in ("statuses", "epics", "owners", "events"):
        options = panel.locator(f'[data-notify-group="{group}"] [data-notify-option]')
        expect(options.first).to_be_visible()
    panel.locator('[data-notify-option="owners"][value="frontend-team"]').wait_for()
    panel.locator('[data-notify-option="statuses"][value="review"]').check()
    panel.locator('[data-notify-option="epics"][value="ui"]').check()
    expect(page.locator("[data-notify-toggle]")).to_have_attribute("data-notify-active", "true")
    page.click("[data-notify-toggle]")
    expect(panel).to_be_hidden()

    # A ui story moved into review: a desktop notification, and a highlighted entry.
    edit(repo / UI5, "status: ready\n", "status: review\n")
    expect(entry(page, "UI-005")).to_have_attribute("data-notified", "desktop", timeout=SOON)
    expect(entry(page, "UI-005")).to_contain_text("ready → review")
    shown = notifications(page)
    assert len(shown) == 1 and shown[0]["title"].startswith("UI-005")
    assert shown[0]["body"].startswith("Dark mode for the live board")

    # Not matching: another epic moved into review; a ui story moved elsewhere. Events
    # are applied in order, so once the last entry is there, nothing else is coming.
    edit(repo / INF5, "status: in-progress\n", "status: review\n")
    expect(entry(page, "INF-005")).to_contain_text("in-progress → review", timeout=SOON)
    edit(repo / UI3, "status: in-progress\n", "status: done\n")
    expect(entry(page, "UI-003")).to_contain_text("in-progress → done", timeout=SOON)
    expect(page.locator("#activity [data-notified]")).to_have_count(1)
    assert len(notifications(page)) == 1

    # The choices survive a reload; the snapshot (UI-005 now in review) does not notify.
    page.reload()
    expect(page.locator('[data-connection="live"]')).to_have_count(1)
    expect(board.card(page, "UI-005", "review")).to_have_count(1)
    page.click("[data-notify-toggle]")
    expect(panel.locator('[data-notify-option="statuses"][value="review"]')).to_be_checked()
    expect(panel.locator('[data-notify-option="epics"][value="ui"]')).to_be_checked()
    expect(panel.locator('[data-notify-option="statuses"][value="done"]')).not_to_be_checked()
    page.keyboard.press("Escape")
    expect(panel).to_be_hidden()

    # A change made while the daemon was down reaches the board as a replay: shown, not news.
    port = daemon.port
    assert daemon.stop() == 0
    page.wait_for_selector('[data-connection="reconnecting"]')
    edit(repo / UI6, "status: in-progress\n", "status: review\n")
    daemon_factory(repo, backend="sqlite", extra_args=["--port", str(port)]).start()
    expect(page.locator('[data-connection="live"]')).to_have_count(1, timeout=board._ms(30))
    expect(entry(page, "UI-006")).to_contain_text("in-progress → review")
    expect(entry(page, "UI-006")).to_contain_text("missed")

    # Live again: a matching change notifies.
    edit(repo / UI4, "status: draft\n", "status: review\n")
    expect(entry(page, "UI-004")).to_have_attribute("data-notified", "desktop", timeout=SOON)
    expect(page.locator("#activity [data-notified]")).to_have_count(1)
    assert [n["title"].split(" ")[0] for n in notifications(page)] == ["UI-004"]
    # The page never asked for the permission by itself (it was granted beforehand).
    assert page.evaluate("window.__permissionRequests") == 0


def test_columns_follow_the_built_in_workflow(
    notify_page: Any, repo: Path, daemon_factory: type[Daemon]
) -> None:
    """With `board.statuses` empty: workflow order, not the order first seen; a status the
    table knows under another spelling joins its stage; unknown ones go last."""
    from playwright.sync_api import expect

    page = notify_page
    daemon = daemon_factory(repo).start()
    daemon.wait_healthy()
    open_board(page, daemon)

    def order() -> list[str]:
        statuses: list[str] = page.eval_on_selector_all(
            "[data-status]", "cs => cs.map(c => c.dataset.status)"
        )
        return statuses

    assert order() == ["draft", "ready", "in-progress", "review", "done", "blocked"]
    edit(repo / UI3, "status: in-progress\n", "status: Parked\n")  # unknown: after blocked
    expect(board.card(page, "UI-003", "Parked")).to_have_count(1, timeout=SOON)
    edit(repo / UI5, "status: ready\n", "status: QA\n")  # review stage, after review itself
    expect(board.card(page, "UI-005", "QA")).to_have_count(1, timeout=SOON)
    edit(repo / UI6, "status: in-progress\n", "status: Icebox\n")  # with draft, after it
    expect(board.card(page, "UI-006", "Icebox")).to_have_count(1, timeout=SOON)
    assert order() == [
        "draft",
        "Icebox",
        "ready",
        "in-progress",
        "review",
        "QA",
        "done",
        "blocked",
        "Parked",
    ]


def test_permission_is_asked_on_a_click_only(
    notify_page: Any, repo: Path, daemon_factory: type[Daemon]
) -> None:
    """Without the permission: nothing asked on load, asked on the click; when the browser
    says no (headless Chromium denies), matches are still highlighted on the board."""
    from playwright.sync_api import expect

    page = notify_page
    daemon = daemon_factory(repo).start()
    daemon.wait_healthy()
    open_board(page, daemon)
    page.click("[data-notify-toggle]")
    permission = page.locator("[data-notify-permission]")
    expect(permission).to_have_attribute("data-notify-permission", "default")
    assert page.evaluate("window.__permissionRequests") == 0

    page.click("[data-notify-allow]")
    expect(permission).to_have_attribute("data-notify-permission", "denied")
    expect(page.locator("[data-notify-allow]")).to_be_hidden()
    assert page.evaluate("window.__permissionRequests") == 1

    page.locator('[data-notify-option="events"][value="story.transitioned"]').check()
    edit(repo / UI5, "status: ready\n", "status: review\n")
    expect(entry(page, "UI-005")).to_have_attribute("data-notified", "board", timeout=SOON)
    assert notifications(page) == []
