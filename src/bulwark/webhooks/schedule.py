"""When a failed webhook delivery is tried again.

Deliveries back off quickly at first (a receiver restarting answers again within seconds),
then settle to hourly, and are given up a day after the first attempt.
"""

from __future__ import annotations

from datetime import datetime, timedelta

RETRY_WINDOW = timedelta(hours=24)

# The wait after the 1st, 2nd, ... failed attempt; every later one waits the last of these.
_BACKOFF = (
    timedelta(seconds=10),
    timedelta(seconds=30),
    timedelta(minutes=1),
    timedelta(minutes=2),
    timedelta(minutes=5),
    timedelta(minutes=10),
    timedelta(minutes=30),
    timedelta(hours=1),
)


def next_attempt(attempts: int, first_at: datetime, now: datetime) -> datetime | None:
    """When to try a delivery again after ``attempts`` failed attempts, the first at ``first_at``;
    None when that would fall after the retry window, that is, give up."""
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    delay = _BACKOFF[min(attempts, len(_BACKOFF)) - 1]
    due = now + delay
    if due > first_at + RETRY_WINDOW:
        return None
    return due
