"""storywatch.webhooks.retry: outcomes, backoff spacing, Retry-After, max_attempts/max_age."""

from __future__ import annotations

import email.utils

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storywatch.webhooks.retry import (
    Attempt,
    Verdict,
    backoff_s,
    decide,
    event_time,
    is_retryable,
    retry_after_s,
    too_old,
)

NOW = 1_800_000_000.0


def verdict(
    attempt: Attempt,
    attempts: int = 1,
    *,
    max_attempts: int = 10,
    born: float | None = NOW - 1,
    max_age_s: float = 86_400.0,
    jitter: float = 0.0,
) -> Verdict:
    return decide(
        attempt,
        attempts=attempts,
        max_attempts=max_attempts,
        born=born,
        max_age_s=max_age_s,
        now=NOW,
        jitter=jitter,
    )


def test_backoff_doubles_from_one_second_up_to_five_minutes() -> None:
    assert [backoff_s(n, 0.0) for n in range(1, 12)] == [
        1,
        2,
        4,
        8,
        16,
        32,
        64,
        128,
        256,
        300,
        300,
    ]


@given(st.integers(1, 60), st.floats(0, 1, exclude_max=True))
def test_jitter_adds_at_most_ten_percent_and_never_passes_the_cap(n: int, jitter: float) -> None:
    base = backoff_s(n, 0.0)
    delay = backoff_s(n, jitter)
    assert base <= delay <= min(300.0, base * 1.1 + 1e-9)


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (None, True),
        (408, True),
        (429, True),
        (500, True),
        (503, True),
        (599, True),
        (400, False),
        (401, False),
        (404, False),
        (410, False),
        (422, False),
        (301, False),
        (302, False),
        (307, False),
    ],
)
def test_which_outcomes_are_retried(status: int | None, retryable: bool) -> None:
    assert is_retryable(Attempt(status, None if status else "refused")) is retryable


def test_2xx_is_delivered() -> None:
    for status in (200, 201, 202, 204, 299):
        assert verdict(Attempt(status)).action == "delivered"


def test_other_4xx_and_3xx_dead_letter_at_once() -> None:
    gone = verdict(Attempt(410))
    assert (gone.action, gone.message) == ("dead", "HTTP 410")
    moved = verdict(Attempt(302))
    assert moved.action == "dead"
    assert moved.message == "HTTP 302 (redirects are not followed)"


def test_retry_waits_by_the_backoff_with_jitter() -> None:
    first = verdict(Attempt(500), attempts=1, jitter=0.5)
    assert (first.action, first.delay_s) == ("retry", pytest.approx(1.05))
    third = verdict(Attempt(None, "cannot connect"), attempts=3)
    assert (third.action, third.delay_s, third.message) == ("retry", 4.0, "cannot connect")


def test_max_attempts_counts_attempts() -> None:
    assert verdict(Attempt(500), attempts=2, max_attempts=3).action == "retry"
    last = verdict(Attempt(500), attempts=3, max_attempts=3)
    assert last.action == "dead"
    assert last.message == "HTTP 500 (gave up after 3 attempts)"


def test_max_age_runs_from_the_events_time() -> None:
    # 10 s old, 12 s allowed: the next attempt (after 4 s) would be too late.
    late = verdict(Attempt(503), attempts=3, born=NOW - 10, max_age_s=12)
    assert late.action == "dead"
    assert "max_age_s" in (late.message or "")
    assert verdict(Attempt(503), attempts=1, born=NOW - 10, max_age_s=12).action == "retry"
    assert too_old(NOW - 13, 12, NOW) and not too_old(NOW - 11, 12, NOW)
    assert not too_old(None, 12, NOW)  # an unreadable time never expires


def test_retry_after_seconds_replaces_the_backoff_without_jitter() -> None:
    got = verdict(Attempt(429, retry_after="7"), attempts=1, jitter=0.99)
    assert (got.action, got.delay_s) == ("retry", 7.0)
    unavailable = verdict(Attempt(503, retry_after="3"), attempts=4, jitter=0.99)
    assert unavailable.delay_s == 3.0


def test_retry_after_is_only_honoured_on_429_and_503() -> None:
    assert verdict(Attempt(500, retry_after="60"), attempts=1).delay_s == 1.0


def test_retry_after_is_capped_at_five_minutes() -> None:
    assert verdict(Attempt(429, retry_after="86400")).delay_s == 300.0


def test_an_unreadable_retry_after_falls_back_to_the_backoff() -> None:
    assert verdict(Attempt(429, retry_after="soon"), attempts=2, jitter=0.0).delay_s == 2.0


def test_retry_after_parsing() -> None:
    assert retry_after_s(None, NOW) is None
    assert retry_after_s("0", NOW) == 0.0
    assert retry_after_s(" 12 ", NOW) == 12.0
    assert retry_after_s("1.5", NOW) == 1.5
    assert retry_after_s("-3", NOW) is None
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", NOW) == 0.0  # in the past
    in_90s = email.utils.formatdate(NOW + 90, usegmt=True)
    assert retry_after_s(in_90s, NOW) == pytest.approx(90.0)
    in_a_day = email.utils.formatdate(NOW + 86_400, usegmt=True)
    assert retry_after_s(in_a_day, NOW) == 300.0
    assert retry_after_s("not a date", NOW) is None


def test_event_time() -> None:
    assert event_time("1970-01-01T00:00:10.500Z") == 10.5
    assert event_time("2026-11-26T07:00:00+00:00") == pytest.approx(1795676400.0)
    assert event_time("yesterday") is None
    assert event_time(None) is None
