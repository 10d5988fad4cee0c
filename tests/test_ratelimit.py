"""Unit tests for storywatch.ratelimit.TokenBucket, with an injected clock."""

from __future__ import annotations

import pytest

from storywatch.ratelimit import TokenBucket


def test_burst_then_refuse() -> None:
    bucket = TokenBucket(rate_per_s=20, burst=50, now=100.0)
    assert all(bucket.take(100.0) for _ in range(50))
    assert not bucket.take(100.0)
    assert not bucket.take(100.0)


def test_refill_at_rate() -> None:
    # times are binary fractions so the arithmetic is exact
    bucket = TokenBucket(rate_per_s=4, burst=5, now=0.0)
    for _ in range(5):
        assert bucket.take(0.0)
    assert not bucket.take(0.0)
    assert not bucket.take(0.125)  # half a token
    assert bucket.take(0.25)  # one token after 1/rate s
    assert not bucket.take(0.25)
    assert bucket.take(0.75)
    assert bucket.take(0.75)
    assert not bucket.take(0.75)


def test_refill_is_capped_at_burst() -> None:
    bucket = TokenBucket(rate_per_s=100, burst=3, now=0.0)
    assert all(bucket.take(0.0) for _ in range(3))
    later = 3600.0
    assert [bucket.take(later) for _ in range(4)] == [True, True, True, False]


def test_clock_going_backwards_does_not_refill() -> None:
    bucket = TokenBucket(rate_per_s=4, burst=2, now=10.0)
    assert bucket.take(10.0)
    assert bucket.take(10.0)
    assert not bucket.take(5.0)
    assert not bucket.take(10.0)
    assert bucket.take(10.25)


def test_take_amount() -> None:
    bucket = TokenBucket(rate_per_s=1, burst=10, now=0.0)
    assert bucket.take(0.0, 7)
    assert not bucket.take(0.0, 4)  # a refused take spends nothing
    assert bucket.take(0.0, 3)
    assert not bucket.take(0.0)


def test_wait_time() -> None:
    bucket = TokenBucket(rate_per_s=4, burst=2, now=0.0)
    assert bucket.wait_time(0.0) == 0.0
    bucket.take(0.0, 2)
    assert bucket.wait_time(0.0) == pytest.approx(0.25)
    assert bucket.wait_time(0.0, 2) == pytest.approx(0.5)
    assert bucket.wait_time(0.125) == pytest.approx(0.125)
    assert bucket.wait_time(0.25) == 0.0
    assert bucket.take(0.25)


def test_fractional_rate() -> None:
    bucket = TokenBucket(rate_per_s=0.5, burst=1, now=0.0)
    assert bucket.take(0.0)
    assert not bucket.take(1.9)
    assert bucket.take(2.0)


def test_available() -> None:
    bucket = TokenBucket(rate_per_s=4, burst=8, now=0.0)
    assert bucket.take(0.0, 6)
    assert bucket.available() == 2
    assert bucket.available(0.5) == 4  # refills to now
    assert bucket.available() == 4
    assert bucket.available(100.0) == 8  # capped at burst
