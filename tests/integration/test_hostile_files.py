"""Hostile story files on a real daemon (issue 8 item 2, SPEC §2/§3).

Every case has a bounded, defined outcome and the daemon keeps running:

- content that cannot be a story (alias bomb, deep nesting, too many values, Python tags,
  control characters, not UTF-8, binary, larger than ``watch.max_file_bytes``) in a file
  that *was* a story → ``story.invalid`` with the reason, the last good state kept; the
  same content in a new file → no event;
- a path that no longer holds a regular file storywatch may read — a link leading out of
  the repo, a link loop, a FIFO, a folder — is not a story file: a new one is ignored, a
  former story replaced by one is deleted (after ``delete_grace_ms``); what lies outside
  the repo never appears anywhere;
- a file that cannot be read (permission denied) → ``story.invalid`` ``unreadable``. The
  tests run as root, who reads anything, so the daemon runs under
  ``setpriv --bounding-set -dac_override,-dac_read_search`` (root without the capability
  to bypass file modes) and the file gets mode 000; skipped where setpriv is missing;
- a file deleted between listing and reading is simply not there (no event, no error);
- the watched root deleted: every story is reported deleted and the daemon keeps serving;
  recreated: see ``test_recreated_root_is_watched_again`` (a known bug);
- 5 000 stories moved in at once: 5 000 ``story.created``, RSS growth measured and bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from storywatch.paths import PathRules
from storywatch.repo import Repo
from storywatch.story import parse_story
from tests.conftest import scaled
from tests.integration.daemon import Client, Daemon

FAST = {"watch": {"settle_ms": 20, "delete_grace_ms": 100}}
MiB = 1024 * 1024
SECRET = "OUTSIDE-SECRET-7f3a"  # text that only exists outside the repo

# A classic "billion laughs": 10^6 values once expanded, a few hundred bytes on disk.
ALIAS_BOMB = (
    "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
    "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
    "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
    "f: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
)
BLOCK_NESTING = "".join("  " * n + f"k{n}:\n" for n in range(120)) + "  " * 120 + "v: 1\n"


def front(story_id: str, extra: str = "") -> bytes:
    return f"---\nid: {story_id}\ntitle: hostile\n{extra}---\nbody\n".encode()


# name → (bytes of the file for a given id, the reason a former story gets)
HOSTILE: dict[str, tuple[Any, str]] = {
    "alias bomb": (lambda i: front(i, ALIAS_BOMB), "yaml"),
    "flow nesting 500 deep": (lambda i: front(i, "x: " + "[" * 500 + "]" * 500 + "\n"), "yaml"),
    "block nesting 120 deep": (lambda i: front(i, BLOCK_NESTING), "yaml"),
    "110 000 values": (lambda i: front(i, "x: [" + "1," * 110_000 + "1]\n"), "yaml"),
    "python tag": (
        lambda i: front(i, "x: !!python/object/apply:os.system ['touch pwned']\n"),
        "yaml",
    ),
    "control characters": (lambda i: front(i, 'x: "\x00\x07"\n'), "yaml"),
    "not utf-8": (lambda i: front(i).replace(b"hostile", b"caf\xe9 cr\xe8me"), "unreadable"),
    "binary": (
        lambda i: b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(2048) + b"\xff",
        "unreadable",
    ),
    "just over 1 MiB": (lambda i: front(i, "pad: " + "x" * MiB + "\n"), "too_large"),
}


Connect = Callable[..., Awaitable[Client]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """``await connect(url)``: a Client closed at teardown, even when the test failed."""
    clients: list[Client] = []

    async def _connect(url: str) -> Client:
        client = await Client.connect(url)
        clients.append(client)
        return client

    yield _connect
    for client in clients:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 2)


def story_files(repo: Path) -> dict[str, Path]:
    """id → file of every story in the repo, in a stable order."""
    out = {}
    for path in sorted(repo.rglob("*.md")):
        if path.is_symlink() or not path.is_file():
            continue
        parsed = parse_story(path.relative_to(repo).as_posix(), path.read_bytes())
        if hasattr(parsed, "id"):
            out[parsed.id] = path
    return out


def healthz(daemon: Daemon) -> dict[str, Any]:
    """The /healthz body, whether it answers 200 or 503."""
    try:
        with urllib.request.urlopen(daemon.http + "/healthz", timeout=scaled(5)) as response:
            body: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            body = json.loads(exc.read())
    return body


def api(daemon: Daemon, path: str, token: str = "tok-reader") -> bytes:
    request = urllib.request.Request(
        daemon.http + path, headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=scaled(5)) as response:
        body: bytes = response.read()
        return body


def proc_field(pid: int, name: str, field: str) -> int:
    with open(f"/proc/{pid}/{name}") as handle:
        for line in handle:
            if line.startswith(field):
                return int(line.split()[1])
    raise KeyError(field)


def rss_kb(daemon: Daemon) -> int:
    assert daemon.proc is not None
    return proc_field(daemon.proc.pid, "status", "VmRSS:")


def bytes_read(daemon: Daemon) -> int:
    """Bytes the daemon has read through read(2)-like calls (files and sockets)."""
    assert daemon.proc is not None
    return proc_field(daemon.proc.pid, "io", "rchar:")


def assert_alive(daemon: Daemon) -> None:
    assert daemon.proc is not None and daemon.proc.poll() is None, "the daemon exited"
    assert healthz(daemon)["status"] == "ok"
    errors = [line for line in daemon.stderr_lines if " ERROR " in line or "Traceback" in line]
    assert errors == []


async def events_before_marker(client: Client, repo: Path, name: str) -> list[dict[str, Any]]:
    """Write a marker story (its id sorts after every other) and return the events that
    arrived before its ``story.created``: with the watcher's batches in order, anything a
    file written earlier caused has arrived by then."""
    marker = f"ZZZ-{name}"
    (repo / f"zzz-{name}.md").write_bytes(front(marker))
    _, before = await client.recv_until(
        lambda m: m.get("type") == "story.created" and m.get("story_id") == marker
    )
    return [m for m in before if str(m.get("type", "")).startswith("story.")]


async def next_event_of(client: Client, story_id: str, timeout: float = 10) -> dict[str, Any]:
    event, _ = await client.recv_until(
        lambda m: str(m.get("type", "")).startswith("story.") and m.get("story_id") == story_id,
        timeout,
    )
    return event


# -- content that is not a story ---------------------------------------------------------------


async def test_hostile_content_former_story_invalid_new_file_ignored(
    repo: Path, daemon_factory: type[Daemon], connect: Connect
) -> None:
    daemon = daemon_factory(repo, config=FAST).start()
    daemon.wait_healthy()
    client = await connect(daemon.ws_url())
    _, snapshot = await client.subscribe("all", {}, snapshot=True)
    last_good = {s["id"]: s for s in snapshot}
    files = iter(story_files(repo).items())
    start_rss = rss_kb(daemon)

    for name, (content, reason) in HOSTILE.items():
        story_id, path = next(files)
        path.write_bytes(content(story_id))
        event = await next_event_of(client, story_id)
        assert event["type"] == "story.invalid", (name, event)
        assert event["error"]["reason"] == reason, (name, event["error"])
        assert event["story"] == last_good[story_id], name  # the last good state is kept
        assert len(json.dumps(event)) < 20_000, name  # nothing expanded into the event

    # The same content in files that never were stories: nothing at all.
    for n, (content, _) in enumerate(HOSTILE.values()):
        (repo / "hostile").mkdir(exist_ok=True)
        (repo / "hostile" / f"new-{n}.md").write_bytes(content(f"NEW-{n}"))
    assert await events_before_marker(client, repo, "content") == []
    assert not (repo / "pwned").exists() and not Path("pwned").exists()

    # Memory stays bounded: nothing above was expanded or kept.
    assert rss_kb(daemon) - start_rss < 64 * 1024, (start_rss, rss_kb(daemon))
    stories = json.loads(api(daemon, "/api/stories"))["stories"]
    assert len(stories) == 51  # 50 fixtures (last good states kept) + the marker
    await client.close()
    assert_alive(daemon)


async def test_50_mb_file_is_too_large_without_being_read(
    repo: Path, daemon_factory: type[Daemon], connect: Connect
) -> None:
    daemon = daemon_factory(repo, config=FAST).start()
    daemon.wait_healthy()
    client = await connect(daemon.ws_url())
    await client.subscribe("all", {})
    story_id, path = next(iter(story_files(repo).items()))
    read_before, rss_before = bytes_read(daemon), rss_kb(daemon)

    with open(path, "r+b") as handle:  # a real 50 MB file (sparse on disk)
        handle.write(front(story_id))
        handle.truncate(50 * MiB)
    event = await next_event_of(client, story_id)
    assert event["type"] == "story.invalid"
    assert event["error"]["reason"] == "too_large"
    assert str(50 * MiB) in event["error"]["message"]

    big_new = repo / "big-new.md"
    with open(big_new, "wb") as handle:
        handle.write(front("BIG-NEW"))
        handle.truncate(50 * MiB)
    assert await events_before_marker(client, repo, "big") == []

    read = bytes_read(daemon) - read_before
    print(f"\n50 MB files: daemon read {read} bytes, RSS {rss_before} → {rss_kb(daemon)} kB")
    assert read < 2 * MiB, f"the daemon read {read} bytes of two 50 MB files"
    assert rss_kb(daemon) - rss_before < 16 * 1024
    await client.close()
    assert_alive(daemon)


async def test_a_hostile_1_mib_file_does_not_stall_other_clients(
    repo: Path, daemon_factory: type[Daemon], connect: Connect
) -> None:
    daemon = daemon_factory(repo, config=FAST).start()
    daemon.wait_healthy()
    client = await connect(daemon.ws_url())
    story_id, path = next(iter(story_files(repo).items()))
    path.write_bytes(front(story_id, "x: [" + "1," * ((MiB - 200) // 2) + "1]\n"))
    worst = 0.0
    deadline = time.monotonic() + 2.0
    nonce = 0
    while time.monotonic() < deadline:
        nonce += 1
        sent = time.monotonic()
        await client.send({"type": "ping", "nonce": nonce})
        await client.recv_until(lambda m, n=nonce: m.get("type") == "pong" and m["nonce"] == n)
        worst = max(worst, time.monotonic() - sent)
        await asyncio.sleep(0.05)
    print(f"\nworst pong latency while a hostile 1 MiB file is parsed: {worst:.2f} s")
    assert worst < scaled(0.5)


# -- links, FIFOs, folders: not regular files ---------------------------------------------------


async def test_links_fifos_and_folders_are_not_story_files(
    repo: Path, tmp_path: Path, daemon_factory: type[Daemon], connect: Connect
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text(f"---\nid: {SECRET}\ntitle: {SECRET}\n---\n{SECRET}\n")
    (outside / "stories").mkdir()
    (outside / "stories" / "s.md").write_text(f"---\nid: {SECRET}-2\n---\n{SECRET}\n")
    # Present before the daemon starts: the initial scan must skip them too.
    (repo / "early-link.md").symlink_to(outside / "secret.md")
    (repo / "early-dir").symlink_to(outside / "stories")
    (repo / "early-loop.md").symlink_to(repo / "early-loop.md")

    daemon = daemon_factory(repo, config=FAST).start()
    daemon.wait_healthy()
    client = await connect(daemon.ws_url("tok-admin"))
    _, snapshot = await client.subscribe("all", {}, snapshot=True)
    assert len(snapshot) == 50
    files = iter(story_files(repo).items())

    # New ones: nothing.
    (repo / "link-out.md").symlink_to(outside / "secret.md")
    (repo / "linked-folder").symlink_to(outside / "stories")
    (repo / "loop-a.md").symlink_to(repo / "loop-b.md")
    (repo / "loop-b.md").symlink_to(repo / "loop-a.md")
    (repo / "dangling.md").symlink_to(repo / "nowhere.md")
    (repo / "relative-out.md").symlink_to(Path("..") / "outside" / "secret.md")
    os.mkfifo(repo / "fifo.md")  # opening it would block the reader forever
    (repo / "folder.md").mkdir()
    assert await events_before_marker(client, repo, "links") == []
    (outside / "stories" / "s.md").write_text(f"---\nid: {SECRET}-2\ntitle: changed\n---\n")
    (outside / "secret.md").write_text(f"---\nid: {SECRET}\ntitle: changed\n---\n")
    assert await events_before_marker(client, repo, "outside-changed") == []

    # Former stories replaced by them: gone, so deleted after the grace period.
    replaced = {}
    for kind in ("link out", "link loop", "fifo", "folder"):
        story_id, path = next(files)
        path.unlink()
        if kind == "link out":
            path.symlink_to(outside / "secret.md")
        elif kind == "link loop":
            path.symlink_to(path)
        elif kind == "fifo":
            os.mkfifo(path)
        else:
            path.mkdir()
        replaced[story_id] = kind
    for _ in replaced:
        event, _ = await client.recv_until(
            lambda m: str(m.get("type", "")).startswith("story.") and m.get("story_id") in replaced
        )
        assert event["type"] == "story.deleted", (replaced[event["story_id"]], event)

    # A link to a file inside the repo is followed: here it repeats an id (a duplicate).
    target_id, target = next(files)
    (repo / "alias.md").symlink_to(target)
    event = await next_event_of(client, target_id)
    assert event["type"] == "story.invalid" and event["error"]["reason"] == "duplicate_id"
    assert event["path"] == "alias.md"

    # What is outside never shows: not in the API, not in a snapshot, not in /api/events.
    everything = [
        api(daemon, "/api/stories"),
        api(
            daemon,
            "/api/events?wait=0&since=0&epoch=" + json.loads(api(daemon, "/api/stories"))["epoch"],
        ),
    ]
    _, snapshot = await client.subscribe("again", {}, snapshot=True)
    everything.append(json.dumps(snapshot).encode())
    for blob in everything:
        assert SECRET.encode() not in blob
    with pytest.raises(urllib.error.HTTPError) as missing:
        api(daemon, "/api/stories/" + SECRET)
    missing.value.close()
    assert missing.value.code == 404
    await client.close()
    assert_alive(daemon)


def _setpriv_works() -> bool:
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(
        ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "true"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _setpriv_works(), reason="needs root and setpriv to drop DAC override")
async def test_permission_denied_is_unreadable(
    repo: Path,
    tmp_path: Path,
    daemon_factory: type[Daemon],
    monkeypatch: pytest.MonkeyPatch,
    connect: Connect,
) -> None:
    wrapper = tmp_path / "python-without-dac-override"
    wrapper.write_text(
        "#!/bin/sh\nexec setpriv --bounding-set=-dac_override,-dac_read_search "
        f'"{sys.executable}" "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(wrapper))
    daemon = daemon_factory(repo, config=FAST).start()
    monkeypatch.undo()
    daemon.wait_healthy()
    client = await connect(daemon.ws_url())
    await client.subscribe("all", {})
    story_id, path = next(iter(story_files(repo).items()))

    path.chmod(0o000)
    path.touch()  # chmod alone is an attribute change; make the watcher look
    event = await next_event_of(client, story_id)
    assert event["type"] == "story.invalid"
    assert event["error"]["reason"] == "unreadable"
    assert "ermission" in event["error"]["message"]

    locked = repo / "locked-new.md"
    locked.write_bytes(front("LOCKED-NEW"))
    locked.chmod(0o000)
    assert await events_before_marker(client, repo, "locked") == []

    path.chmod(0o644)
    path.write_text(path.read_text().replace("title:", "title: readable again\nold_title:", 1))
    event = await next_event_of(client, story_id)
    assert event["type"] == "story.updated"
    await client.close()
    assert_alive(daemon)


# -- races and the root itself -----------------------------------------------------------------


def test_file_deleted_between_listing_and_reading(repo: Path) -> None:
    """The scan lists, then reads: a file or folder gone in between is nothing, not an
    error (and never a story)."""
    tree = Repo(repo, PathRules())
    listed = tree.walk()
    stories = {rel for rel, result in tree.read_many(listed).items() if hasattr(result, "id")}
    assert len(stories) == 50
    gone = sorted(stories)[:5]
    for rel in gone:
        (repo / rel).unlink()
    shutil.rmtree(repo / "ui")  # a whole folder too
    gone += [rel for rel in listed if rel.startswith("ui/")]
    results = tree.read_many(listed)
    assert all(results[rel] is None for rel in gone)
    left = {rel for rel, result in results.items() if hasattr(result, "id")}
    assert left == stories - set(gone)


async def test_file_created_and_deleted_before_it_settles(
    repo: Path, daemon_factory: type[Daemon], connect: Connect
) -> None:
    daemon = daemon_factory(repo, config=FAST).start()
    daemon.wait_healthy()
    client = await connect(daemon.ws_url())
    await client.subscribe("all", {})
    for n in range(50):
        flash = repo / f"flash-{n}.md"
        flash.write_bytes(front(f"FLASH-{n}"))
        flash.unlink()
    events = await events_before_marker(client, repo, "flash")
    assert [e for e in events if e["story_id"].startswith("FLASH")] == []
    await client.close()
    assert_alive(daemon)


async def test_deleted_root_keeps_the_daemon_serving(
    repo: Path, daemon_factory: type[Daemon], connect: Connect
) -> None:
    """The root folder itself deleted: the daemon keeps running, clients stay connected and
    /healthz answers. Whether the stories are reported deleted at once or kept until the
    folder comes back is the daemon's choice; nothing but ``story.deleted`` may arrive."""
    daemon = daemon_factory(repo, config=FAST).start()
    daemon.wait_healthy()
    client = await connect(daemon.ws_url())
    await client.subscribe("all", {})
    shutil.rmtree(repo)
    await client.send({"type": "ping", "nonce": "after-rmtree"})
    pong, before = await client.recv_until(lambda m: m["type"] == "pong")
    assert pong["nonce"] == "after-rmtree"
    with contextlib.suppress(TimeoutError):
        while True:
            event, _ = await client.recv_until(
                lambda m: str(m.get("type", "")).startswith("story."), timeout=1
            )
            before.append(event)
    assert {m["type"] for m in before} <= {"story.deleted"}, before
    health = healthz(daemon)
    assert health["status"] in ("ok", "degraded"), health
    assert daemon.proc is not None and daemon.proc.poll() is None
    errors = [line for line in daemon.stderr_lines if " ERROR " in line or "Traceback" in line]
    assert errors == []


async def test_recreated_root_is_watched_again(
    repo: Path, tmp_path: Path, daemon_factory: type[Daemon], connect: Connect
) -> None:
    """The root deleted, then recreated with a story changed: the change is reported (or,
    if the watcher went blind, /healthz must not claim it is fine)."""
    daemon = daemon_factory(repo, config=FAST).start()
    daemon.wait_healthy()
    client = await connect(daemon.ws_url())
    await client.subscribe("all", {})
    backup = tmp_path / "backup"
    shutil.copytree(repo, backup)
    shutil.rmtree(repo)
    await client.send({"type": "ping", "nonce": "gone"})
    await client.recv_until(lambda m: m["type"] == "pong")
    shutil.copytree(backup, repo)
    path = repo / "ui" / "UI-005-dark-mode.md"
    path.write_text(path.read_text().replace("status: ready", "status: done", 1))
    try:
        event, _ = await client.recv_until(
            lambda m: (
                m.get("story_id") == "UI-005"
                and m["type"] != "story.deleted"
                and m["story"].get("status") == "done"
            ),
            timeout=scaled(6),
        )
    except TimeoutError:
        event = None
    assert event is not None or healthz(daemon)["status"] != "ok"
    assert event is not None, "blind after the root came back (but /healthz says so)"
    # And it keeps watching.
    path.write_text(path.read_text().replace("status: done", "status: review", 1))
    event = await next_event_of(client, "UI-005", timeout=scaled(6))
    assert event["type"] == "story.transitioned" and event["to"] == "review"


# -- a directory named *.md ---------------------------------------------------------------------


async def test_folder_named_like_a_story_moved_in_is_walked(
    repo: Path, tmp_path: Path, daemon_factory: type[Daemon], connect: Connect
) -> None:
    daemon = daemon_factory(repo, config=FAST).start()
    daemon.wait_healthy()
    client = await connect(daemon.ws_url())
    await client.subscribe("all", {})
    folder = tmp_path / "archive.md"
    folder.mkdir()
    (folder / "inner.md").write_bytes(front("INNER-1"))
    os.rename(folder, repo / "archive.md")
    event = await next_event_of(client, "INNER-1", timeout=3)
    assert event["type"] == "story.created"
    await client.close()


# -- many stories at once -----------------------------------------------------------------------


async def test_5000_stories_moved_in_at_once(
    repo: Path, tmp_path: Path, daemon_factory: type[Daemon], connect: Connect
) -> None:
    config = {**FAST, "limits": {"rate_per_s": 100_000, "burst": 100_000}}
    daemon = daemon_factory(repo, config=config).start()
    daemon.wait_healthy()
    client = await connect(daemon.ws_url())
    await client.subscribe("all", {})
    bulk = tmp_path / "bulk"
    bulk.mkdir()
    for n in range(5000):
        (bulk / f"B-{n:04d}.md").write_text(
            f"---\nid: B-{n:04d}\ntitle: bulk story {n}\nepic: bulk\nstatus: draft\n"
            f"labels: [bulk, load]\n---\n# B-{n:04d}\n\n{'lorem ipsum ' * 20}\n"
        )
    rss_before = rss_kb(daemon)
    peak = rss_before
    started = time.monotonic()
    os.rename(bulk, repo / "bulk")
    received: set[str] = set()
    while len(received) < 5000:
        event, _ = await client.recv_until(
            lambda m: str(m.get("type", "")).startswith("story."), timeout=30
        )
        assert event["type"] == "story.created", event
        received.add(event["story_id"])
        if len(received) % 500 == 0:
            peak = max(peak, rss_kb(daemon))
    elapsed = time.monotonic() - started
    peak = max(peak, rss_kb(daemon))
    assert received == {f"B-{n:04d}" for n in range(5000)}
    assert healthz(daemon)["stories"] == 5050

    # Still live right after it.
    path = repo / "ui" / "UI-005-dark-mode.md"
    path.write_text(path.read_text().replace("status: ready", "status: done", 1))
    event = await next_event_of(client, "UI-005")
    assert event["type"] == "story.transitioned"
    print(
        f"\n5000 stories moved in: all created in {elapsed:.2f} s; daemon RSS "
        f"{rss_before // 1024} MB before, peak {peak // 1024} MB "
        f"(+{(peak - rss_before) // 1024} MB)"
    )
    assert peak - rss_before < 120 * 1024, "RSS grew by more than 120 MB for 5000 stories"
    await client.close()
    assert_alive(daemon)
