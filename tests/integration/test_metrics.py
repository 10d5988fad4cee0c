"""``GET /metrics`` (SPEC §5): Prometheus text whose ``storywatch_*`` counters move with
what the daemon does — events by type, deliveries, connections, the latency and batch-size
histograms, coalescing, parse errors — and its auth when ``metrics_public`` is false."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import scaled
from tests.integration.daemon import Client, Daemon
from tests.integration.helpers import http_get, set_status
from tests.integration.test_pressure import metric_values, metrics

pytestmark = pytest.mark.integration

UI5 = Path("ui") / "UI-005-dark-mode.md"  # status: ready
UI3 = Path("ui") / "UI-003-connection-status-indicator.md"

TRANSITIONED = 'storywatch_events_total{type="story.transitioned"}'
INVALID = 'storywatch_events_total{type="story.invalid"}'
DELIVERIES = "storywatch_deliveries_total"
CONNECTIONS = "storywatch_connections"
OPENED = "storywatch_connections_opened_total"
LATENCY = "storywatch_delivery_latency_seconds_count"
BATCHES = "storywatch_batch_size_count"
COALESCED = "storywatch_coalesced_total"
YAML_ERRORS = 'storywatch_parse_errors_total{reason="yaml"}'


async def wait_metric(
    daemon: Daemon, name: str, at_least: float, timeout: float = 10
) -> dict[str, float]:
    """Every metric, once ``name`` reached ``at_least`` (counters move right after the
    frame is written, so a client may see the frame a moment before)."""
    deadline = time.monotonic() + scaled(timeout)
    while True:
        values = await asyncio.to_thread(metrics, daemon)
        if values.get(name, 0.0) >= at_least:
            return values
        assert time.monotonic() < deadline, (name, values.get(name), at_least)
        await asyncio.sleep(0.05)


async def test_counters_move(repo: Path, daemon_factory: type[Daemon]) -> None:
    # One event per 2 s and a burst of 1: easy to get a connection over its budget.
    daemon = daemon_factory(repo, config={"limits": {"rate_per_s": 0.5, "burst": 1}}).start()
    health = daemon.wait_healthy()
    epoch = health["epoch"]

    request = urllib.request.Request(daemon.http + "/metrics")
    with urllib.request.urlopen(request, timeout=scaled(5)) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    for family, kind in (
        ("storywatch_events", "counter"),
        ("storywatch_deliveries", "counter"),
        ("storywatch_connections", "gauge"),
        ("storywatch_delivery_latency_seconds", "histogram"),
        ("storywatch_batch_size", "histogram"),
        ("storywatch_coalesced", "counter"),
        ("storywatch_parse_errors", "counter"),
        ("storywatch_dropped", "counter"),
    ):
        suffix = "(_total)?" if kind == "counter" else ""
        assert re.search(rf"^# TYPE {family}{suffix} {kind}$", text, re.M), family
    before = metric_values(text)
    assert before[CONNECTIONS] == 0

    client = await Client.connect(daemon.ws_url())
    try:
        subscribed, _ = await client.subscribe("s1", {})
        values = await asyncio.to_thread(metrics, daemon)
        assert values[CONNECTIONS] == 1
        assert values[OPENED] == before.get(OPENED, 0) + 1

        # One status edit: one event, one batch, one delivery with its latency.
        set_status(daemon.repo / UI5, "in-progress")
        (event,) = await client.events(1)
        assert event["type"] == "story.transitioned"
        after = await wait_metric(daemon, DELIVERIES, before.get(DELIVERIES, 0) + 1)
        assert after[TRANSITIONED] == before.get(TRANSITIONED, 0) + 1
        assert after[BATCHES] == before.get(BATCHES, 0) + 1
        assert after[LATENCY] == before.get(LATENCY, 0) + 1
        assert after[DELIVERIES] == before.get(DELIVERIES, 0) + 1
        assert after["storywatch_delivery_latency_seconds_sum"] < scaled(1)
        print(
            f"\nfile settled → frame written: "
            f"{after['storywatch_delivery_latency_seconds_sum'] * 1000:.1f} ms"
        )

        # Three more edits, each its own batch, faster than the budget (the burst token is
        # spent): they wait in the outbox and merge into what is pending for the story.
        seq = event["seq"]
        for status in ("review", "done", "blocked"):
            set_status(daemon.repo / UI5, status)
            code, body = await asyncio.to_thread(
                http_get,
                daemon,
                f"/api/events?epoch={epoch}&since={seq}&wait=10",
                "tok-reader",
                20,
            )
            assert code == 200 and len(body["events"]) == 1, body
            seq = body["seq"]
        got: list[dict[str, Any]] = []
        while not got or got[-1]["to"] != "blocked":
            got += await client.events(1, timeout=15)
        merged = [e for e in got if "coalesced" in e]
        assert merged, got
        last = got[-1]
        assert last["to"] == "blocked" and last["seq"] == seq, last
        assert sum(e.get("coalesced", 1) for e in got) == 3, got
        previous = "in-progress"
        for e in got:  # merged: from the first old status to the last new one
            assert e["type"] == "story.transitioned", e
            assert e["from"] == previous, e
            assert e["changes"]["status"] == {"old": e["from"], "new": e["to"]}, e
            previous = e["to"]
        print(
            "coalesced frames: "
            + ", ".join(f"{e['from']}→{e['to']} ×{e.get('coalesced', 1)}" for e in got)
        )
        values = await wait_metric(daemon, COALESCED, before.get(COALESCED, 0) + 1)
        assert values[TRANSITIONED] == before.get(TRANSITIONED, 0) + 4
        assert values[BATCHES] == before.get(BATCHES, 0) + 4

        # Broken YAML in a story: story.invalid and a parse error.
        path = daemon.repo / UI3
        path.write_text(path.read_text().replace("status:", "status: [unclosed", 1))
        (invalid,) = await client.events(1, timeout=15)
        assert invalid["type"] == "story.invalid" and invalid["story_id"] == "UI-003", invalid
        assert invalid["error"]["reason"] == "yaml", invalid
        values = await wait_metric(daemon, YAML_ERRORS, before.get(YAML_ERRORS, 0) + 1)
        assert values[INVALID] == before.get(INVALID, 0) + 1
    finally:
        await client.close()
    deadline = time.monotonic() + scaled(10)
    while (await asyncio.to_thread(metrics, daemon))[CONNECTIONS] != 0:
        assert time.monotonic() < deadline, "storywatch_connections did not go back to 0"
        await asyncio.sleep(0.05)
    assert subscribed["epoch"] == epoch


async def test_metrics_need_admin_when_not_public(repo: Path, daemon_factory: type[Daemon]) -> None:
    daemon = daemon_factory(repo, config={"server": {"metrics_public": False}}).start()
    daemon.wait_healthy()
    assert http_get(daemon, "/metrics", None)[0] == 401
    assert http_get(daemon, "/metrics", "tok-unknown")[0] == 401
    assert http_get(daemon, "/metrics", "tok-reader")[0] == 403
    assert http_get(daemon, "/metrics", "tok-publisher")[0] == 403
    assert http_get(daemon, "/metrics", "tok-integration")[0] == 403
    status, text = http_get(daemon, "/metrics", "tok-admin")
    assert status == 200 and "storywatch_events" in text
    status, text = http_get(daemon, "/metrics?token=tok-admin", None)
    assert status == 200 and "storywatch_deliveries_total" in text
    assert http_get(daemon, "/healthz", None)[0] == 200  # still public


async def test_metrics_public_by_default(daemon: Daemon) -> None:
    status, text = http_get(daemon, "/metrics", None)
    assert status == 200, text
    assert re.search(r"^# TYPE storywatch_events(_total)? counter$", text, re.M), text
