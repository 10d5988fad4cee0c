"""What an attempt's outcome means, and when the next attempt is due — pure.

SPEC §10: a 2xx is delivered. A network error, a timeout, 408, 429 or 5xx is retried with
exponential backoff (1 s doubling, at most 5 min, up to +10 % jitter, counted from the end of
the failed attempt) while attempts < ``max_attempts`` and the event is younger than
``max_age_s`` (from its ``time``); ``Retry-After`` (seconds or an HTTP-date) on 429 and 503
replaces the backoff, capped at 5 min, without jitter. Anything else — another 4xx, a 3xx
(redirects are not followed), a 1xx — is dead-lettered at once. Time is passed in.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import math
import re
from dataclasses import dataclass
from typing import Final, Literal

FIRST_BACKOFF_S: Final = 1.0
MAX_BACKOFF_S: Final = 300.0
MAX_JITTER: Final = 0.10
RETRY_AFTER_STATUSES: Final = frozenset({429, 503})
_SECONDS = re.compile(r"^\d+(\.\d+)?$")

Action = Literal["delivered", "retry", "dead"]


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one attempt came to: an HTTP status, or the reason there was none."""

    status: int | None
    error: str | None = None
    retry_after: str | None = None  # the answer's Retry-After header, if any

    @property
    def message(self) -> str:
        if self.status is None:
            return self.error or "no answer"
        if 300 <= self.status < 400:
            return f"HTTP {self.status} (redirects are not followed)"
        return f"HTTP {self.status}"


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    message: str | None = None  # the failure (None when delivered)
    delay_s: float = 0.0  # for "retry": how long to wait before the next attempt


def is_success(status: int | None) -> bool:
    return status is not None and 200 <= status < 300


def is_retryable(attempt: Attempt) -> bool:
    status = attempt.status
    return status is None or status in (408, 429) or 500 <= status < 600


def backoff_s(failed_attempts: int, jitter: float) -> float:
    """The wait after the n-th failed attempt: 1, 2, 4 … s, at most 5 min; ``jitter`` in
    [0, 1) adds up to 10 % (the result never passes the cap)."""
    base = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2.0 ** max(0, failed_attempts - 1))
    return min(MAX_BACKOFF_S, base * (1.0 + MAX_JITTER * min(max(jitter, 0.0), 1.0)))


def retry_after_s(header: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds from ``now`` (Unix time), capped at 5 min; None if absent
    or unreadable. A date in the past means "now"."""
    if header is None:
        return None
    text = header.strip()
    if _SECONDS.match(text):
        return min(MAX_BACKOFF_S, float(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        when = when.replace(tzinfo=dt.UTC)
    return min(MAX_BACKOFF_S, max(0.0, when.timestamp() - now))


def event_time(stamp: object) -> float | None:
    """An event's ``time`` (ISO-8601) as Unix time; None if it cannot be read."""
    if not isinstance(stamp, str):
        return None
    try:
        when = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def too_old(born: float | None, max_age_s: float, now: float) -> bool:
    """Whether an event is past ``max_age_s`` (an unreadable time never is)."""
    return born is not None and now - born > max_age_s


def decide(
    attempt: Attempt,
    *,
    attempts: int,
    max_attempts: int,
    born: float | None,
    max_age_s: float,
    now: float,
    jitter: float,
) -> Verdict:
    """What to do after ``attempts`` attempts, the last of which came to ``attempt``,
    ending at ``now``; ``jitter`` is a random number in [0, 1)."""
    if is_success(attempt.status):
        return Verdict("delivered")
    message = attempt.message
    if not is_retryable(attempt):
        return Verdict("dead", message)
    if attempts >= max_attempts:
        tries = f"{attempts} attempt" + ("s" if attempts != 1 else "")
        return Verdict("dead", f"{message} (gave up after {tries})")
    delay = None
    if attempt.status in RETRY_AFTER_STATUSES:
        delay = retry_after_s(attempt.retry_after, now)
    if delay is None:
        delay = backoff_s(attempts, jitter)
    if born is not None and now + delay - born > max_age_s:
        return Verdict("dead", f"{message} (gave up: older than max_age_s {_n(max_age_s)} s)")
    return Verdict("retry", message, delay)


def _n(value: float) -> str:
    return str(int(value)) if math.isfinite(value) and value == int(value) else str(value)
