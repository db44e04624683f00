"""Per-caller rate limits (partner key, operator token, member token), per process.

Moving windows from the `limits` library, in memory: each server process enforces the
configured limit on its own, so N workers allow up to N times the limit in total. That
keeps the check off the database; a shared store can replace MemoryStorage if needed.
"""

from __future__ import annotations

import math
import time
from typing import Literal

from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

from exchange.config import Settings
from exchange.errors import RateLimited

__all__ = ["CallerKind", "RateLimiter"]

CallerKind = Literal["partner", "operator", "member"]


class RateLimiter:
    def __init__(self, settings: Settings) -> None:
        self._limits: dict[CallerKind, list[RateLimitItem]] = {
            "partner": parse_many(settings.partner_rate_limit),
            "operator": parse_many(settings.operator_rate_limit),
            "member": parse_many(settings.member_rate_limit),
        }
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    async def check(self, kind: CallerKind, caller: str) -> None:
        """Count one request for `caller`; raise RateLimited (429) when over any limit."""
        for item in self._limits[kind]:
            if not await self._limiter.hit(item, kind, caller):
                stats = await self._limiter.get_window_stats(item, kind, caller)
                retry_after = max(1, math.ceil(stats.reset_time - time.time()))
                raise RateLimited(
                    retry_after, f"Rate limit {item} exceeded; retry in {retry_after} s."
                )
