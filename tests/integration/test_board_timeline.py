"""The board's story timeline (SPEC §11) in a real headless Chromium, against the real daemon
on a git checkout: a pull by other authors moves a card, and opening the card shows who moved
it, when, and from what to what.

The page is served here under a strict Content-Security-Policy built from the hashes of its
inline blocks (as the daemon will send it): the timeline must work without inline handlers,
``eval`` or inline styles, and without any request beyond its own origin.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gitrepo import GitRepo
from tests.integration.daemon import Daemon
from tests.integration.test_attribution import clone, upstream, write_story
from tests.integration.test_board import CHROMIUM, CHROMIUM_ARGS, _missing_browser, _ms, card

pytestmark = pytest.mark.browser

_BLOCK = re.compile(r"<(script|style)([^>]*)>(.*?)</\1>", re.S)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """test_board's browser, except that a page fulfilled by the test (to add the policy)
    may still reach the daemon on 127.0.0.1 (Chromium's local-network checks would treat
    a fulfilled page as public)."""
    missing = _missing_browser()
    if missing:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"browser tests cannot run in CI: {missing}")
        pytest.skip(missing)
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=_ms(10))
    args = [*CHROMIUM_ARGS, "--disable-features=LocalNetworkAccessChecks"]
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
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


def strict_csp(html: str, port: int) -> str:
    """A policy allowing exactly the page's inline blocks and its own origin."""
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for kind, attrs, body in _BLOCK.findall(html):
        if "application/json" in attrs:
            continue  # data, never executed
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        hashes[kind].append(f"'sha256-{digest}'")
    return (
        "default-src 'none'; "
        f"script-src {' '.join(hashes['script'])}; style-src {' '.join(hashes['style'])}; "
        f"connect-src 'self' ws://127.0.0.1:{port}; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'"
    )


def serve_with_csp(board: Any, daemon: Daemon) -> list[str]:
    """Route the board page through a strict CSP; returns the violations seen."""
    violations: list[str] = []

    def with_policy(route: Any) -> None:
        response = route.fetch()
        body = response.text()
        headers = {**response.headers, "content-security-policy": strict_csp(body, daemon.port)}
        route.fulfill(response=response, headers=headers, body=body)

    board.route(f"{daemon.http}/", with_policy)
    board.add_init_script(
        "window.__csp = [];"
        "document.addEventListener('securitypolicyviolation',"
        " (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
    )
    board.on("console", lambda msg: violations.append(msg.text) if "Refused" in msg.text else None)
    return violations


def test_opening_a_card_shows_who_moved_it(
    page: Any,
    tmp_path: Path,
    daemon_factory: type[Daemon],
) -> None:
    from playwright.sync_api import expect

    up = upstream(tmp_path / "upstream")
    repo: GitRepo = clone(up, tmp_path / "watched")
    daemon = daemon_factory(repo.root).start()
    daemon.wait_healthy()
    violations = serve_with_csp(page, daemon)
    page.goto(f"{daemon.http}/#token=tok-reader")
    expect(page.locator('[data-connection="live"]')).to_be_visible()
    expect(card(page, "INT-1", "draft")).to_be_visible()

    # Two authors move INT-1 in two commits; the watched checkout pulls both at once.
    write_story(up, "INT-1", "ready")
    bo = up.commit("INT-1 is ready", author="Bo Li")
    write_story(up, "INT-1", "in-progress")
    cy = up.commit("Start INT-1", author="Cy Young")
    repo.git("pull", "-q", "--ff-only")
    moved = card(page, "INT-1", "in-progress")
    expect(moved).to_be_visible()

    moved.click()
    dialog = page.locator('#timeline[data-timeline-story="INT-1"]')
    expect(dialog).to_be_visible()
    expect(dialog).to_have_attribute("data-loaded", "true")
    commits = dialog.locator('.tl-entry[data-kind="commit"]')
    expect(commits).to_have_count(3)  # newest first: Cy's, Bo's, then the first status
    first, second = commits.nth(0), commits.nth(1)
    expect(first).to_have_attribute("data-sha", cy)
    expect(first).to_have_attribute("data-from", "ready")
    expect(first).to_have_attribute("data-to", "in-progress")
    expect(first).to_contain_text("Cy Young")
    expect(first).to_contain_text("ready → in-progress")
    expect(second).to_have_attribute("data-sha", bo)
    expect(second).to_contain_text("draft → ready")
    expect(second).to_contain_text("Bo Li")
    expect(commits.nth(2)).to_contain_text("Ada")
    event = dialog.locator('.tl-entry[data-kind="event"]').first
    expect(event).to_have_attribute("data-type", "story.transitioned")
    expect(event).to_have_attribute("data-author", "Cy Young")
    expect(event).to_contain_text("draft → in-progress")
    expect(dialog.locator("time").first).to_have_attribute("datetime", re.compile(r"\d{4}-"))
    page.screenshot(path=str(tmp_path / "board-timeline.png"))

    # Escape closes it; the keyboard opens another card.
    page.keyboard.press("Escape")
    expect(page.locator("#timeline")).to_be_hidden()
    card(page, "UI-1").focus()
    page.keyboard.press("Enter")
    other = page.locator('#timeline[data-timeline-story="UI-1"]')
    expect(other).to_have_attribute("data-loaded", "true")
    expect(other.locator('.tl-entry[data-kind="commit"]')).to_have_count(1)
    expect(other.locator('.tl-entry[data-kind="event"]')).to_have_count(0)
    page.locator("#timeline-close").click()
    expect(page.locator("#timeline")).to_be_hidden()

    page.screenshot(path=str(tmp_path / "board-closed.png"))
    assert page.evaluate("window.__csp") == []
    assert violations == []
