"""Prometheus metrics, ``storywatch_*``, in a registry of the server's own."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from storywatch.events import Event

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "events_counter"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events = Counter(
            "storywatch_events", "Events appended to the log, by type", ["type"], registry=r
        )
        self.deliveries = Counter(
            "storywatch_deliveries", "Event frames written to WebSocket clients", registry=r
        )
        self.coalesced = Counter(
            "storywatch_coalesced", "Pending events merged into a later one", registry=r
        )
        self.dropped = Counter(
            "storywatch_dropped",
            "Connections resynced or closed because they fell behind, by reason",
            ["reason"],
            registry=r,
        )
        self.connections = Gauge("storywatch_connections", "Open WebSocket connections", registry=r)
        self.connections_total = Counter(
            "storywatch_connections_opened", "WebSocket connections accepted", registry=r
        )
        self.rejected = Counter(
            "storywatch_rejected_requests",
            "HTTP requests refused, by status",
            ["status"],
            registry=r,
        )
        self.parse_errors = Counter(
            "storywatch_parse_errors",
            "Story files that failed to parse, by reason",
            ["reason"],
            registry=r,
        )
        self.batch_size = Histogram(
            "storywatch_batch_size",
            "Events per settled batch",
            buckets=(1, 2, 5, 10, 50, 100, 500, 1000, 5000),
            registry=r,
        )
        self.latency = Histogram(
            "storywatch_delivery_latency_seconds",
            "From the event's creation (after its file settled) to its frame being written",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.stories = Gauge("storywatch_stories", "Stories in the index", registry=r)
        self.seq = Gauge("storywatch_seq", "Latest event seq", registry=r)
        # Outbound webhooks (SPEC §10).
        self.webhook_deliveries = Counter(
            "storywatch_webhook_deliveries",
            "Webhook outcomes by hook: delivered, failed (an attempt), dead_lettered",
            ["hook", "outcome"],
            registry=r,
        )
        self.webhook_lag = Gauge(
            "storywatch_webhook_lag",
            "Events in the log after the hook's cursor (latest seq - cursor)",
            ["hook"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


def events_counter(metrics: Metrics) -> Callable[[list[Event]], None]:
    """A hub listener counting every event once, by type."""

    def count(events: list[Event]) -> None:
        for event in events:
            metrics.events.labels(event.type).inc()
        if events:
            metrics.seq.set(events[-1].seq)
            metrics.batch_size.observe(len(events))

    return count
