"""Run a database transaction again when it lost a race: the one retry loop.

A deadlock, a serialization failure or a unique-key race means the work was rolled back
whole and may simply run again. `retry_conflicts` runs it up to `attempts` times, sleeping
a random time under an exponentially growing bound in between (full jitter: concurrent
losers spread out instead of colliding again), and raises `exhausted` when every attempt
lost. Any other exception passes through at once.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    RetryError,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

__all__ = ["retry_conflicts"]

T = TypeVar("T")
OnRetry = Callable[[int, BaseException], None]


async def retry_conflicts(
    work: Callable[[], Awaitable[T]],
    *,
    conflict: type[Exception],
    attempts: int,
    backoff_s: float,
    exhausted: Exception,
    on_retry: OnRetry | None = None,
) -> T:
    """`await work()`, again on `conflict`; the n-th retry waits up to backoff_s * 2**(n-1).

    The first attempt runs on its own: almost every call commits at once, and entering
    tenacity's machinery cost every posting batch 24-31 µs of CPU (docs/performance.md,
    "Fourteenth round"). Only a call that lost a race goes on to tenacity, for the
    remaining attempts, with the same schedule.
    """
    try:
        return await work()
    except conflict as error:
        if attempts <= 1:
            raise exhausted from None
        first = error

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            error = state.outcome.exception()
            if error is not None:
                on_retry(state.attempt_number + 1, error)

    if on_retry is not None:
        on_retry(1, first)
    # The wait before the second attempt, as tenacity would have slept it.
    await asyncio.sleep(random.uniform(0, backoff_s))
    retrying = AsyncRetrying(
        stop=stop_after_attempt(attempts - 1),
        # tenacity counts from this second attempt: its n-th is our (n+1)-th.
        wait=wait_random_exponential(multiplier=backoff_s * 2),
        retry=retry_if_exception_type(conflict),
        before_sleep=before_sleep,
    )
    try:
        # The iterator form: `work` may be any callable returning an awaitable (a lambda
        # too), where tenacity's call form only awaits coroutine functions.
        async for attempt in retrying:
            with attempt:
                return await work()
    except RetryError:
        raise exhausted from None
    raise exhausted  # not reached: the loop returns, or raises once attempts run out
