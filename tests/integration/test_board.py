"""The live board (``GET /``) in a real headless Chromium, against the real daemon.

Needs Debian's ``chromium`` (``/usr/bin/chromium``) and the ``playwright`` Python package
(its own browser download is never used). Without them these tests skip — or fail when
``CI=true``, so that CI cannot pass by skipping them. Screenshots land in the test's
``tmp_path`` (``board.png``, ``board-phone.png``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import scaled
from tests.integration.daemon import Daemon
from tests.integration.helpers import edit

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("STORYWATCH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

UI5 = Path("ui") / "UI-005-dark-mode.md"  # status: ready, epic: ui
DELETED = Path("api") / "API-007-rate-limit-headers.md"
NEW_STORY = """---
id: NEW-001
title: Made while the daemon was down
epic: ui
status: review
priority: high
labels: [board, "<b>not bold</b>"]
---
Body.
"""
HOSTILE_TITLE = '<img src=x onerror="window.__pwned = 1">&amp; <script>window.__pwned = 2</script>'


def _ms(seconds: float) -> float:
    return scaled(seconds) * 1000


def _missing_browser() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (pip install playwright)"
    if not Path(CHROMIUM).exists():
        return f"no chromium at {CHROMIUM} (apt-get install chromium)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = _missing_browser()
    if missing:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"browser tests cannot run in CI: {missing}")
        pytest.skip(missing)
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=_ms(10))
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(_ms(10))
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"errors in the page: {errors}"


def record_frames(page: Any) -> list[tuple[str, dict[str, Any]]]:
    """Every WebSocket message the page sends ("out") and receives ("in"), decoded."""
    frames: list[tuple[str, dict[str, Any]]] = []

    def on_socket(ws: Any) -> None:
        ws.on("framesent", lambda payload: frames.append(("out", json.loads(payload))))
        ws.on("framereceived", lambda payload: frames.append(("in", json.loads(payload))))

    page.on("websocket", on_socket)
    return frames


def messages(frames: list[tuple[str, dict[str, Any]]], way: str, kind: str) -> list[dict[str, Any]]:
    return [m for w, m in frames if w == way and m.get("type") == kind]


def card(page: Any, story_id: str, status: str | None = None) -> Any:
    column = f'[data-status="{status}"] ' if status is not None else ""
    return page.locator(f'{column}[data-story-id="{story_id}"]')


def test_board_follows_edits_and_survives_a_restart(
    page: Any, repo: Path, daemon_factory: type[Daemon], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    daemon = daemon_factory(repo, backend="sqlite").start()
    daemon.wait_healthy()
    frames = record_frames(page)
    page.goto(f"{daemon.http}/#token=tok-reader")

    expect(page.locator('[data-connection="live"]')).to_have_count(1)
    expect(card(page, "UI-005", "ready")).to_have_count(1)
    expect(card(page, "UI-005")).to_contain_text("Dark mode for the live board")
    assert "token" not in page.url  # taken out of the address bar once remembered

    # A status edit on disk moves the card to its new column.
    edit(repo / UI5, "status: ready\n", "status: in-progress\n")
    expect(card(page, "UI-005", "in-progress")).to_have_count(1, timeout=_ms(5))
    expect(card(page, "UI-005", "ready")).to_have_count(0)
    expect(page.locator('#activity [data-event-story="UI-005"]').first).to_contain_text(
        "ready → in-progress"
    )

    # A deleted file: its card disappears.
    expect(card(page, "API-007")).to_have_count(1)
    (repo / DELETED).unlink()
    expect(card(page, "API-007")).to_have_count(0, timeout=_ms(5))

    # The daemon goes away: the board says so.
    port = daemon.port
    assert daemon.stop() == 0
    page.wait_for_selector('[data-connection="reconnecting"], [data-connection="offline"]')

    # Changes made meanwhile reach the board once the daemon is back on the same port.
    edit(repo / UI5, "status: in-progress\n", "status: review\n")
    (repo / "ui" / "NEW-001.md").write_text(NEW_STORY)
    again = daemon_factory(repo, backend="sqlite", extra_args=["--port", str(port)]).start()
    assert again.port == port
    expect(page.locator('[data-connection="live"]')).to_have_count(1, timeout=_ms(30))
    expect(card(page, "UI-005", "review")).to_have_count(1)
    expect(card(page, "NEW-001", "review")).to_contain_text("Made while the daemon was down")
    expect(card(page, "NEW-001")).to_contain_text("<b>not bold</b>")  # text, not markup
    # Resumed from its cursor (replayed events show in the activity), not a fresh snapshot.
    expect(page.locator('#activity [data-event-story="UI-005"]').first).to_contain_text(
        "in-progress → review"
    )
    expect(card(page, "API-007")).to_have_count(0)
    first, second = messages(frames, "out", "subscribe")
    assert first["snapshot"] is True and first["filter"] == {} and "since" not in first
    assert second["since"]["seq"] >= 2 and "snapshot" not in second
    assert messages(frames, "in", "subscribed")[-1]["recovered"] is True

    page.screenshot(path=str(tmp_path / "board.png"), full_page=True)


def test_board_escapes_filters_and_fits_a_phone(
    browser: Any, repo: Path, daemon_factory: type[Daemon], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    daemon = daemon_factory(repo).start()
    daemon.wait_healthy()
    context = browser.new_context(
        viewport={"width": 390, "height": 844},
        is_mobile=True,
        has_touch=True,
        device_scale_factor=2,
    )
    page = context.new_page()
    page.set_default_timeout(_ms(10))
    try:
        page.goto(f"{daemon.http}/#token=tok-reader")
        expect(page.locator('[data-connection="live"]')).to_have_count(1)

        # Story text is shown as text: nothing in a title runs or renders as HTML.
        path = repo / UI5
        path.write_text(
            path.read_text().replace(
                "title: Dark mode for the live board", f"title: '{HOSTILE_TITLE}'", 1
            )
        )
        expect(card(page, "UI-005").locator(".card-title")).to_have_text(HOSTILE_TITLE)
        assert page.locator("#board img, #board script, #activity img").count() == 0
        assert page.evaluate("window.__pwned") is None

        # The epic filter hides the other epics' cards (their hooks stay in the DOM).
        page.select_option("#epic-filter", "ui")
        expect(card(page, "UI-005")).to_be_visible()
        expect(card(page, "API-001")).to_be_hidden()
        assert "epic=ui" in page.url
        page.select_option("#epic-filter", "")
        expect(card(page, "API-001")).to_be_visible()

        # On a phone the columns scroll sideways; the page itself does not.
        widths = page.evaluate(
            "() => [document.documentElement.scrollWidth, innerWidth,"
            " document.getElementById('board').scrollWidth]"
        )
        assert widths[0] <= widths[1] < widths[2]
        page.screenshot(path=str(tmp_path / "board-phone.png"), full_page=False)
    finally:
        context.close()


def test_silent_server_is_detected_by_heartbeat(
    page: Any, repo: Path, daemon_factory: type[Daemon]
) -> None:
    """No message for 2 × heartbeat_s: the board drops the link and reconnects."""
    from playwright.sync_api import expect

    daemon = daemon_factory(repo, config={"server": {"heartbeat_s": 0.5}}).start()
    daemon.wait_healthy()
    page.goto(f"{daemon.http}/#token=tok-reader")
    expect(page.locator('[data-connection="live"]')).to_have_count(1)

    daemon.signal(signal.SIGSTOP)  # the socket stays open, but nothing arrives any more
    try:
        expect(page.locator('[data-connection="reconnecting"]')).to_have_count(1, timeout=_ms(5))
    finally:
        daemon.signal(signal.SIGCONT)
    expect(page.locator('[data-connection="live"]')).to_have_count(1, timeout=_ms(20))
    edit(repo / UI5, "status: ready\n", "status: done\n")
    expect(card(page, "UI-005", "done")).to_have_count(1, timeout=_ms(5))


STATUS_EDITS = [  # (file, old status, new status)
    (Path("ui") / "UI-005-dark-mode.md", "ready", "done"),
    (Path("api") / "v1" / "API-001-list-stories-endpoint.md", "done", "blocked"),
    (Path("data") / "storage" / "DATA-001-sqlite-event-log-schema.md", "done", "review"),
    (Path("infra") / "ci" / "INF-002-github-actions-pipeline.md", "done", "draft"),
]


@pytest.mark.parametrize("gap", ["new_epoch", "replay_buffer_too_short", "overflow"])
def test_board_recovers_whatever_breaks_continuity(
    page: Any, repo: Path, daemon_factory: type[Daemon], gap: str
) -> None:
    """Whatever breaks continuity, the board ends up showing the files as they are: by a
    snapshot when history is gone, by a catch-up (SPEC §9) when it was only away longer
    than the replay buffer."""
    from playwright.sync_api import expect

    backend = "memory" if gap == "new_epoch" else "sqlite"
    config: dict[str, Any] = {}
    if gap == "replay_buffer_too_short":
        config["backend"] = {"buffer_size": 1}
    if gap == "overflow":
        config["limits"] = {"rate_per_s": 1, "burst": 1, "max_pending": 2}
    daemon = daemon_factory(repo, backend=backend, config=config).start()
    daemon.wait_healthy()
    frames = record_frames(page)
    page.goto(f"{daemon.http}/#token=tok-reader")
    expect(page.locator('[data-connection="live"]')).to_have_count(1)
    expect(card(page, "UI-005", "ready")).to_have_count(1)

    if gap == "overflow":
        for path, old, new in STATUS_EDITS:  # more pending events than the board may lag
            edit(repo / path, f"status: {old}\n", f"status: {new}\n")
        (repo / DELETED).unlink()
    else:
        port = daemon.port
        daemon.stop()
        page.wait_for_selector('[data-connection="reconnecting"]')
        for path, old, new in STATUS_EDITS:
            edit(repo / path, f"status: {old}\n", f"status: {new}\n")
        (repo / DELETED).unlink()
        daemon_factory(
            repo, backend=backend, config=config, extra_args=["--port", str(port)]
        ).start()

    for path, _, new in STATUS_EDITS:
        story_id = path.name.split("-")[0] + "-" + path.name.split("-")[1]
        expect(card(page, story_id, new)).to_have_count(1, timeout=_ms(30))
    expect(card(page, "API-007")).to_have_count(0)
    expect(page.locator('[data-connection="live"]')).to_have_count(1)
    # Still following: a later change arrives as usual.
    edit(repo / STATUS_EDITS[0][0], "status: done\n", "status: review\n")
    expect(card(page, "UI-005", "review")).to_have_count(1, timeout=_ms(5))

    # The gap was noticed the way the protocol announces it, and bridged.
    snapshots = sum(1 for m in messages(frames, "in", "snapshot") if m["done"])
    if gap == "replay_buffer_too_short":  # caught up in place: no reload
        resumed = messages(frames, "in", "subscribed")[-1]
        assert resumed["recovered"] is True and resumed["compacted"] is True
        chunks = messages(frames, "in", "catchup")
        assert chunks[-1]["done"] and "API-007" in [i for c in chunks for i in c["removed"]]
        assert snapshots == 1
        return
    if gap == "new_epoch":
        first, second = messages(frames, "in", "welcome")
        assert first["epoch"] != second["epoch"]
    else:
        assert messages(frames, "in", "resync")[0]["reason"] == "overflow"
    assert messages(frames, "out", "subscribe")[-1]["snapshot"] is True
    assert snapshots == 2


def test_board_config_block_orders_the_columns(
    browser: Any, repo: Path, daemon_factory: type[Daemon]
) -> None:
    """Statuses named in the page's board-config block come first, in that order; the
    others follow the built-in workflow. (What a server fills in from `board.statuses`.)"""
    from playwright.sync_api import expect

    daemon = daemon_factory(repo).start()
    daemon.wait_healthy()
    # A page answered by page.route() has no network address, so Chromium's Local Network
    # Access checks would keep it from reaching 127.0.0.1: this browser runs without them.
    relaxed = browser.browser_type.launch(
        executable_path=CHROMIUM,
        headless=True,
        args=[*CHROMIUM_ARGS, "--disable-features=LocalNetworkAccessChecks"],
    )
    try:
        page = relaxed.new_page()
        placeholder = '<script type="application/json" id="board-config">{"statuses": []}</script>'

        def with_order(route: Any) -> None:
            html = route.fetch().text()
            assert placeholder in html
            configured = '{"statuses": ["review", "in-progress", "nope"]}'
            route.fulfill(
                body=html.replace(placeholder, placeholder.replace('{"statuses": []}', configured)),
                content_type="text/html",
            )

        page.route(f"{daemon.http}/", with_order)
        page.goto(f"{daemon.http}/#token=tok-reader")
        expect(page.locator('[data-connection="live"]')).to_have_count(1)
        order = page.eval_on_selector_all("[data-status]", "cs => cs.map(c => c.dataset.status)")
    finally:
        relaxed.close()
    assert order == ["review", "in-progress", "draft", "ready", "done", "blocked"]
