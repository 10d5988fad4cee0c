"""The toolbelt against a real daemon: publish, tail, token, config errors."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import scaled
from tests.integration.daemon import Client, Daemon
from tests.integration.redis_server import RedisServer
from tests.test_gitdiff import ZERO, GitRepo, branch_fixture


class Proc:
    """A ``python -m storywatch`` subprocess whose output lines can be awaited."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "storywatch", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.lines: dict[str, queue.Queue[str]] = {"out": queue.Queue(), "err": queue.Queue()}
        self.seen: dict[str, list[str]] = {"out": [], "err": []}
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, "out"), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, "err"), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _pump(self, stream: Any, name: str) -> None:
        for line in stream:
            self.lines[name].put(line.rstrip("\n"))

    def wait_line(self, stream: str, wanted: Callable[[str], bool], timeout: float = 15) -> str:
        deadline = time.monotonic() + scaled(timeout)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no matching {stream} line; seen {self.seen}")
            try:
                line = self.lines[stream].get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen[stream].append(line)
            if wanted(line):
                return line

    def stop(self, sig: int = signal.SIGINT, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(scaled(timeout))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        for thread in self._threads:
            thread.join(timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        for name, lines in self.lines.items():  # what was printed but not awaited
            while not lines.empty():
                self.seen[name].append(lines.get_nowait())
        return code


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.stop(signal.SIGKILL)


def storywatch(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "storywatch", *args],
        capture_output=True,
        text=True,
        timeout=scaled(timeout),
        env={**os.environ, "STORYWATCH_TOKEN": "", "STORYWATCH_URL": "", "STORYWATCH_CONFIG": ""},
    )


def edit_status(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert f"status: {old}" in text
    path.write_text(text.replace(f"status: {old}", f"status: {new}", 1))


# -- publish ---------------------------------------------------------------------------


async def test_publish_reaches_a_subscriber_once(
    tmp_path: Path, daemon_factory: type[Daemon]
) -> None:
    repo, base, head = branch_fixture(tmp_path / "repo")
    daemon = daemon_factory(tmp_path / "unused", command="serve").start()
    client = await Client.connect(daemon.ws_url())
    await client.subscribe()

    def publish(rev_from: str, rev_to: str) -> subprocess.CompletedProcess[str]:
        return storywatch(
            "publish",
            "--from",
            rev_from,
            "--to",
            rev_to,
            "--repo",
            str(repo.root),
            "--url",
            daemon.http,
            "--token",
            "tok-publisher",
        )

    first = publish(ZERO, base)  # a new branch: every story is new
    assert first.returncode == 0, first.stderr
    created = await client.events(5)
    assert {e["type"] for e in created} == {"story.created"}
    source = dict(created[0]["source"])
    assert source.pop("git")["commit"]["sha"] == base  # SPEC §11: the commit of each path
    assert source == {
        "kind": "git",
        "from": ZERO,
        "to": base,
        "author": "Ada Lovelace <ada@example.com>",
        "token": "publisher",  # SPEC §11: who published, over --url
    }

    done = publish(base, head)
    assert done.returncode == 0, done.stderr
    assert "5 events" in done.stdout
    events = await client.events(5)
    assert {e["story_id"]: e["type"] for e in events} == {
        "S-1": "story.transitioned",
        "S-2": "story.updated",
        "S-3": "story.deleted",
        "S-4": "story.moved",
        "S-6": "story.created",
    }
    for event in events:
        assert event["source"]["kind"] == "git"
        assert (event["source"]["from"], event["source"]["to"]) == (base, head)
        assert event["source"]["author"] == "Ada Lovelace <ada@example.com>"
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)

    again = publish(base, head)  # the same range twice: the server has it all already
    assert again.returncode == 0, again.stderr
    assert "0 events" in again.stdout
    await client.no_event()
    await client.close()


def test_publish_refused_token_exits_1(tmp_path: Path, daemon_factory: type[Daemon]) -> None:
    repo, base, head = branch_fixture(tmp_path / "repo")
    daemon = daemon_factory(tmp_path / "unused", command="serve").start()
    common = [
        "publish",
        "--from",
        base,
        "--to",
        head,
        "--repo",
        str(repo.root),
        "--url",
        daemon.ws_url(None),
    ]
    unknown = storywatch(*common, "--token", "tok-nobody")
    assert unknown.returncode == 1
    assert "HTTP 401" in unknown.stderr and len(unknown.stderr.strip().splitlines()) == 1
    reader = storywatch(*common, "--token", "tok-reader")
    assert reader.returncode == 1 and "no publish scope" in reader.stderr
    assert "tok-" not in unknown.stderr + reader.stderr  # tokens never echoed


@pytest.mark.redis
async def test_publish_straight_into_redis(
    tmp_path: Path, redis_server: RedisServer, daemon_factory: type[Daemon]
) -> None:
    repo, base, head = branch_fixture(tmp_path / "repo")
    daemon = daemon_factory(
        tmp_path / "unused",
        command="serve",
        backend="redis",
        extra_args=["--redis-url", redis_server.url],
    ).start()
    daemon.wait_healthy()
    client = await Client.connect(daemon.ws_url())
    await client.subscribe()
    for rev_from, rev_to, count in ((ZERO, base, 5), (base, head, 5), (base, head, 0)):
        done = storywatch(
            "publish",
            "--from",
            rev_from,
            "--to",
            rev_to,
            "--repo",
            str(repo.root),
            "--redis-url",
            redis_server.url,
        )
        assert done.returncode == 0, done.stderr
        assert f"{count} events" in done.stdout
        if count:
            events = await client.events(count)
            assert all(e["source"]["kind"] == "git" for e in events)
    assert events[-1]["source"]["to"] == head
    await client.no_event()
    await client.close()


# -- tail ------------------------------------------------------------------------------


def start_tail(
    procs: list[Proc], daemon: Daemon, *args: str, env: dict[str, str] | None = None
) -> Proc:
    env = env or {"STORYWATCH_URL": daemon.http, "STORYWATCH_TOKEN": "tok-reader"}
    tail = Proc("tail", *args, env=env)
    procs.append(tail)
    tail.wait_line("err", lambda line: "subscribed at seq" in line)
    return tail


def test_tail_prints_events_and_stops_on_sigint(
    repo: Path, daemon_factory: type[Daemon], procs: list[Proc]
) -> None:
    daemon = daemon_factory(repo).start()
    daemon.wait_healthy()
    tail = start_tail(procs, daemon)  # URL and token from the environment
    flags_win = {"STORYWATCH_URL": "http://127.0.0.1:9", "STORYWATCH_TOKEN": "tok-wrong"}
    json_tail = start_tail(
        procs,
        daemon,
        "--json",
        "--epic",
        "ui",
        "--url",
        daemon.ws_url(None),
        "--token",
        "tok-reader",
        env=flags_win,
    )
    edit_status(repo / "ui" / "UI-005-dark-mode.md", "ready", "in-progress")
    line = tail.wait_line("out", lambda line: "UI-005" in line)
    assert "story.transitioned  UI-005  ready → in-progress" in line
    event = json.loads(json_tail.wait_line("out", lambda line: "UI-005" in line))
    assert event["type"] == "story.transitioned" and event["subs"] == ["tail-1"]
    assert tail.stop(signal.SIGINT) == 0
    assert json_tail.stop(signal.SIGTERM) == 0


def test_tail_with_a_bad_token_exits_1(repo: Path, daemon_factory: type[Daemon]) -> None:
    daemon = daemon_factory(repo).start()
    done = storywatch("tail", "--url", daemon.http, "--token", "tok-wrong", timeout=30)
    assert done.returncode == 1
    assert "HTTP 401" in done.stderr and "tok-wrong" not in done.stderr


def test_tail_resumes_after_a_restart_with_sqlite(
    repo: Path, daemon_factory: type[Daemon], procs: list[Proc]
) -> None:
    first = daemon_factory(repo, backend="sqlite").start()
    first.wait_healthy()
    tail = start_tail(procs, first)
    edit_status(repo / "ui" / "UI-005-dark-mode.md", "ready", "in-progress")
    tail.wait_line("out", lambda line: "UI-005" in line)

    assert first.stop() == 0
    # Changed while nobody watches: the daemon reports it at startup, the tail replays it.
    edit_status(repo / "ui" / "UI-005-dark-mode.md", "in-progress", "review")
    second = daemon_factory(repo, backend="sqlite", extra_args=["--port", str(first.port)])
    second.start()
    line = tail.wait_line("out", lambda line: "UI-005" in line, timeout=30)
    assert "in-progress → review" in line
    assert tail.stop() == 0
    print(tail.seen)
    assert not any("resynced" in line for line in tail.seen["err"])
    assert sum("in-progress → review" in line for line in tail.seen["out"]) == 1


def test_tail_catches_up_after_an_absence_longer_than_the_buffer(
    repo: Path, daemon_factory: type[Daemon], procs: list[Proc]
) -> None:
    """SPEC §9: away past the replay buffer, the tail is told what changed — the stories
    as they are now, the ones that went away — not a reload, and then follows live."""
    config = {"backend": {"buffer_size": 2}}
    first = daemon_factory(repo, backend="sqlite", config=config).start()
    first.wait_healthy()
    tail = start_tail(procs, first)
    json_tail = start_tail(procs, first, "--json")
    edit_status(repo / "ui" / "UI-005-dark-mode.md", "ready", "in-progress")
    tail.wait_line("out", lambda line: "UI-005" in line)
    json_tail.wait_line("out", lambda line: "UI-005" in line)
    assert first.stop() == 0
    edit_status(repo / "ui" / "UI-005-dark-mode.md", "in-progress", "review")
    edit_status(repo / "api" / "v1" / "API-001-list-stories-endpoint.md", "done", "review")
    (repo / "api" / "API-007-rate-limit-headers.md").unlink()
    second = daemon_factory(
        repo, backend="sqlite", config=config, extra_args=["--port", str(first.port)]
    ).start()
    second.wait_healthy()
    line = tail.wait_line("out", lambda line: "caught up" in line and "API-007" in line, 30)
    assert "removed" in line
    assert any("caught up" in x and "UI-005" in x and "review" in x for x in tail.seen["out"])
    chunk = json.loads(json_tail.wait_line("out", lambda line: '"catchup"' in line, 30))
    assert chunk["done"] and "API-007" in chunk["removed"]
    assert {s["id"] for s in chunk["stories"]} >= {"UI-005", "API-001"}
    edit_status(repo / "ui" / "UI-005-dark-mode.md", "review", "done")
    line = tail.wait_line("out", lambda line: "review → done" in line)
    assert tail.stop() == 0 and json_tail.stop() == 0
    assert not any("resynced" in line for line in tail.seen["err"])


def test_tail_resyncs_when_history_is_lost(
    repo: Path, daemon_factory: type[Daemon], procs: list[Proc]
) -> None:
    first = daemon_factory(repo).start()  # memory: nothing survives
    first.wait_healthy()
    tail = start_tail(procs, first)
    assert first.stop() == 0
    second = daemon_factory(repo, extra_args=["--port", str(first.port)]).start()
    second.wait_healthy()
    tail.wait_line("err", lambda line: "resynced" in line, timeout=30)
    edit_status(repo / "ui" / "UI-005-dark-mode.md", "ready", "in-progress")
    line = tail.wait_line("out", lambda line: "UI-005" in line)
    assert "ready → in-progress" in line
    assert [line for line in tail.seen["out"] if "story." in line] == [line]  # no snapshot
    assert tail.stop() == 0


# -- token and config ------------------------------------------------------------------


async def test_token_round_trip(repo: Path, daemon_factory: type[Daemon]) -> None:
    made = storywatch("token", "new", "ci-bot", "--scope", "read", "--epic", "ui")
    assert made.returncode == 0, made.stderr
    token = made.stdout.splitlines()[0].removeprefix("token: ")
    entries = yaml.safe_load(
        "\n".join(line for line in made.stdout.splitlines() if line.startswith(("-", " ")))
    )
    daemon = daemon_factory(repo, config={"auth": {"tokens": entries}}).start()
    client = await Client.connect(daemon.ws_url(token))
    assert client.welcome["user"] == "ci-bot" and client.welcome["scopes"] == ["read"]
    _, stories = await client.subscribe(snapshot=True)
    assert stories and {s["epic"] for s in stories} == {"ui"}
    await client.close()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("server:\n  prot: 1\n", "server.prot: unknown key (did you mean 'port'?)"),
        ("server:\n  port: high\n", "server.port: expected an integer"),
        ("watch: []\n", "watch: expected a mapping"),
        (None, "config file not found"),
    ],
)
def test_config_errors_exit_2(tmp_path: Path, config: str | None, message: str) -> None:
    path = tmp_path / "bad.yaml"
    if config is not None:
        path.write_text(config)
    done = storywatch("run", str(tmp_path), "--config", str(path), timeout=30)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert message in line


def test_scan_exit_codes_in_a_git_checkout(tmp_path: Path) -> None:
    repo = GitRepo(tmp_path / "repo")
    repo.story("a.md", "A")
    repo.commit()
    clean = storywatch("scan", str(repo.root), "--json")
    assert clean.returncode == 0 and json.loads(clean.stdout)["stories"] == 1
    repo.story("b.md", "A")
    dirty = storywatch("scan", str(repo.root))
    assert dirty.returncode == 1 and "b.md:2: duplicate_id" in dirty.stdout
