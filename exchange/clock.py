"""The one clock that decides posting time, expiry and settlement periods.

Production uses the system's UTC clock (servers must run NTP); tests inject a
`FrozenClock` they can move forward, which is how expiry and settlement periods are
tested without sleeping.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["Clock", "FrozenClock", "SystemClock", "utc"]


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FrozenClock:
    """A clock that only moves when told to (tests, the demo's simulated days)."""

    def __init__(self, start: datetime) -> None:
        self._now = utc(start)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> None:
        self._now += delta

    def set(self, moment: datetime) -> None:
        self._now = utc(moment)


def utc(moment: datetime) -> datetime:
    """Normalise an aware datetime to UTC; naive datetimes are a programming error."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: every time in the exchange is timezone-aware")
    return moment.astimezone(UTC)
