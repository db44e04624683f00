"""Per-caller rate limits (partner key, operator token, member token), per process.

The limits are written and validated in the `limits` library's notation
("1000/second;50000/minute"), and enforced here with GCRA, the generic cell rate
algorithm (a token bucket kept as one timestamp per caller): constant time per request
and no background work. The library's own in-memory strategies were measured at about
15% of a server worker's CPU under load, almost all of it their expiry task handing
work to a thread every few milliseconds.

The limits hold for the whole service on a host: with `exchange serve --workers N`
(EXCHANGE_WORKERS=N) each process enforces a 1/N share of every limit (`share`): the
sustained rate divided by N, and the burst divided by N (at least 1). However requests
spread over the processes, the service never allows more than the limit (a burst of
at most `amount`, then `amount` per period); a caller whose requests all land on one
process is held to 1/N of the burst. This keeps the check in memory, off the database
(a shared counter in PostgreSQL would cost a round trip per request; see
docs/operations.md, "Security"). Limits of fewer requests than workers cannot be split:
each process still allows one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from limits import parse_many

from exchange.config import Settings
from exchange.errors import RateLimited

__all__ = ["CallerKind", "Rate", "RateLimiter", "share"]

CallerKind = Literal["partner", "operator", "member"]
CALLERS_TRACKED_MAX = 100_000  # forget idle callers beyond this (their buckets are full)
_TOLERANCE_S = 1e-9  # sums of float intervals drift by a few ulps


@dataclass(frozen=True, slots=True)
class Rate:
    """`amount` requests per `period_s`, in bursts of up to `amount`."""

    amount: int
    period_s: float

    @property
    def interval_s(self) -> float:
        return self.period_s / self.amount

    def __str__(self) -> str:
        return f"{self.amount} per {self.period_s:g} s"


def parse_rates(text: str) -> list[Rate]:
    return [Rate(item.amount, float(item.get_expiry())) for item in parse_many(text)]


def share(rate: Rate, workers: int) -> Rate:
    """One process's share of `rate` among `workers`: the same sustained interval times
    N, and a burst of amount // N (at least 1)."""
    if workers <= 1:
        return rate
    burst = max(1, rate.amount // workers)
    return Rate(burst, burst * rate.interval_s * workers)


class RateLimiter:
    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        configured: tuple[tuple[CallerKind, str], ...] = (
            ("partner", settings.partner_rate_limit),
            ("operator", settings.operator_rate_limit),
            ("member", settings.member_rate_limit),
        )
        self._rates: dict[CallerKind, list[Rate]] = {
            kind: [share(rate, settings.workers) for rate in parse_rates(text)]
            for kind, text in configured
        }
        self._clock = clock
        # (kind, caller, rate index) -> theoretical arrival time of the next request
        self._arrival: dict[tuple[CallerKind, str, int], float] = {}

    async def check(self, kind: CallerKind, caller: str) -> None:
        """Count one request for `caller`; raise RateLimited (429) when over any limit.
        A refused request uses none of the caller's allowance."""
        now = self._clock()
        updates = []
        for index, rate in enumerate(self._rates[kind]):
            key = (kind, caller, index)
            arrival = max(self._arrival.get(key, now), now)
            # Over the limit when the bucket would have to hold more than `amount` requests.
            wait = arrival - now - (rate.period_s - rate.interval_s)
            if wait > _TOLERANCE_S:
                retry_after = max(1, math.ceil(wait))
                raise RateLimited(
                    retry_after, f"Rate limit {rate} exceeded; retry in {retry_after} s."
                )
            updates.append((key, arrival + rate.interval_s))
        self._arrival.update(updates)
        if len(self._arrival) > CALLERS_TRACKED_MAX:
            self._forget_idle(now)

    def _forget_idle(self, now: float) -> None:
        """Callers whose next arrival time has passed have a full bucket: no state needed."""
        self._arrival = {key: arrival for key, arrival in self._arrival.items() if arrival > now}
