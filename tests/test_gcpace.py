"""Unit tests for storywatch.gcpace: when the daemon runs its full garbage collections."""

from __future__ import annotations

import asyncio
import gc

import pytest

from storywatch.gcpace import MAX_INTERVAL_S, MIN_INTERVAL_S, OLDEST_THRESHOLD, QUIET_S, GcPacer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_not_due_right_after_a_collection_even_when_quiet() -> None:
    clock = Clock()
    pacer = GcPacer(lambda: 0.0, clock)
    clock.now += MIN_INTERVAL_S - 1
    assert not pacer.due()


def test_due_after_the_minimum_interval_once_quiet() -> None:
    clock = Clock()
    activity = [clock.now]
    pacer = GcPacer(lambda: activity[0], clock)
    clock.now += MIN_INTERVAL_S
    activity[0] = clock.now - QUIET_S / 2  # an event a moment ago: wait
    assert not pacer.due()
    clock.now += QUIET_S
    assert pacer.due()


def test_due_at_the_maximum_interval_however_busy() -> None:
    clock = Clock()
    pacer = GcPacer(lambda: clock.now, clock)  # an event every instant
    clock.now += MAX_INTERVAL_S - 1
    assert not pacer.due()
    clock.now += 1
    assert pacer.due()


def test_collect_restarts_the_interval() -> None:
    clock = Clock()
    pacer = GcPacer(lambda: 0.0, clock)
    clock.now += MAX_INTERVAL_S
    assert pacer.due()
    assert pacer.collect() >= 0
    assert (pacer.collections, pacer.due()) == (1, False)


async def test_run_raises_the_oldest_threshold_and_restores_it() -> None:
    before = gc.get_threshold()
    task = asyncio.create_task(GcPacer(lambda: 0.0).run())
    await asyncio.sleep(0)
    assert gc.get_threshold() == (before[0], before[1], OLDEST_THRESHOLD)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gc.get_threshold() == before
