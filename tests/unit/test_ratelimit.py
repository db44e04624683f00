"""GCRA rate limits: bursts up to the limit, then one request per interval."""

from __future__ import annotations

import pytest

from exchange.config import Settings
from exchange.errors import RateLimited
from exchange.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_burst_up_to_the_limit_then_one_per_interval() -> None:
    clock = Clock()
    limiter = RateLimiter(Settings(partner_rate_limit="5/second"), clock=clock)
    for _ in range(5):
        await limiter.check("partner", "key_a")
    with pytest.raises(RateLimited) as refused:
        await limiter.check("partner", "key_a")
    assert refused.value.retry_after_s == 1
    assert "5 per 1 s" in refused.value.detail
    await limiter.check("partner", "key_b")  # another key has its own allowance
    clock.now += 0.2  # one interval: exactly one more request
    await limiter.check("partner", "key_a")
    with pytest.raises(RateLimited):
        await limiter.check("partner", "key_a")


async def test_every_configured_limit_applies_and_refusals_cost_nothing() -> None:
    clock = Clock()
    limiter = RateLimiter(Settings(operator_rate_limit="10/second;12/minute"), clock=clock)
    for _ in range(10):
        await limiter.check("operator", "opt_1")
    clock.now += 1.0
    await limiter.check("operator", "opt_1")
    await limiter.check("operator", "opt_1")
    for _ in range(3):  # the minute's 12 are spent; refusals do not spend more
        with pytest.raises(RateLimited) as refused:
            await limiter.check("operator", "opt_1")
    assert refused.value.retry_after_s == 4  # 12 per minute: the 13th fits 5 s after the 1st
    clock.now += 5.0
    await limiter.check("operator", "opt_1")


async def test_idle_callers_are_forgotten_with_full_buckets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("exchange.ratelimit.CALLERS_TRACKED_MAX", 3)
    clock = Clock()
    limiter = RateLimiter(Settings(member_rate_limit="2/second"), clock=clock)
    for caller in ("a", "b", "c"):
        await limiter.check("member", caller)
    clock.now += 10
    await limiter.check("member", "d")  # over the cap: idle a, b, c are dropped
    assert len(limiter._arrival) == 1
    await limiter.check("member", "a")
    await limiter.check("member", "a")  # a's bucket was full again


async def test_each_of_n_workers_enforces_a_share_so_the_service_keeps_the_limit() -> None:
    """However requests spread over the processes, together they allow the limit: a burst
    of at most `amount`, then `amount` per period."""
    clock = Clock()
    settings = Settings(partner_rate_limit="10/second", workers=4)
    workers = [RateLimiter(settings, clock=clock) for _ in range(4)]
    allowed = 0
    for index in range(40):
        try:
            await workers[index % 4].check("partner", "key_a")
            allowed += 1
        except RateLimited:
            pass
    assert allowed == 8  # 4 workers x a burst of 10 // 4
    clock.now += 1.0  # one period: 10 more for the service, 2.5 per worker
    allowed = 0
    for index in range(40):
        try:
            await workers[index % 4].check("partner", "key_a")
            allowed += 1
        except RateLimited:
            pass
    assert allowed <= 10
