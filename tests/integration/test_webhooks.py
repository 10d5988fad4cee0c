"""Outbound webhooks (SPEC §10) from the real daemon to real local receivers.

Signatures and both formats, filters and scopes, the admin API and the ``hooks`` CLI,
retries and dead letters, no head-of-line blocking (between hooks and towards WebSocket
clients), durability across kill -9 and SIGTERM, config errors, and no secret or URL path in
any log line, API answer or CLI output. Every blocking call runs in a thread: the receivers
live in the test's event loop and must keep answering.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from storywatch.webhooks.config import decode_secret
from tests.conftest import scaled
from tests.integration.daemon import Client, Daemon
from tests.receiver import SECRET_PATH, Answer, Received, Receiver, closed_port, verify

pytestmark = pytest.mark.integration

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
KEY = decode_secret(SECRET)
SECRET_B64 = SECRET.removeprefix("whsec_")


def write_story(repo: Path, story_id: str, **fields: Any) -> Path:
    path = repo / f"{story_id}.md"
    front = {"id": story_id, "title": f"Story {story_id}", **fields}
    path.write_text("---\n" + yaml.safe_dump(front, sort_keys=False) + "---\nBody.\n")
    return path


def set_fields(path: Path, **fields: Any) -> None:
    text = path.read_text()
    _, front, body = text.split("---\n", 2)
    data = yaml.safe_load(front)
    data.update(fields)
    path.write_text("---\n" + yaml.safe_dump(data, sort_keys=False) + "---\n" + body)


def hook(name: str, url: str, **entry: Any) -> dict[str, Any]:
    return {"name": name, "url": url, **entry}


def request(
    daemon: Daemon, method: str, path: str, token: str | None = "tok-admin"
) -> tuple[int, Any]:
    req = urllib.request.Request(daemon.http + path, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=scaled(30)) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
        exc.close()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


async def api(daemon: Daemon, method: str, path: str, token: str | None = "tok-admin") -> Any:
    return await asyncio.to_thread(request, daemon, method, path, token)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "storywatch", *args],
        capture_output=True,
        text=True,
        timeout=scaled(60),
        env={**os.environ, "STORYWATCH_TOKEN": "", "STORYWATCH_URL": "", "STORYWATCH_CONFIG": ""},
    )


async def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cli, *args)


async def hooks_state(daemon: Daemon) -> dict[str, dict[str, Any]]:
    status, body = await api(daemon, "GET", "/api/hooks")
    assert status == 200, body
    return {h["name"]: h for h in body["hooks"]}


async def until_state(
    daemon: Daemon, name: str, check: Callable[[dict[str, Any]], bool], timeout: float = 30
) -> dict[str, Any]:
    """Poll /api/hooks (the daemon has no push for it) until ``check`` holds."""
    async with asyncio.timeout(scaled(timeout)):
        while True:
            state = (await hooks_state(daemon))[name]
            if check(state):
                return state
            await asyncio.sleep(0.05)


def assert_signed(request: Received) -> None:
    assert KEY is not None
    assert verify(
        KEY,
        request.headers["webhook-id"],
        request.headers["webhook-timestamp"],
        request.body,
        request.headers["webhook-signature"],
    )


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[..., Any]]:
    started: list[Receiver] = []

    async def make(respond: Any = None) -> Receiver:
        receiver = await (Receiver(respond) if respond else Receiver()).start()
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        await receiver.close()


@pytest.fixture
def story_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "stories"
    repo.mkdir()
    write_story(repo, "INT-1", epic="integration", status="draft")
    write_story(repo, "UI-1", epic="ui", status="draft")
    return repo


async def start(daemon: Daemon) -> Daemon:
    await asyncio.to_thread(daemon.start)
    await asyncio.to_thread(daemon.wait_healthy)
    return daemon


# -- delivery, formats, API and CLI ------------------------------------------------------


async def test_signed_events_both_formats_the_admin_api_and_the_cli(
    story_repo: Path, daemon_factory: type[Daemon], receivers: Any
) -> None:
    standard = await receivers()
    slack = await receivers()
    failing = await receivers(lambda request: Answer(500))
    config = {
        "webhooks": [
            hook(
                "reviews",
                standard.url(),
                secret_env="SW_HOOK_SECRET",
                filter={"events": ["story.transitioned"], "statuses": ["review"]},
                epics=["integration"],
            ),
            hook("chat", slack.url("/services/T0/B0/slacksecret"), format="slack"),
            hook("failing", failing.url(), max_attempts=1),
        ]
    }
    daemon = daemon_factory(
        story_repo, backend="sqlite", config=config, env={"SW_HOOK_SECRET": SECRET}
    )
    await start(daemon)
    set_fields(story_repo / "UI-1.md", status="review")  # outside the hook's epics
    set_fields(story_repo / "INT-1.md", status="review", title="Bridge <to> Slack & co")

    (got,) = await standard.wait_for(1)
    body = got.json()
    assert (body["type"], body["story_id"], body["from"], body["to"]) == (
        "story.transitioned",
        "INT-1",
        "draft",
        "review",
    )
    assert "subs" not in body
    assert got.headers["webhook-id"] == f"{body['epoch']}-{body['seq']}"
    assert got.headers["content-type"] == "application/json"
    assert_signed(got)

    texts = [r.json()["text"] for r in await slack.wait_for(2)]
    assert "*UI-1* Story UI-1: draft → review" in texts
    assert "*INT-1* Bridge &lt;to&gt; Slack &amp; co: draft → review" in texts
    assert all("webhook-id" in r.headers for r in slack.requests)

    reviews = await until_state(daemon, "reviews", lambda s: s["lag"] == 0)
    assert reviews["delivered"] == 1 and reviews["dead_letters"] == 0
    assert set(reviews) == {
        "name", "cursor", "lag", "delivered", "failed", "dead_letters", "last_error",
        "next_attempt",
    }  # fmt: skip
    failed = await until_state(daemon, "failing", lambda s: s["dead_letters"] == 2)
    assert failed["last_error"]["message"] == "HTTP 500 (gave up after 1 attempt)"
    status, dead = await api(daemon, "GET", "/api/hooks/failing/dead")
    assert status == 200 and [d["story_id"] for d in dead["dead"]] in (
        ["UI-1", "INT-1"],
        ["INT-1", "UI-1"],
    )
    assert dead["dead"][0]["attempts"] == 1

    # Admin only; unknown hooks are 404.
    assert (await api(daemon, "GET", "/api/hooks", "tok-reader"))[0] == 403
    assert (await api(daemon, "GET", "/api/hooks", None))[0] == 401
    assert (await api(daemon, "GET", "/api/hooks/nope/dead"))[0] == 404
    assert (await api(daemon, "POST", "/api/hooks/nope/test"))[0] == 404

    # A test delivery: signed, of type storywatch.test, counted nowhere.
    assert await api(daemon, "POST", "/api/hooks/reviews/test") == (
        200,
        {"status": 200, "error": None},
    )
    probe = standard.requests[-1]
    assert probe.json()["type"] == "storywatch.test" and probe.json()["hook"] == "reviews"
    assert probe.headers["webhook-id"].startswith("test-")
    assert_signed(probe)
    assert (await hooks_state(daemon))["reviews"]["delivered"] == 1

    # The CLI.
    base = ["--url", daemon.http, "--token", "tok-admin"]
    shown = await run_cli("hooks", "status", *base, "--json")
    assert shown.returncode == 0, shown.stderr
    assert {h["name"] for h in json.loads(shown.stdout)["hooks"]} == {"reviews", "chat", "failing"}
    table = await run_cli("hooks", "status", *base)
    assert table.returncode == 0 and "reviews" in table.stdout and "HTTP 500" in table.stdout
    ok = await run_cli("hooks", "test", "reviews", *base)
    assert (ok.returncode, ok.stdout.strip()) == (0, "reviews: HTTP 200")
    bad = await run_cli("hooks", "test", "failing", *base)
    assert (bad.returncode, bad.stdout.strip()) == (1, "failing: HTTP 500")
    unknown = await run_cli("hooks", "test", "nope", *base)
    assert unknown.returncode == 1 and "no hook named 'nope'" in unknown.stderr
    refused = await run_cli("hooks", "status", "--url", daemon.http, "--token", "tok-reader")
    assert refused.returncode == 1 and "scope admin" in refused.stderr
    assert (await run_cli("hooks", "status", "--url", daemon.http)).returncode == 2

    # Metrics per hook.
    status, metrics = await api(daemon, "GET", "/metrics", None)
    assert 'storywatch_webhook_deliveries_total{hook="reviews",outcome="delivered"} 1.0' in metrics
    assert 'storywatch_webhook_lag{hook="reviews"} 0.0' in metrics

    # Nothing secret anywhere: logs, API answers, CLI output.
    _, answer = await api(daemon, "GET", "/api/hooks")
    shown_text = json.dumps(answer) + shown.stdout + table.stdout + ok.stdout + bad.stdout
    for secret in (SECRET_PATH, "slacksecret", SECRET_B64):
        assert secret not in "".join(daemon.stderr_lines)
        assert secret not in shown_text


async def test_a_down_or_stuck_receiver_delays_no_other_hook_and_no_client(
    story_repo: Path, daemon_factory: type[Daemon], receivers: Any
) -> None:
    release = asyncio.Event()

    async def stuck(request: Received) -> Answer:
        await release.wait()
        return Answer(200)

    slow = await receivers(stuck)
    fast = await receivers()
    down = f"http://127.0.0.1:{closed_port()}{SECRET_PATH}"
    config = {
        "webhooks": [
            hook("slow", slow.url(), timeout_s=600),
            hook("down", down),
            hook("fast", fast.url()),
        ]
    }
    daemon = await start(daemon_factory(story_repo, config=config))
    client = await Client.connect(daemon.ws_url())
    await client.subscribe()
    for n in range(5):
        write_story(story_repo, f"NEW-{n}", epic="ui")
        (event,) = await client.events(1)  # the watcher and the clients go on
        assert event["story_id"] == f"NEW-{n}"
    got = await fast.wait_for(5)
    assert [r.json()["story_id"] for r in got] == [f"NEW-{n}" for n in range(5)]
    assert len(slow.requests) == 1  # still holding the first event
    down_state = await until_state(daemon, "down", lambda s: s["failed"] >= 1)
    assert down_state["last_error"]["message"].startswith("cannot connect")
    assert down_state["next_attempt"] is not None
    release.set()
    assert len(await slow.wait_for(5)) == 5
    await client.close()


# -- durability ----------------------------------------------------------------------------


async def test_kill_9_and_sigterm_skip_nothing(
    story_repo: Path, daemon_factory: type[Daemon], receivers: Any
) -> None:
    hold = asyncio.Event()  # set: requests hang until released
    release = asyncio.Event()

    async def respond(request: Received) -> Answer:
        if hold.is_set():
            await release.wait()
        return Answer(200)

    receiver = await receivers(respond)
    config = {"webhooks": [hook("durable", receiver.url(), secret=SECRET)]}

    def new_daemon() -> Daemon:
        return daemon_factory(story_repo, backend="sqlite", config=config)

    daemon = await start(new_daemon())
    for n in range(3):
        write_story(story_repo, f"K-{n}")
    await receiver.wait_for(3)

    # kill -9 while an attempt is in flight and more events wait behind it.
    hold.set()
    set_fields(story_repo / "K-0.md", status="one")
    await receiver.wait_for(4)
    set_fields(story_repo / "K-1.md", status="two")
    set_fields(story_repo / "K-2.md", status="three")
    await until_state(daemon, "durable", lambda s: s["lag"] == 3)
    await asyncio.to_thread(daemon.kill)
    hold.clear()
    release.set()
    release = asyncio.Event()

    daemon = await start(new_daemon())
    got = await receiver.wait_for(7)
    assert [r.seq for r in got] == [1, 2, 3, 4, 4, 5, 6]
    assert got[3].headers["webhook-id"] == got[4].headers["webhook-id"]
    for r in got:
        assert_signed(r)
    await until_state(daemon, "durable", lambda s: s["cursor"] == 6 and s["lag"] == 0)

    # SIGTERM while a receiver hangs: the daemon does not wait for it, and the event is
    # sent again after the restart.
    hold.set()
    set_fields(story_repo / "K-0.md", status="four")
    await receiver.wait_for(8)
    assert await asyncio.to_thread(daemon.stop) == 0
    hold.clear()
    release.set()
    daemon = await start(new_daemon())
    set_fields(story_repo / "K-1.md", status="five")
    got = await receiver.wait_for(10)
    assert [r.seq for r in got[7:]] == [7, 7, 8]
    state = await until_state(daemon, "durable", lambda s: s["cursor"] == 8)
    assert state["dead_letters"] == 0


async def test_dead_letters_survive_a_restart(
    story_repo: Path, daemon_factory: type[Daemon], receivers: Any
) -> None:
    gone = await receivers(lambda request: Answer(410))
    config = {"webhooks": [hook("gone", gone.url())]}
    daemon = await start(daemon_factory(story_repo, backend="sqlite", config=config))
    write_story(story_repo, "D-1")
    await until_state(daemon, "gone", lambda s: s["dead_letters"] == 1)
    assert await asyncio.to_thread(daemon.stop) == 0
    daemon = await start(daemon_factory(story_repo, backend="sqlite", config=config))
    state = (await hooks_state(daemon))["gone"]
    assert (state["cursor"], state["failed"], state["dead_letters"]) == (1, 1, 1)
    status, dead = await api(daemon, "GET", "/api/hooks/gone/dead")
    assert status == 200
    (letter,) = dead["dead"]
    assert (letter["seq"], letter["type"], letter["story_id"], letter["attempts"]) == (
        1,
        "story.created",
        "D-1",
        1,
    )
    assert letter["last_error"]["message"] == "HTTP 410"


# -- secrets and config ------------------------------------------------------------------


async def test_no_secret_or_url_path_in_debug_logs(
    story_repo: Path, daemon_factory: type[Daemon], receivers: Any
) -> None:
    flaky = await receivers(lambda request: Answer(503, {"Retry-After": "0"}))
    redirect = await receivers(
        lambda request: Answer(302, {"Location": f"http://127.0.0.1:1{SECRET_PATH}/moved"})
    )
    down = f"http://127.0.0.1:{closed_port()}{SECRET_PATH}?token=querysecret"
    config = {
        "webhooks": [
            hook("flaky", flaky.url(), secret=SECRET, max_attempts=3),
            hook("redirect", redirect.url(), secret=SECRET),
            hook("down", down, secret=SECRET, max_attempts=2),
        ]
    }
    daemon = await start(daemon_factory(story_repo, config=config, extra_args=["-v"]))
    write_story(story_repo, "S-1")
    for name in ("flaky", "redirect", "down"):
        await until_state(daemon, name, lambda s: s["dead_letters"] == 1)
    _, answer = await api(daemon, "GET", "/api/hooks")
    dead = [await api(daemon, "GET", f"/api/hooks/{name}/dead") for name in ("flaky", "down")]
    probe = await api(daemon, "POST", "/api/hooks/down/test")
    assert probe[1]["status"] is None and probe[1]["error"]
    assert await asyncio.to_thread(daemon.stop) == 0
    logs = "".join(daemon.stderr_lines)
    assert "webhook flaky" in logs
    shown = logs + json.dumps([answer, dead, probe])
    for secret in (SECRET_PATH, "s3cr3t", "querysecret", SECRET_B64):
        assert secret not in shown


@pytest.mark.parametrize(
    ("entry", "env", "message"),
    [
        ({"secret_env": "SW_UNSET_SECRET"}, {}, "webhooks[0].secret_env: the environment"),
        (
            {"secret": SECRET, "secret_env": "SW_SECRET"},
            {"SW_SECRET": SECRET},
            "webhooks[0].secret_env: set either secret or secret_env, not both",
        ),
        ({"secret": "hunter2"}, {}, "webhooks[0].secret: expected whsec_<base64>"),
        ({"secert": SECRET}, {}, "webhooks[0].secert: unknown key (did you mean 'secret'?)"),
    ],
)
def test_config_errors_exit_2_naming_the_key(
    tmp_path: Path, entry: dict[str, Any], env: dict[str, str], message: str
) -> None:
    path = tmp_path / "bad.yaml"
    url = f"https://hooks.example.com{SECRET_PATH}"
    path.write_text(yaml.safe_dump({"webhooks": [{"name": "h", "url": url, **entry}]}))
    done = subprocess.run(
        [sys.executable, "-m", "storywatch", "run", str(tmp_path), "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=scaled(30),
        env={**{k: v for k, v in os.environ.items() if not k.startswith("SW_")}, **env},
    )
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert message in line
    assert SECRET_PATH not in line and "hunter2" not in line and SECRET_B64 not in line


# -- behind the log's window -------------------------------------------------------------


async def publish(client: Client, ref: str, stories: list[dict[str, Any]]) -> None:
    items = [{"op": "upsert", "story": story} for story in stories]
    await client.send({"type": "publish", "ref": ref, "items": items})
    answer, _ = await client.recv_until(lambda m: m.get("ref") == ref)
    assert answer["type"] == "published", answer


@pytest.mark.parametrize(
    "backend", ["sqlite", "memory", pytest.param("redis", marks=pytest.mark.redis)]
)
async def test_a_hook_behind_the_window_gets_each_changed_storys_latest_event_compacted(
    story_repo: Path,
    daemon_factory: type[Daemon],
    receivers: Any,
    backend: str,
    request: pytest.FixtureRequest,
) -> None:
    port = closed_port()  # the receiver is down; it comes back on this port
    config = {
        "backend": {"buffer_size": 5},
        "webhooks": [hook("behind", f"http://127.0.0.1:{port}{SECRET_PATH}", secret=SECRET)],
    }
    extra = []
    if backend == "redis":  # a stream trimmed approximately: it may keep more than 5
        extra = ["--redis-url", request.getfixturevalue("redis_server").url]
    daemon = await start(
        daemon_factory(story_repo, backend=backend, config=config, extra_args=extra)
    )
    client = await Client.connect(daemon.ws_url("tok-admin"))
    await publish(client, "p0", [{"id": "P-0", "path": "P-0.md", "status": "s0"}])
    await until_state(daemon, "behind", lambda s: s["failed"] >= 1)
    for n in range(1, 50):  # 49 more events over 7 stories, while the receiver is down
        story_id = f"P-{n % 7}"
        await publish(
            client, f"p{n}", [{"id": story_id, "path": f"{story_id}.md", "status": f"s{n}"}]
        )
    receiver = await Receiver().start(port)
    try:
        got = await receiver.wait_for(8, timeout=30)
        first, rest = got[0], got[1:]
        assert first.json()["story_id"] == "P-0" and "compacted" not in first.json()
        bodies = [r.json() for r in rest]
        # Per story changed since, its latest event as logged, in seq order, none skipped.
        assert [b["story_id"] for b in bodies] == [f"P-{n % 7}" for n in range(43, 50)]
        assert [b["to"] for b in bodies] == [f"s{n}" for n in range(43, 50)]
        assert all(b["compacted"] is True for b in bodies)
        assert [b["seq"] for b in bodies] == sorted(b["seq"] for b in bodies)
        assert [r.headers["webhook-id"] for r in rest] == [
            f"{b['epoch']}-{b['seq']}" for b in bodies
        ]
        for request in got:
            assert_signed(request)
        state = await until_state(daemon, "behind", lambda s: s["lag"] == 0)
        assert (state["delivered"], state["dead_letters"]) == (8, 0)
        assert len(receiver.requests) == 8
    finally:
        await client.close()
        await receiver.close()
    assert "sending each story changed since" in "".join(daemon.stderr_lines)
